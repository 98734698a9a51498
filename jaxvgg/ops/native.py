"""Kernels written by hand in C++ (``csrc/``) and called through JAX's FFI, for the CPU work that
XLA:CPU was measured to do slowly (docs/performance.md).

``pip install -e .`` builds them (setup.py) into ``jaxvgg/ops/_native*.so``. Where that library is
missing (no compiler at install, the project run from a plain checkout), cannot be loaded or
registered (a warning says why), or ``JAXVGG_NATIVE=0`` is set, :func:`available` is False and every
caller keeps its pure-JAX code, which computes the same up to the order of float sums. Each call is
tied to the CPU backend: traced for another, the caller's pure-JAX code runs instead. They have VJPs
where the models need them, no forward-mode rules: ``jax.jvp`` of a model on the ``cpu`` route fails
(nothing here uses it).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvgg.ops.csrc_fingerprint import csrc_fingerprint
from jaxvgg.ops.switch import set_within

LIBRARY = "jaxvgg.ops._native"


def _per_dtype(kernel: str) -> dict[jnp.dtype, str]:
    """dtype -> the handler's name in the library (and the FFI target it is registered as)."""
    return {jnp.dtype(jnp.float32): f"jaxvgg_{kernel}_f32", jnp.dtype(jnp.float64): f"jaxvgg_{kernel}_f64"}


DEPTHWISE_FORWARD = _per_dtype("depthwise_forward")
DEPTHWISE_WEIGHT_GRAD = _per_dtype("depthwise_weight_grad")
IM2COL = {**_per_dtype("im2col"), jnp.dtype(jnp.bfloat16): "jaxvgg_im2col_bf16"}
ADAM = _per_dtype("adam")
WINOGRAD = {kind: _per_dtype(f"winograd_{kind}") for kind in ("input", "input_grad", "output", "output_grad")}
HANDLERS = [
    name
    for table in (DEPTHWISE_FORWARD, DEPTHWISE_WEIGHT_GRAD, IM2COL, ADAM, *WINOGRAD.values())
    for name in table.values()
]
# Built on x86-64 only and run on CPUs with AVX-512 BF16 only: registered where both hold.
MATMUL_BF16 = "jaxvgg_matmul_bf16"
MATMUL_BF16_PANEL = 32  # the kernel's columns per packed panel (kPanel in csrc/gemm_bf16.cc): N's multiple

_OFF = contextvars.ContextVar("jaxvgg_native_off", default=False)


def library_path() -> str | None:
    spec = importlib.util.find_spec(LIBRARY)
    return spec.origin if spec is not None and spec.origin else None


class Library(NamedTuple):
    """What loading the kernels found."""

    fingerprint: str  # of the sources it was built from (jaxvgg/ops/csrc_fingerprint.py)
    bf16_gemm: bool  # whether the bfloat16 GEMM was built and this CPU runs it


@functools.cache
def loaded() -> Library | None:
    """The kernels' library, loaded and registered with JAX once per process; None where it is not."""
    if os.environ.get("JAXVGG_NATIVE", "1") == "0" or (path := library_path()) is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        if (built := _built_from(lib)) != (here := csrc_fingerprint()) and here is not None:
            raise RuntimeError(f"it was built from other sources than csrc/'s (fingerprint {built}, not {here})")
        handlers = {name: getattr(lib, name) for name in HANDLERS}
        runs_here = getattr(lib, "jaxvgg_matmul_bf16_runs_here", None)
        bf16_gemm = runs_here is not None and bool(runs_here())
        if bf16_gemm:
            handlers[MATMUL_BF16] = getattr(lib, MATMUL_BF16)
        for name, handler in handlers.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    except Exception as error:  # whatever failed, the pure-JAX code is there and correct
        warnings.warn(
            f"jaxvgg's CPU kernels ({path}) not used: {error}; running pure JAX "
            "(`pip install -e .` rebuilds them, JAXVGG_NATIVE=0 silences this)",
            stacklevel=2,
        )
        return None
    return Library(built or "unfingerprinted", bf16_gemm)


def available() -> bool:
    """Whether the kernels are built, loaded and registered with JAX."""
    return loaded() is not None


def _built_from(lib: ctypes.CDLL) -> str | None:
    """The csrc/ fingerprint compiled into ``lib``; None for a library older than the fingerprint."""
    try:
        get = lib.jaxvgg_csrc_fingerprint
    except AttributeError:
        return None
    get.restype = ctypes.c_char_p
    return get().decode()


def disabled() -> contextlib.AbstractContextManager[None]:
    """Functions traced inside take their pure-JAX code. For steps compiled for several devices: an FFI
    call carries no rule for splitting its work, so under a batch-sharded ``jit`` XLA would gather the
    whole batch onto every device and each would compute all of it."""
    return set_within(_OFF, True)


def enabled() -> bool:
    """Whether code traced now may call the kernels: built, loaded and not :func:`disabled`."""
    return not _OFF.get() and available()


def depthwise_supported(x: jax.Array, kernel: jax.Array, padding: int) -> bool:
    """The depthwise kernels' case: stride 1 (the caller's), a square filter, "same" padding, float32/64."""
    k = kernel.shape[0]
    return kernel.shape[1] == k and 2 * padding == k - 1 and x.dtype in DEPTHWISE_FORWARD and enabled()


def depthwise_forward(x: jax.Array, kernel: jax.Array, padding: int, fallback: Callable[[], jax.Array]) -> jax.Array:
    """NHWC ``x`` convolved with one (K, K) filter per channel (``kernel`` (K, K, 1, C), HWIO), stride
    1, in one pass; the same as ``fallback()``. Check :func:`depthwise_supported` first."""
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return _on_cpu(DEPTHWISE_FORWARD, out, (x, kernel[:, :, 0]), {"padding": padding}, fallback)


def depthwise_weight_grad(
    x: jax.Array, g: jax.Array, kernel_size: int, padding: int, fallback: Callable[[], jax.Array]
) -> jax.Array:
    """(K, K, C): the weight gradient of a stride-1 depthwise convolution of NHWC ``x`` whose output
    gradient is ``g``, in one pass over both; the same as ``fallback()``. Check
    :func:`depthwise_supported` first."""
    out = jax.ShapeDtypeStruct((kernel_size, kernel_size, x.shape[-1]), x.dtype)
    attrs = {"kernel_size": kernel_size, "padding": padding}
    return _on_cpu(DEPTHWISE_WEIGHT_GRAD, out, (x, g), attrs, fallback)


def im2col_supported(x: jax.Array) -> bool:
    return x.ndim == 4 and x.dtype in IM2COL and enabled()


def im2col(x: jax.Array, kernel_size: int, stride: int, padding: int, fallback: Callable[[], jax.Array]) -> jax.Array:
    """(N, OH, OW, K*K*C): every output position's zero-padded KxK patch of NHWC ``x``, ordered like
    an HWIO kernel reshaped to (K*K*C, O), in one pass; the same as ``fallback()``. Check
    :func:`im2col_supported` first."""
    n, h, w, c = x.shape
    oh, ow = (h + 2 * padding - kernel_size) // stride + 1, (w + 2 * padding - kernel_size) // stride + 1
    out = jax.ShapeDtypeStruct((n, max(oh, 0), max(ow, 0), kernel_size * kernel_size * c), x.dtype)
    attrs = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
    return _on_cpu(IM2COL, out, (x,), attrs, fallback)


def winograd_supported(a: jax.Array) -> bool:
    """The Winograd transforms' case: float32/64."""
    return a.dtype in WINOGRAD["input"] and enabled()


def winograd_transform(
    kind: str, a: jax.Array, out_shape: tuple[int, ...], padding: int | None, fallback: Callable[[], jax.Array]
) -> jax.Array:
    """One of F(2x2, 3x3)'s four transforms (jaxvgg/ops/winograd.py, csrc/winograd.cc), into an array of
    ``out_shape``: ``input`` (NHWC -> (16, tiles, C), zero ``padding``), ``input_grad`` (its transpose),
    ``output`` ((16, tiles, O) -> NHWC) and ``output_grad`` (its transpose); the same as ``fallback()``.
    ``padding`` for the input side only. Check :func:`winograd_supported` first."""
    attrs = {} if padding is None else {"padding": padding}
    return _on_cpu(WINOGRAD[kind], jax.ShapeDtypeStruct(out_shape, a.dtype), (a,), attrs, fallback)


def kernels_in_use() -> str:
    """The fingerprint of the sources of the kernels that code traced now may call; "" where none."""
    return loaded().fingerprint if enabled() else ""


def matmul_bf16_runs_here() -> bool:
    """Whether the bfloat16 GEMM is built and this CPU has AVX-512 BF16 (and the kernels are enabled)."""
    return enabled() and loaded().bf16_gemm


def matmul_bf16_supported(a: jax.Array, b: jax.Array) -> bool:
    """The bfloat16 GEMM's case: 2-D bfloat16 operands, K even and positive, N a multiple of 32, a CPU with
    AVX-512 BF16."""
    return (
        a.ndim == b.ndim == 2
        and a.dtype == b.dtype == jnp.bfloat16
        and a.shape[1] % 2 == 0
        and a.shape[1] > 0
        and b.shape[1] % MATMUL_BF16_PANEL == 0
        and matmul_bf16_runs_here()
    )


def matmul_bf16(a: jax.Array, b: jax.Array, fallback: Callable[[], jax.Array]) -> jax.Array:
    """``a @ b`` in bfloat16, summed in float32 by the CPU's bfloat16 dot-product instructions and rounded
    once; the same as ``fallback()`` (XLA's dot of the operands converted to float32) up to the order of
    the float sums. Check :func:`matmul_bf16_supported` first."""
    out = jax.ShapeDtypeStruct((a.shape[0], b.shape[1]), a.dtype)
    return _on_cpu({a.dtype: MATMUL_BF16}, out, (a, b), {}, fallback)


def adam_supported(weight: jax.Array, *others: jax.Array) -> bool:
    """The kernel's case: float32/64, the gradient and moments in the weight's dtype."""
    return weight.dtype in ADAM and all(o.dtype == weight.dtype for o in others) and enabled()


def adam(
    weight: jax.Array,
    grad: jax.Array,
    mu: jax.Array,
    nu: jax.Array,
    hyper: jax.Array,
    decoupled: bool,
    fallback: Callable[[], tuple[jax.Array, jax.Array, jax.Array]],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(weight, mu, nu) after one Adam (``decoupled``: AdamW) step, in one pass that overwrites the
    three in place; ``hyper`` is [lr, b1, 1 - b1, b2, 1 - b2, eps, weight decay, 1 - b1^t, 1 - b2^t]
    in the weight's dtype. The same as ``fallback()``, which also runs wherever
    :func:`adam_supported` is not."""
    if not adam_supported(weight, grad, mu, nu):
        return fallback()
    like = jax.ShapeDtypeStruct(weight.shape, weight.dtype)
    args = (weight, grad, mu, nu, hyper)
    out = _on_cpu(ADAM, (like, like, like), args, {"decoupled": decoupled}, fallback, aliases={0: 0, 2: 1, 3: 2})
    return tuple(out)


def _on_cpu(
    targets: dict[jnp.dtype, str],
    out: Any,
    args: tuple[jax.Array, ...],
    attrs: dict[str, int],
    fallback: Callable[[], Any],
    aliases: dict[int, int] | None = None,
) -> Any:
    """The kernel for the first argument's dtype on the CPU (integer attributes), ``fallback()`` on any
    other backend and wherever the kernels are not :func:`enabled`."""
    if not enabled():
        return fallback()
    call = jax.ffi.ffi_call(targets[args[0].dtype], out, vmap_method="sequential", input_output_aliases=aliases or {})
    ints = {name: np.int64(value) for name, value in attrs.items()}
    return lax.platform_dependent(cpu=lambda: call(*args, **ints), default=fallback)

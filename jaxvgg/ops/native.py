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

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvgg.ops.switch import set_within

LIBRARY = "jaxvgg.ops._native"
# dtype -> the handler's name in the library (and the FFI target it is registered as)
DEPTHWISE_FORWARD = {
    jnp.dtype(jnp.float32): "jaxvgg_depthwise_forward_f32",
    jnp.dtype(jnp.float64): "jaxvgg_depthwise_forward_f64",
}
DEPTHWISE_WEIGHT_GRAD = {
    jnp.dtype(jnp.float32): "jaxvgg_depthwise_weight_grad_f32",
    jnp.dtype(jnp.float64): "jaxvgg_depthwise_weight_grad_f64",
}
IM2COL = {jnp.dtype(jnp.float32): "jaxvgg_im2col_f32", jnp.dtype(jnp.float64): "jaxvgg_im2col_f64"}
ADAM = {jnp.dtype(jnp.float32): "jaxvgg_adam_f32", jnp.dtype(jnp.float64): "jaxvgg_adam_f64"}
HANDLERS = [*DEPTHWISE_FORWARD.values(), *DEPTHWISE_WEIGHT_GRAD.values(), *IM2COL.values(), *ADAM.values()]


_OFF = contextvars.ContextVar("jaxvgg_native_off", default=False)


def library_path() -> str | None:
    spec = importlib.util.find_spec(LIBRARY)
    return spec.origin if spec is not None and spec.origin else None


@functools.cache
def available() -> bool:
    """Whether the kernels are built, loaded and registered with JAX (once per process)."""
    if os.environ.get("JAXVGG_NATIVE", "1") == "0" or (path := library_path()) is None:
        return False
    try:
        lib = ctypes.CDLL(path)
        handlers = {name: getattr(lib, name) for name in HANDLERS}
        for name, handler in handlers.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    except Exception as error:  # whatever failed, the pure-JAX code is there and correct
        why = "built from older sources? " if isinstance(error, AttributeError) else ""
        warnings.warn(
            f"jaxvgg's CPU kernels ({path}) not used, {why}{error}; running pure JAX "
            "(`pip install -e .` rebuilds them, JAXVGG_NATIVE=0 silences this)",
            stacklevel=2,
        )
        return False
    return True


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
    1, in one pass; the same as ``fallback()``, which runs on any backend but the CPU. Check
    :func:`depthwise_supported` first."""
    if not enabled():
        return fallback()
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    call = jax.ffi.ffi_call(DEPTHWISE_FORWARD[x.dtype], out, vmap_method="sequential")
    return lax.platform_dependent(cpu=lambda: call(x, kernel[:, :, 0], padding=np.int64(padding)), default=fallback)


def depthwise_weight_grad(
    x: jax.Array, g: jax.Array, kernel_size: int, padding: int, fallback: Callable[[], jax.Array]
) -> jax.Array:
    """(K, K, C): the weight gradient of a stride-1 depthwise convolution of NHWC ``x`` whose output
    gradient is ``g``, in one pass over both. Check :func:`depthwise_supported` first;
    ``fallback()`` gives the same by other means and is what runs on any backend but the CPU."""
    if not enabled():
        return fallback()
    call = jax.ffi.ffi_call(
        DEPTHWISE_WEIGHT_GRAD[x.dtype],
        jax.ShapeDtypeStruct((kernel_size, kernel_size, x.shape[-1]), x.dtype),
        vmap_method="sequential",
    )
    return lax.platform_dependent(
        cpu=lambda: call(x, g, kernel_size=np.int64(kernel_size), padding=np.int64(padding)), default=fallback
    )


def im2col_supported(x: jax.Array) -> bool:
    return x.ndim == 4 and x.dtype in IM2COL and enabled()


def im2col(x: jax.Array, kernel_size: int, stride: int, padding: int, fallback: Callable[[], jax.Array]) -> jax.Array:
    """(N, OH, OW, K*K*C): every output position's zero-padded KxK patch of NHWC ``x``, ordered like
    an HWIO kernel reshaped to (K*K*C, O), in one pass; the same as ``fallback()``, which runs on any
    backend but the CPU. Check :func:`im2col_supported` first."""
    if not enabled():
        return fallback()
    n, h, w, c = x.shape
    oh, ow = (h + 2 * padding - kernel_size) // stride + 1, (w + 2 * padding - kernel_size) // stride + 1
    out = jax.ShapeDtypeStruct((n, max(oh, 0), max(ow, 0), kernel_size * kernel_size * c), x.dtype)
    call = jax.ffi.ffi_call(IM2COL[x.dtype], out, vmap_method="sequential")
    attrs = {"kernel_size": np.int64(kernel_size), "stride": np.int64(stride), "padding": np.int64(padding)}
    return lax.platform_dependent(cpu=lambda: call(x, **attrs), default=fallback)


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
    in the weight's dtype. The same as ``fallback()``, which runs instead on any backend but the CPU
    and wherever :func:`adam_supported` is not."""
    if not adam_supported(weight, grad, mu, nu):
        return fallback()
    like = jax.ShapeDtypeStruct(weight.shape, weight.dtype)
    call = jax.ffi.ffi_call(ADAM[weight.dtype], (like, like, like), input_output_aliases={0: 0, 2: 1, 3: 2})
    return lax.platform_dependent(
        cpu=lambda: tuple(call(weight, grad, mu, nu, hyper, decoupled=np.int64(decoupled))), default=fallback
    )

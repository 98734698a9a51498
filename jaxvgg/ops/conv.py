"""The one 2-D convolution every model calls.

Keeping it in one place lets the lowering be chosen per shape (see the performance issue)
without touching any model: the models only ever call :func:`conv2d`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax import lax

# "xla": lax.conv_general_dilated (default). "im2col": patches + one GEMM; 2-6x faster on a 2-core
# CPU, but in deep fp32 stacks its gradients drift ~1% from the float64 result (XLA's: 2e-6), so
# it stays opt-in until the performance work makes the choice per shape, with parity kept.
LOWERINGS = ("xla", "im2col")


def lowering() -> str:
    """The lowering chosen by ``JAXVGG_CONV`` (read at trace time)."""
    value = os.environ.get("JAXVGG_CONV", "xla")
    if value not in LOWERINGS:
        raise ValueError(f"JAXVGG_CONV={value!r}: choose one of {', '.join(LOWERINGS)}")
    return value


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> jax.Array:
    """NHWC x HWIO -> NHWC, torch ``Conv2d`` semantics (symmetric zero padding, groups)."""
    if lowering() == "im2col" and groups == 1:
        return _im2col_conv(x, kernel.astype(x.dtype), stride, padding)
    return lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _im2col_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    if kh == kw == 1 and stride == 1 and padding == 0:
        return jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, hp, wp, _ = xp.shape
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    cols = [
        xp[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1)
    return (patches.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)).reshape(n, oh, ow, cout)


def adaptive_avg_pool2d(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """torch ``AdaptiveAvgPool2d`` on NHWC input, exact for any input size.

    Output cell i averages input rows floor(i*H/oh) .. ceil((i+1)*H/oh) - 1, so a 1x1 map
    is replicated to 7x7 and a 14x14 map averaged in 2x2 cells, as torch does.
    """
    _, h, w, _ = x.shape
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    if (oh, ow) == (1, 1):
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    rows = _pool_matrix(h, oh, x.dtype)
    cols = _pool_matrix(w, ow, x.dtype)
    return jnp.einsum("nhwc,ph,qw->npqc", x, rows, cols)


def _pool_matrix(size: int, out: int, dtype) -> jax.Array:
    i = jnp.arange(out)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)  # ceil((i + 1) * size / out)
    j = jnp.arange(size)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)

"""Flax Linen layers that mirror ``torch.nn`` ones: same names, same arguments, same maths.

Every layer takes ``(x, train)`` so a model can run a plain list of them, the way a torch
``nn.Sequential`` runs its children. Parameters use Flax's names (``kernel``, ``scale``,
``mean``/``var`` in ``batch_stats``); :mod:`jaxvgg.convert` maps them to torch's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvgg.ops.conv import adaptive_avg_pool2d, conv2d, fold_pool_into_kernel, max_pool2d

Initializer = nn.initializers.Initializer


def at_least_float32(x: jax.Array) -> jax.Array:
    """bfloat16/float16 -> float32 (losses, statistics and logits); float32 and float64 unchanged."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def torch_default_kernel_init() -> Initializer:
    """``kaiming_uniform_(a=sqrt(5))``, torch's default for Conv2d and Linear weights."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Initializer:
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def kaiming_fan_out() -> Initializer:
    """torchvision's VGG/ResNet conv init: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``."""
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def kaiming_fan_in() -> Initializer:
    """``kaiming_normal_(mode="fan_in", nonlinearity="relu")``: keeps the forward signal's variance
    (fan-out keeps the gradient's), for VGGs without BatchNorm (docs/recipes.md)."""
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def depthwise_init() -> Initializer:
    """A depthwise 3x3 under ``init="torchvision"``: ``normal(0, 1/3)``, variance 1 / fan-in (its 9 taps).

    Kaiming fan-out counts a depthwise filter's fan-out as 9 x channels, so every tap was about
    sqrt(channels) times too small: 13 such layers without BatchNorm (``vgg16_dsconv``) passed no
    signal on, and the loss sat at ln C at 1e-4 and at 1e-3 (docs/recipes.md). Gain 1, not 2: the
    pointwise conv after it, with no ReLU between, carries the ReLU's factor 2."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class Conv2d(nn.Module):
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    init: str = "torch"  # "torch" defaults, "torchvision" (kaiming fan-out, zero bias) or "fan_in" (kaiming fan-in)
    dtype: jnp.dtype | None = None  # compute dtype; parameters stay float32
    route: str = "cpu"  # how the convolution is computed (jaxvgg.ops.conv.ROUTES)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_channels = x.shape[-1]
        k = self.kernel_size
        fan_in = in_channels // self.groups * k * k
        depthwise = self.groups > 1 and self.groups == in_channels
        if self.init in ("torchvision", "fan_in"):
            kernel_init = depthwise_init() if depthwise else KAIMING[self.init]()
        else:
            kernel_init = torch_default_kernel_init()
        kernel = self.param("kernel", kernel_init, (k, k, in_channels // self.groups, self.out_channels))
        dtype = self.dtype or x.dtype
        y = conv2d(
            x.astype(dtype),
            kernel.astype(dtype),
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            # no one reads what initialising computes: no forward is worth measuring for it
            route="im2col" if self.route == "cpu" and self.is_initializing() else self.route,
        )
        if self.bias:
            bias_init = torch_default_bias_init(fan_in) if self.init == "torch" else nn.initializers.zeros
            y = y + self.param("bias", bias_init, (self.out_channels,)).astype(dtype)
        return y


KAIMING = {"torchvision": kaiming_fan_out, "fan_in": kaiming_fan_in}


class Linear(nn.Module):
    out_features: int
    init: str = "torch"  # "torch" defaults, or "torchvision" / "fan_in" (normal(0, 0.01), zero bias)
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, pool: tuple[int, int] | None = None) -> jax.Array:
        """``pool``: ``x`` is the NHWC map that torch's ``AdaptiveAvgPool2d(pool)`` and flatten would
        turn into this layer's input; the pool is folded into the kernel instead (same parameters)."""
        in_features = x.shape[-1] * pool[0] * pool[1] if pool else x.shape[-1]
        if self.init != "torch":
            kernel_init, bias_init = nn.initializers.normal(0.01), nn.initializers.zeros
        else:
            kernel_init, bias_init = torch_default_kernel_init(), torch_default_bias_init(in_features)
        kernel = self.param("kernel", kernel_init, (in_features, self.out_features))
        bias = self.param("bias", bias_init, (self.out_features,))
        dtype = self.dtype or x.dtype
        if pool:
            kernel = fold_pool_into_kernel(kernel, x.shape[1:3], pool)
            x = x.reshape(x.shape[0], -1)
        return x.astype(dtype) @ kernel.astype(dtype) + bias.astype(dtype)


class BatchNorm2d(nn.Module):
    """torch ``BatchNorm2d``: biased variance to normalise, *unbiased* variance into running_var.

    ``momentum`` is torch's (weight of the new batch), not Flax's decay. Statistics are always
    computed in float32; under ``jax.jit`` with a sharded batch the means are global.
    """

    eps: float = 1e-5
    momentum: float = 0.1
    zero_scale: bool = False  # the scale starts at 0 (a residual block's last BatchNorm, zero_init_residual)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.zeros if self.zero_scale else nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        x32 = at_least_float32(x)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        y = (x32 - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias
        return y.astype(x.dtype)


class ReLU(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.relu(x)


class MaxPool2d(nn.Module):
    kernel_size: int = 2
    stride: int = 2
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        return max_pool2d(x, k, s, p)


class AdaptiveAvgPool2d(nn.Module):
    output_size: tuple[int, int]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return adaptive_avg_pool2d(x, tuple(self.output_size))


class Dropout(nn.Module):
    p: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.Dropout(self.p, deterministic=not train)(x)


class DSConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1: the tutorial's depthwise-separable convolution."""

    out_channels: int
    init: str = "torch"
    dtype: jnp.dtype | None = None
    route: str = "cpu"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        x = Conv2d(c, 3, padding=1, groups=c, init=self.init, dtype=self.dtype, route=self.route, name="depthwise")(x)
        return Conv2d(self.out_channels, 1, init=self.init, dtype=self.dtype, route=self.route, name="pointwise")(x)


def flatten(x: jax.Array) -> jax.Array:
    """Flatten NHWC to (N, C*H*W), in torch's order, so a torch Linear after it needs only a transpose.

    The transpose is also a real copy that XLA:CPU cannot fuse through: with a plain reshape,
    YNNPACK fused the last conv, its max-pool and the three FC layers of VGG-16 at 224 px into
    one kernel that took 1.3 s instead of ~0.14 s (the eval step went 1.3 -> 2.4 img/s).
    """
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def run(layers: Sequence[nn.Module], x: jax.Array, train: bool) -> jax.Array:
    """Apply layers in order, like ``nn.Sequential``."""
    for layer in layers:
        x = layer(x, train)
    return x

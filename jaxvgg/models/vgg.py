"""VGG family in Flax Linen. Reads line by line like ``torchref/models/vgg.py``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvgg.core.specs import CFGS, DROPOUT_RATE, HEADS, ModelSpec, classifier_widths
from jaxvgg.models.layers import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    DSConv,
    Linear,
    MaxPool2d,
    ReLU,
    at_least_float32,
    flatten,
    run,
)


def make_layers(cfg: str, batch_norm: bool, separable: bool, init: str, dtype=None, route="cpu") -> list[nn.Module]:
    layers: list[nn.Module] = []
    for v in CFGS[cfg]:
        if v == "M":
            layers += [MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv_options = {"init": init, "dtype": dtype, "route": route}
            conv = DSConv(v, **conv_options) if separable else Conv2d(v, 3, padding=1, **conv_options)
            layers += [conv, BatchNorm2d(), ReLU()] if batch_norm else [conv, ReLU()]
    return layers


def make_classifier(spec: ModelSpec, num_classes: int, image_size: int, dtype=None) -> list[nn.Module]:
    head = HEADS[spec.head]
    widths = classifier_widths(spec, num_classes, image_size)
    layers: list[nn.Module] = []
    for _, out in widths[:-1]:
        layers += [Linear(out, init=spec.init, dtype=dtype), ReLU()]
        layers += [Dropout(DROPOUT_RATE)] if head.dropout else []
    layers += [Linear(widths[-1][1], init=spec.init, dtype=dtype)]
    return layers


class VGG(nn.Module):
    spec: ModelSpec
    num_classes: int = 3
    image_size: int = 224  # only shapes the first FC layer of heads without an adaptive pool
    dtype: jnp.dtype | None = None  # compute dtype (None: the input's); parameters stay float32
    conv_route: str = "cpu"  # how convolutions are computed (jaxvgg.ops.conv.ROUTES); no torch counterpart

    def setup(self) -> None:
        spec = self.spec
        self.features = make_layers(spec.cfg, spec.batch_norm, spec.separable, spec.init, self.dtype, self.conv_route)
        pool = HEADS[spec.head].pool
        self.avgpool = AdaptiveAvgPool2d(pool) if pool is not None else None
        self.classifier = make_classifier(spec, self.num_classes, self.image_size, self.dtype)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self._head(run(self.features, x, train), train)

    # The model cut in two at one layer (Grad-CAM wants the gradient at a layer's output):
    # ``after(until(x, layer), layer)`` is ``__call__(x)``, and the layer is named as torch names it.
    def until(self, x: jax.Array, layer: str, train: bool = False) -> jax.Array:
        """The output of feature layer ``layer`` (``"features.N"``)."""
        return run(self.features[: self._cut(layer)], x, train)

    def after(self, x: jax.Array, layer: str, train: bool = False) -> jax.Array:
        """The logits, from the output of feature layer ``layer``."""
        return self._head(run(self.features[self._cut(layer) :], x, train), train)

    def _head(self, x: jax.Array, train: bool) -> jax.Array:
        if train and self._pool_copies_one_cell(x):
            # Below 64 px the map is 1x1 and the pool copies it 49 times, which the first FC layer
            # then multiplies: folded into that layer's kernel, its GEMMs are 49x smaller and its
            # weight gradient a broadcast. Training only, and 1x1 maps only: folding the kernel
            # cost more than it saved in inference and on 3x3 maps (docs/performance.md).
            x = self.classifier[0](x, train, pool=tuple(self.avgpool.output_size))
            return at_least_float32(run(self.classifier[1:], x, train))
        if self.avgpool is not None:
            x = self.avgpool(x)
        x = flatten(x)
        return at_least_float32(run(self.classifier, x, train))

    def _pool_copies_one_cell(self, x: jax.Array) -> bool:
        """Whether the adaptive pool before the first linear layer copies a 1x1 map to a larger one."""
        if self.avgpool is None or not isinstance(self.classifier[0], Linear) or self.is_initializing():
            return False
        return x.shape[1:3] == (1, 1) and tuple(self.avgpool.output_size) != (1, 1)

    def _cut(self, layer: str) -> int:
        """How many feature layers run up to and including ``layer``."""
        kind, _, index = layer.partition(".")
        if kind != "features" or not index.isdigit() or int(index) >= len(self.features):
            raise ValueError(f"{layer!r}: not a feature layer (features.0 … features.{len(self.features) - 1})")
        return int(index) + 1

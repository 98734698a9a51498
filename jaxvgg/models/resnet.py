"""ResNet-50 in Flax Linen, torchvision's v1.5 layout (stride on the 3x3 conv).

Layer names and call order follow ``torchvision.models.resnet`` so that weights convert by the
same rule as VGG's and summaries agree row by row. Padding is explicit (3 for the 7x7 stem,
1 for the 3x3 max-pool, padded with -inf), which is what torch does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvgg.core.specs import RESNET_BLOCKS
from jaxvgg.models.layers import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Linear,
    MaxPool2d,
    ReLU,
    at_least_float32,
    flatten,
    run,
)

STAGES = ("layer1", "layer2", "layer3", "layer4")  # torch's names of the bottleneck stages


class Bottleneck(nn.Module):
    width: int
    stride: int = 1
    project: bool = False  # 1x1 conv + BatchNorm on the shortcut (torchvision's `downsample`)
    expansion: int = 4
    # torchvision sets it on the ResNet and zeroes each block's bn3 after building; here the block
    # starts its own bn3 at 0
    zero_init_residual: bool = False
    dtype: jnp.dtype | None = None
    conv_route: str = "cpu"

    def setup(self) -> None:
        w, conv = self.width, {"bias": False, "init": "torchvision", "dtype": self.dtype, "route": self.conv_route}
        self.conv1 = Conv2d(w, 1, **conv)
        self.bn1 = BatchNorm2d()
        self.conv2 = Conv2d(w, 3, stride=self.stride, padding=1, **conv)
        self.bn2 = BatchNorm2d()
        self.conv3 = Conv2d(w * self.expansion, 1, **conv)
        self.bn3 = BatchNorm2d(zero_scale=self.zero_init_residual)
        self.relu = ReLU()
        self.downsample = (
            [Conv2d(w * self.expansion, 1, stride=self.stride, **conv), BatchNorm2d()] if self.project else []
        )

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = self.relu(self.bn1(self.conv1(x), train))
        out = self.relu(self.bn2(self.conv2(out), train))
        out = self.bn3(self.conv3(out), train)
        identity = run(self.downsample, x, train) if self.downsample else x
        return self.relu(out + identity)


class ResNet(nn.Module):
    layers: tuple[int, int, int, int] = RESNET_BLOCKS
    num_classes: int = 1000
    zero_init_residual: bool = False  # torchvision's: each block's last BatchNorm scale starts at 0
    dtype: jnp.dtype | None = None
    conv_route: str = "cpu"  # how convolutions are computed (jaxvgg.ops.conv.ROUTES); no torch counterpart

    def setup(self) -> None:
        d = self.dtype
        conv = {"bias": False, "init": "torchvision", "dtype": d, "route": self.conv_route}
        self.conv1 = Conv2d(64, 7, stride=2, padding=3, **conv)
        self.bn1 = BatchNorm2d()
        self.relu = ReLU()
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self.make_layer(64, self.layers[0], stride=1)
        self.layer2 = self.make_layer(128, self.layers[1], stride=2)
        self.layer3 = self.make_layer(256, self.layers[2], stride=2)
        self.layer4 = self.make_layer(512, self.layers[3], stride=2)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(self.num_classes, init="torch", dtype=d)

    def make_layer(self, width: int, blocks: int, stride: int) -> list[Bottleneck]:
        # Every stage's first block changes the width (x4) or the stride, so it always downsamples.
        options = {"zero_init_residual": self.zero_init_residual, "dtype": self.dtype, "conv_route": self.conv_route}
        return [Bottleneck(width, stride, project=True, **options)] + [
            Bottleneck(width, **options) for _ in range(1, blocks)
        ]

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.after(self.until(x, STAGES[-1], train), STAGES[-1], train)

    # The model cut in two after one stage, as in VGG: ``after(until(x, stage), stage)`` is ``__call__(x)``.
    def until(self, x: jax.Array, layer: str, train: bool = False) -> jax.Array:
        """The output of stage ``layer`` (``"layer1"`` … ``"layer4"``, torch's names)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x), train)))
        for stage in self._stages()[: self._cut(layer)]:
            x = run(stage, x, train)
        return x

    def after(self, x: jax.Array, layer: str, train: bool = False) -> jax.Array:
        """The logits, from the output of stage ``layer``."""
        for stage in self._stages()[self._cut(layer) :]:
            x = run(stage, x, train)
        x = flatten(self.avgpool(x))
        return at_least_float32(self.fc(x))

    def _stages(self) -> tuple[list[Bottleneck], ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def _cut(self, layer: str) -> int:
        if layer not in STAGES:
            raise ValueError(f"{layer!r}: not a stage of ResNet ({', '.join(STAGES)})")
        return STAGES.index(layer) + 1

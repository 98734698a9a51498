"""VGG family in PyTorch. Reads line by line like ``jaxvgg/models/vgg.py``."""

from __future__ import annotations

import torch
from torch import nn

from jaxvgg.core.specs import CFGS, DROPOUT_RATE, HEADS, ModelSpec, classifier_widths


class DSConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1: the tutorial's depthwise-separable convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def make_layers(cfg: str, batch_norm: bool, separable: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in CFGS[cfg]:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv = DSConv(in_channels, v) if separable else nn.Conv2d(in_channels, v, 3, padding=1)
            layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def make_classifier(spec: ModelSpec, num_classes: int, image_size: int) -> nn.Sequential:
    head = HEADS[spec.head]
    widths = classifier_widths(spec, num_classes, image_size)
    layers: list[nn.Module] = []
    for n_in, out in widths[:-1]:
        layers += [nn.Linear(n_in, out), nn.ReLU(inplace=True)]
        layers += [nn.Dropout(DROPOUT_RATE)] if head.dropout else []
    layers += [nn.Linear(*widths[-1])]
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, spec: ModelSpec, num_classes: int = 3, image_size: int = 224) -> None:
        super().__init__()
        self.features = make_layers(spec.cfg, spec.batch_norm, spec.separable)
        pool = HEADS[spec.head].pool
        self.avgpool = nn.AdaptiveAvgPool2d(pool) if pool is not None else nn.Identity()
        self.classifier = make_classifier(spec, num_classes, image_size)
        if spec.init != "torch":
            init_torchvision(self, conv_mode="fan_in" if spec.init == "fan_in" else "fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def init_torchvision(model: nn.Module, conv_mode: str = "fan_out") -> None:
    """torchvision's VGG initialisation (also what its ResNet uses for convolutions), depthwise convs apart;
    ``conv_mode="fan_in"``: Kaiming counted on the fan-in (``init="fan_in"``, VGGs without BatchNorm)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if m.groups > 1 and m.groups == m.in_channels:  # depthwise: jaxvgg.models.layers.depthwise_init
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            else:
                nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)

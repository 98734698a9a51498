"""The PyTorch model zoo, built from the same table as :mod:`jaxvgg.models`."""

from __future__ import annotations

from typing import Any

import torchvision
from torch import nn

from jaxvgg.core.specs import MODELS, get_spec
from torchref.models.vgg import VGG


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, num_classes: int = 3, **options: Any) -> nn.Module:
    """A torch module taking NCHW float32 images; ``image_size`` sizes heads without an adaptive pool."""
    spec = get_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    unknown = set(options) - {"image_size"}
    if unknown:
        raise ValueError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    if spec.family == "vgg":
        return VGG(spec, num_classes=num_classes, **options)
    if spec.family == "resnet":
        return torchvision.models.resnet50(
            weights=None, num_classes=num_classes, zero_init_residual=spec.zero_init_residual
        )
    raise ValueError(f"model family {spec.family!r} is not available")

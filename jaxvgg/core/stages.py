"""A VGG of the model table read as stages: the convolutions between two max-pools, by torch's module names.

The tutorial names its layers by stage (``block3.4`` is the third convolution of the third
stage) and the architecture diagram draws one box per stage, so both read the stages here. They
are cut out of :func:`jaxvgg.core.freeze.module_names`, the list both frameworks' layer names
already come from, so no second count of layer indices exists.
"""

from __future__ import annotations

import dataclasses

from jaxvgg.core.freeze import module_names
from jaxvgg.core.specs import CFGS, get_spec


@dataclasses.dataclass(frozen=True)
class Stage:
    widths: tuple[int, ...]  # output channels of each convolution
    modules: tuple[str, ...]  # torch names of the stage's modules holding weights, in order
    pool: str  # torch name of the max-pool that ends the stage


def vgg_stages(name: str) -> list[Stage]:
    """The conv stages of VGG-family model ``name`` (the tutorial's ``block1`` … ``blockN``)."""
    spec = get_spec(name)
    if spec.family != "vgg":
        raise ValueError(f"{name} is not a VGG: it has no VGG stages")
    features = [m for m in module_names(name) if m.startswith("features.")]
    # A convolution holds one module with weights, or two (depthwise, pointwise); BatchNorm adds one.
    per_conv = (2 if spec.separable else 1) + (1 if spec.batch_norm else 0)
    stages, widths, start = [], [], 0
    for v in CFGS[spec.cfg]:
        if v != "M":
            widths.append(int(v))
            continue
        end = start + per_conv * len(widths)
        modules = tuple(features[start:end])
        # The last module with weights is followed by its ReLU, then by the pool.
        pool = f"features.{int(modules[-1].split('.')[1]) + 2}"
        stages.append(Stage(tuple(widths), modules, pool))
        widths, start = [], end
    return stages


def head_modules(name: str) -> list[str]:
    """torch names of the Linear layers after the conv stages (``classifier.N``; ResNet's ``fc``)."""
    return [m for m in module_names(name) if m.startswith("classifier.") or m == "fc"]

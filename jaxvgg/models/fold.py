"""BatchNorm folded into the convolution before it, for inference.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``BN(conv(x) + b)`` is one
convolution with its output channels rescaled: kernel * s and (b - mean) * s + beta, where
s = gamma / sqrt(var + eps). The folded VGG is the same VGG without BatchNorm (torchvision's
BN VGGs keep their convolutions' biases), so it is built by the same ``make_layers``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp

from jaxvgg.models.layers import BatchNorm2d, Conv2d, DSConv
from jaxvgg.models.vgg import VGG, make_layers

Variables = dict[str, Any]


def can_fold(model: Any) -> bool:
    """Whether ``model`` has BatchNorm layers that :func:`fold_batchnorm` can fold (the BN VGGs)."""
    return isinstance(model, VGG) and model.spec.batch_norm


def fold_batchnorm(model: VGG, variables: Variables) -> tuple[VGG, Variables]:
    """(the model without BatchNorm, its variables) computing what ``model`` computes in eval mode."""
    if not can_fold(model):
        raise ValueError(f"{type(model).__name__}: no BatchNorm to fold")
    spec = model.spec
    folded = model.clone(spec=dataclasses.replace(spec, batch_norm=False))
    params, stats = variables["params"], variables["batch_stats"]
    with_bn = make_layers(spec.cfg, True, spec.separable, spec.init)
    without = iter(range(len(make_layers(spec.cfg, False, spec.separable, spec.init))))
    new: dict[str, Any] = {}
    for i, layer in enumerate(with_bn):
        if isinstance(layer, BatchNorm2d):
            continue
        j = next(without)
        if isinstance(layer, (Conv2d, DSConv)):
            conv, bn = params[f"features_{i}"], f"features_{i + 1}"
            fold = functools.partial(_fold, bn=params[bn], stats=stats[bn], eps=with_bn[i + 1].eps)
            if isinstance(layer, DSConv):  # its BatchNorm follows its pointwise convolution
                new[f"features_{j}"] = {**conv, "pointwise": fold(conv["pointwise"])}
            else:
                new[f"features_{j}"] = fold(conv)
    new.update({k: v for k, v in params.items() if not k.startswith("features_")})
    return folded, {"params": new}


def _fold(conv: Variables, bn: Variables, stats: Variables, eps: float) -> Variables:
    scale = bn["scale"] * jnp.reciprocal(jnp.sqrt(stats["var"] + eps))
    return {"kernel": conv["kernel"] * scale, "bias": (conv["bias"] - stats["mean"]) * scale + bn["bias"]}

"""The JAX half of the torchsummary-style table: rows collected from a Flax model (:mod:`jaxvgg.core.summary`)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvgg.core.summary import Row, Summary, layer_macs
from jaxvgg.models import layers as L
from jaxvgg.ops import conv_choice

_LEAVES = (L.Conv2d, L.Linear, L.BatchNorm2d, L.ReLU, L.MaxPool2d, L.AdaptiveAvgPool2d, L.Dropout)


def flax_summary(
    model: nn.Module,
    variables: dict[str, Any],
    image_size: int,
    is_frozen: Any = None,
) -> Summary:
    """Rows for every leaf layer, from one abstract forward pass (nothing is computed).

    ``is_frozen(path) -> bool`` marks parameters (torch-style module path) as not trainable.
    """
    from jaxvgg.convert import flax_path_to_torch

    rows: list[Row] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, _LEAVES):
            return out
        params = module.variables.get("params", {})
        sizes = {k: math.prod(v.shape) for k, v in params.items()}
        path = flax_path_to_torch(tuple(module.path))
        n = sum(sizes.values())
        frozen = bool(is_frozen and is_frozen(path))
        shape = out.shape
        torch_shape = (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape)
        rows.append(
            Row(
                type(module).__name__,
                path,
                torch_shape,
                0 if frozen else n,
                n if frozen else 0,
                layer_macs(type(module).__name__, sizes.get("kernel", 0), torch_shape),
            )
        )
        return out

    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)

    def forward(v, x):
        with nn.intercept_methods(record):
            return model.apply(v, x)

    with conv_choice.rule_only():  # an abstract pass: no forward is worth measuring for it
        jax.eval_shape(forward, variables, x)
    return Summary(rows, (3, image_size, image_size))


def model_macs(name: str, image_size: int, num_classes: int = 3) -> int:
    """Forward multiply-adds per image of a zoo model (from an abstract pass; nothing is computed)."""
    from jaxvgg.core.specs import size_options
    from jaxvgg.models import create_model, variable_shapes

    options = size_options(name, image_size)
    model = create_model(name, num_classes, **options)
    return flax_summary(model, variable_shapes(model, image_size), image_size).macs

"""The Flax model zoo: ``create_model`` / ``init_variables`` over the shared table in :mod:`.specs`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvgg.core.specs import MODELS, get_spec
from jaxvgg.models.resnet import ResNet
from jaxvgg.models.vgg import VGG
from jaxvgg.ops.conv import resolve_route

Variables = dict[str, Any]

# The initialiser runs once: on the CPU, LLVM's -O1 instead of XLA's default compiles VGG-16's in
# under half the time and runs it as fast (docs/performance.md).
INIT_COMPILER_OPTIONS: dict[str, dict[str, Any]] = {"cpu": {"xla_backend_optimization_level": 1}}


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(name: str, num_classes: int = 3, **options: Any) -> nn.Module:
    """A Flax module whose ``apply(variables, x, train=False)`` maps NHWC float32 images to logits.

    Options: ``image_size`` (models without an adaptive pool size their first FC layer by it;
    default 224), ``dtype`` (compute dtype, e.g. ``jnp.bfloat16``; parameters stay float32) and
    ``conv_route`` (how convolutions are computed, :data:`jaxvgg.ops.conv.ROUTES`; default: the
    route for the backend JAX runs on, :func:`jaxvgg.ops.conv.route_for_platform`).
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    unknown = set(options) - {"image_size", "dtype", "conv_route"}
    if unknown:
        raise ValueError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    options["conv_route"] = resolve_route(options.get("conv_route"))
    if spec.family == "vgg":
        return VGG(spec, num_classes=num_classes, **options)
    if spec.family == "resnet":
        options.pop("image_size", None)  # global average pool: any size works
        return ResNet(num_classes=num_classes, zero_init_residual=spec.zero_init_residual, **options)
    raise ValueError(f"model family {spec.family!r} is not available")


def _input_size(model: nn.Module, image_size: int | None) -> int:
    if image_size is not None:
        return image_size
    return getattr(model, "image_size", 224)


def init_variables(model: nn.Module, image_size: int | None = 224, seed: int = 0) -> Variables:
    """Fresh variables (``params``, plus ``batch_stats`` for BatchNorm models) as a plain dict."""
    size = _input_size(model, image_size)
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = jax.jit(model.init, compiler_options=INIT_COMPILER_OPTIONS.get(jax.default_backend()))(
        jax.random.key(seed), x
    )
    return dict(variables)


def variable_shapes(model: nn.Module, image_size: int | None = None) -> Variables:
    """The variables' shapes and dtypes without computing anything (``jax.ShapeDtypeStruct`` leaves)."""
    size = _input_size(model, image_size)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return dict(jax.eval_shape(model.init, jax.random.key(0), x))


def count_params(variables: Variables) -> int:
    """Trainable parameters: everything under ``params`` (BatchNorm running statistics excluded)."""
    params = variables.get("params", variables)
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))

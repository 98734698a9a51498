"""Post-training int8 quantization: symmetric per-output-channel weights, calibrated activations.

Every ``Conv2d`` and ``Linear`` keeps its weights as int8 with one float scale per output
channel (``max|w| / 127``), and quantizes its input to int8 with one scale per layer calibrated
on a few training batches (``max|x| / 127`` over them). The layer then computes in integers —
int8 x int8 products accumulated in int32 — and rescales once: ``y = acc * s_x * s_w + b``.

The model definitions are untouched: :func:`quantized_apply` runs ``model.apply`` with those two
layer types intercepted, and the quantized variables are an ordinary pytree, so evaluation,
checkpoints and timing use the same code as the float model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvgg.convert import flax_path_to_torch
from jaxvgg.data.normalize import normalize
from jaxvgg.models.layers import Conv2d, Linear

QMAX = 127


def _quantized_layer(context) -> bool:
    return context.method_name == "__call__" and isinstance(context.module, (Conv2d, Linear))


def calibrate(model: nn.Module, variables: Any, batches: Iterable[jax.Array]) -> dict[str, float]:
    """``max|input|`` of every conv/linear layer over ``batches`` (float NHWC images), by torch name."""
    seen: dict[str, jax.Array] = {}

    def record(next_fun, args, kwargs, context):
        if _quantized_layer(context):
            name = flax_path_to_torch(tuple(context.module.path))
            seen[name] = jnp.maximum(seen.get(name, 0.0), jnp.max(jnp.abs(args[0])))
        return next_fun(*args, **kwargs)

    for x in batches:
        with nn.intercept_methods(record):
            model.apply(variables, x, train=False)
    if not seen:
        raise ValueError("no calibration batches")
    return {k: float(v) for k, v in seen.items()}


def quantize_weights(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 kernel, float32 scale per output channel); the output channel is the last axis."""
    kernel = np.asarray(kernel, np.float32)
    max_abs = np.abs(kernel.reshape(-1, kernel.shape[-1])).max(axis=0)
    scale = np.where(max_abs > 0, max_abs / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.round(kernel / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale


def quantize(variables: Any, input_max: dict[str, float]) -> dict[str, Any]:
    """int8 variables: each conv/linear ``kernel`` becomes int8 + ``kernel_scale`` + ``input_scale``."""

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        if "kernel" in node:
            name = flax_path_to_torch(path)
            q, scale = quantize_weights(node["kernel"])
            out = {**node, "kernel": q, "kernel_scale": scale}
            out["input_scale"] = np.float32(max(input_max[name], 1e-8) / QMAX)
            return out
        return {k: walk(v, (*path, k)) for k, v in node.items()}

    out = dict(variables)
    out["params"] = walk(jax.tree.map(np.asarray, variables["params"]), ())
    return out


def quantize_images(model: nn.Module, variables: Any, images: np.ndarray, batch_size: int = 32) -> dict[str, Any]:
    """The int8 variables of ``model``, its inputs calibrated on ``images`` (uint8 NHWC, as the loader gives)."""
    batches = [normalize(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return quantize(variables, calibrate(model, variables, batches))


def int8_template(variables: Any) -> dict[str, Any]:
    """What :func:`quantize` makes of ``variables`` (any values: only the structure, shapes and
    dtypes are kept), for checking and restoring a saved int8 checkpoint."""
    names: list[str] = []

    def collect(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if "kernel" in node:
                names.append(flax_path_to_torch(path))
            else:
                for k, v in node.items():
                    collect(v, (*path, k))

    collect(variables["params"], ())
    return quantize(variables, dict.fromkeys(names, 1.0))


def _int8_layer(module: nn.Module, x: jax.Array) -> jax.Array:
    p = module.variables["params"]
    x_q = jnp.clip(jnp.round(x / p["input_scale"]), -QMAX, QMAX).astype(jnp.int8)
    if isinstance(module, Conv2d):
        s, pad = module.stride, module.padding
        acc = lax.conv_general_dilated(
            x_q,
            p["kernel"],
            window_strides=(s, s),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=module.groups,
            preferred_element_type=jnp.int32,
        )
    else:
        acc = lax.dot_general(x_q, p["kernel"], (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    y = acc.astype(jnp.float32) * (p["input_scale"] * p["kernel_scale"])
    return y + p["bias"] if "bias" in p else y


def quantized_apply(model: nn.Module) -> Callable:
    """``apply(qvariables, x, train=False)`` of ``model`` with int8 conv and linear layers."""

    def replace(next_fun, args, kwargs, context):
        if _quantized_layer(context):
            return _int8_layer(context.module, args[0])
        return next_fun(*args, **kwargs)

    def apply(variables: Any, x: jax.Array, train: bool = False, **kwargs: Any):
        with nn.intercept_methods(replace):
            return model.apply(variables, x, train=False, **kwargs)

    return apply

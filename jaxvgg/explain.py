"""Grad-CAM for a Flax model: the activations of the explained layer and the gradient of a class
logit with respect to them, as pure functions of the variables (what :mod:`jaxvgg.core.gradcam`
turns into heat maps)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvgg.core.gradcam import Explainer, cam_layer, grad_cam
from jaxvgg.data.normalize import normalize
from jaxvgg.train.checkpoint import load_variables

CamInputs = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def gradcam_inputs(model: nn.Module, layer: str) -> CamInputs:
    """``(variables, uint8 NHWC images, class per image) -> (A, dlogit/dA)`` at torch-named ``layer``, jitted.

    The model is applied in two halves (its ``until``/``after`` methods), so the gradient is taken
    with respect to the first half's output. Summing the chosen logits over the batch gives each
    image's own gradient: in inference mode no image's logits depend on another's.
    """

    def cam_inputs(variables: Any, images: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
        acts = model.apply(variables, normalize(images), layer, method="until")

        def chosen_logits(a: jax.Array) -> jax.Array:
            logits = model.apply(variables, a, layer, method="after")
            return jnp.take_along_axis(logits, targets[:, None], axis=1).sum()

        return acts, jax.grad(chosen_logits)(acts)

    return jax.jit(cam_inputs)


def jax_explain(model: nn.Module, variables: Any, name: str, batch_size: int = 16) -> Explainer:
    """The Grad-CAM :data:`~jaxvgg.core.gradcam.Explainer` of zoo model ``name`` with these variables."""
    cam_inputs = gradcam_inputs(model, cam_layer(name))

    def explain(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        maps = []
        for i in range(0, len(images), batch_size):
            chunk = slice(i, i + batch_size)
            acts, grads = cam_inputs(variables, images[chunk], jnp.asarray(targets[chunk], jnp.int32))
            maps.append(grad_cam(np.asarray(acts), np.asarray(grads), images.shape[1:3]))
        return np.concatenate(maps) if maps else np.zeros(images.shape[:3], np.float32)

    return explain


def jax_explainer(run_dir: str | os.PathLike) -> tuple[Explainer, list[str]]:
    """Grad-CAM with the best model of a JAX run, and its class names."""
    model, variables, meta = load_variables(run_dir)
    return jax_explain(model, variables, meta["model"]), meta["classes"]

"""Prediction from a JAX run folder (a float run, or an int8 one written by ``scripts/quantize.py``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxvgg.core.calibration import CalibratedPredictor, load_calibration
from jaxvgg.core.config import run_quantization
from jaxvgg.data.normalize import normalize
from jaxvgg.models.fold import can_fold, fold_batchnorm
from jaxvgg.ops.compiler import inference_options
from jaxvgg.train.checkpoint import load_int8, load_variables


def inference_model(run_dir: str | os.PathLike) -> tuple[Callable[..., Any], Any, dict[str, Any]]:
    """(apply, variables, meta) of a run folder's model: the best checkpoint's, or the int8 one's.
    A BatchNorm VGG comes with its BatchNorm folded into its convolutions (the same logits, 0-4%
    faster: docs/performance.md)."""
    if run_quantization(run_dir) == "int8":
        return load_int8(run_dir)
    model, variables, meta = load_variables(run_dir)
    if can_fold(model):
        model, variables = fold_batchnorm(model, variables)
    return model.apply, variables, meta


def jax_predictor(run_dir: str | os.PathLike, batch_size: int = 32) -> tuple[CalibratedPredictor, list[str]]:
    """The best model of a JAX run as a function of uint8 images (calibrated probabilities, and
    which images are unsure, when the run has a ``calibration.json``), and its class names."""
    apply, variables, meta = inference_model(run_dir)
    options = inference_options(int8=run_quantization(run_dir) == "int8")
    forward = jax.jit(lambda v, x: apply(v, normalize(x)).astype(np.float32), compiler_options=options)

    def logits(images: np.ndarray) -> np.ndarray:
        out = [np.asarray(forward(variables, images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, meta["num_classes"]), np.float32)

    return CalibratedPredictor(logits, load_calibration(run_dir)), meta["classes"]

"""A predictor for any run folder: JAX runs through jaxvgg, PyTorch runs through torchref."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from jaxvgg.core.calibration import CalibratedPredictor
from jaxvgg.core.config import TrainConfig, load_run_config, run_framework
from jaxvgg.core.errors import UserError
from jaxvgg.predict import jax_predictor


def run_settings(run_dir: str | os.PathLike) -> tuple[TrainConfig, str]:
    """A run folder's settings and framework; a missing or damaged ``config.json`` is a one-line UserError."""
    return load_run_config(run_dir), run_framework(run_dir)


def for_run(run_dir: str | os.PathLike, jax_side: Callable[..., Any], torch_side: str) -> Callable[..., Any]:
    """``jax_side`` for a JAX run folder; for a PyTorch run, ``torch_side`` (``"module:function"`` in
    torchref, imported only then), or a one-line error saying the run needs torch."""
    _, framework = run_settings(run_dir)
    if framework != "torch":
        return jax_side
    module, _, function = torch_side.partition(":")
    try:
        return getattr(importlib.import_module(f"torchref.{module}"), function)
    except ImportError as e:
        raise UserError(f"{run_dir}: a PyTorch run; reading it needs torch (pip install -e '.[torch]')") from e


def predictor(run_dir: str | os.PathLike, device: str | None = None) -> tuple[CalibratedPredictor, list[str]]:
    """A predictor for any run folder, JAX or PyTorch (the latter needs torch, and runs on
    ``device``: cpu, cuda or mps, default the best there is; JAX uses its default device).

    It returns calibrated probabilities, and its ``judge`` says which images are unsure, when the
    run has a ``calibration.json``; an older run gives its plain softmax and no flags. An int8 run
    folder (``scripts/quantize.py``) predicts with its int8 model (PyTorch's on the CPU)."""
    make = for_run(run_dir, jax_predictor, "predict:torch_predictor")
    return make(run_dir) if make is jax_predictor else make(run_dir, device=device)

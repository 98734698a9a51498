"""``predict.py --explain``: Grad-CAM heat maps with any run folder, JAX runs through jaxvgg,
PyTorch runs through torchref (as :mod:`jaxvgg.tools.predict` dispatches the predictions)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxvgg.core.config import float_run_only
from jaxvgg.core.gradcam import Explainer, Explanation, class_targets
from jaxvgg.core.plots import SHOWN, plot_predictions
from jaxvgg.explain import jax_explainer
from jaxvgg.tools.predict import for_run


def explainer(run_dir: str | os.PathLike, device: str | None = None) -> tuple[Explainer, list[str]]:
    """Grad-CAM with any run folder's best model (a PyTorch run on ``device``; JAX uses its default device)."""
    float_run_only(run_dir, "--explain (Grad-CAM's gradients)")
    make = for_run(run_dir, jax_explainer, "explain:torch_explainer")
    return make(run_dir) if make is jax_explainer else make(run_dir, device=device)


def explain_predictions(
    run_dir: str | os.PathLike,
    images: np.ndarray,
    paths: Sequence[Path],
    probs: np.ndarray,
    classes: Sequence[str],
    out: str | os.PathLike,
    class_name: str | None = None,
    device: str | None = None,
    unsure: np.ndarray | None = None,
) -> None:
    """Draw the first :data:`~jaxvgg.core.plots.SHOWN` images (uint8, as the model saw them) under
    their Grad-CAM heat maps for their predicted class or ``class_name``, laid out as ``--show``."""
    targets = class_targets(probs[:SHOWN], classes, class_name, run_dir)  # a bad --class before any work
    explain, _ = explainer(run_dir, device)
    maps = explain(images[:SHOWN], targets)
    plot_predictions(paths, probs, classes, out, unsure, Explanation(images[:SHOWN], maps, targets, classes))

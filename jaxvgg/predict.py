"""Single-image and folder prediction from a run folder (JAX runs; torch runs via torchref)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from jaxvgg.config import TrainConfig, load_run_config, run_framework
from jaxvgg.data.folder import IMG_EXTENSIONS, UNREADABLE, link_problem, load_rgb, unreadable_reason
from jaxvgg.data.transforms import Pipeline, normalize
from jaxvgg.errors import UserError


def image_paths(target: str | os.PathLike) -> list[Path]:
    """The image files of ``target`` (a file, or a folder searched recursively), sorted."""
    target = Path(target)
    if target.is_dir():
        # Broken links stay in (they are reported as skipped); folders named like images do not.
        paths = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and not p.is_dir())
        if not paths:
            raise UserError(f"{target}: no images in this folder (extensions: {', '.join(IMG_EXTENSIONS)})")
        return paths
    if not target.exists():
        raise UserError(f"{target}: {link_problem(target) or 'no such file or folder'}")
    return [target]


def load_batch(paths: Sequence[Path], image_size: int) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """uint8 NHWC images of the readable paths, and the unreadable ones with a reason.

    Images above :data:`jaxvgg.data.folder.MAX_PIXELS` (decompression bombs) count as unreadable.
    """
    pipeline = Pipeline(image_size)
    images, ok, bad = [], [], []
    for p in paths:
        try:
            images.append(pipeline(load_rgb(p)))
            ok.append(p)
        except UNREADABLE as e:  # a damaged or hostile file costs that file, not the whole run
            bad.append((p, unreadable_reason(p, e)))
    return (np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)), ok, bad


Predictor = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC images -> class probabilities


def jax_predictor(run_dir: str | os.PathLike, batch_size: int = 32) -> tuple[Predictor, list[str]]:
    """The best model of a JAX run as a function of uint8 images, and its class names."""
    from jaxvgg.train.loop import load_variables

    model, variables, meta = load_variables(run_dir)
    forward = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, normalize(x))))

    def predict(images: np.ndarray) -> np.ndarray:
        out = [np.asarray(forward(variables, images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, meta["num_classes"]), np.float32)

    return predict, meta["classes"]


def run_settings(run_dir: str | os.PathLike) -> tuple[TrainConfig, str]:
    """A run folder's settings and framework; a missing or damaged ``config.json`` is a one-line UserError."""
    return load_run_config(run_dir), run_framework(run_dir)


def predictor(run_dir: str | os.PathLike) -> tuple[Predictor, list[str]]:
    """A predictor for any run folder, JAX or PyTorch (the latter needs torch)."""
    _, framework = run_settings(run_dir)
    if framework == "torch":
        try:
            from torchref.predict import torch_predictor
        except ImportError as e:
            raise UserError(f"{run_dir}: a PyTorch run; reading it needs torch (pip install -e '.[torch]')") from e
        return torch_predictor(run_dir)
    return jax_predictor(run_dir)


def format_predictions(paths: Sequence[Path], probs: np.ndarray, classes: Sequence[str]) -> str:
    if len(paths) == 1:
        lines = [f"{paths[0]}: {classes[int(probs[0].argmax())]}"]
        lines += [f"  {c:<16}{p:7.2%}" for c, p in zip(classes, probs[0], strict=True)]
        return "\n".join(lines)
    width = max(len(str(p)) for p in paths)
    head = f"{'image':<{width}}  {'prediction':<14}" + "".join(f"{c[:12]:>13}" for c in classes)
    rows = [
        f"{p!s:<{width}}  {classes[int(q.argmax())]:<14}" + "".join(f"{x:13.2%}" for x in q)
        for p, q in zip(paths, probs, strict=True)
    ]
    return "\n".join([head, "-" * len(head), *rows])

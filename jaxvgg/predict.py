"""Single-image and folder prediction from a run folder (JAX runs; torch runs via torchref)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from jaxvgg.data.folder import IMG_EXTENSIONS, load_rgb
from jaxvgg.data.transforms import Pipeline, normalize
from jaxvgg.errors import UserError


def image_paths(target: str | os.PathLike) -> list[Path]:
    target = Path(target)
    if target.is_dir():
        paths = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        if not paths:
            raise UserError(f"{target}: no images in this folder")
        return paths
    if not target.exists():
        raise UserError(f"{target}: no such file or folder")
    return [target]


def load_batch(paths: Sequence[Path], image_size: int) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """uint8 NHWC images of the readable paths, and the unreadable ones with a reason."""
    pipeline = Pipeline(image_size)
    images, ok, bad = [], [], []
    for p in paths:
        try:
            images.append(pipeline(load_rgb(p)))
            ok.append(p)
        except (OSError, ValueError) as e:
            bad.append((p, str(e).splitlines()[0] if str(e) else type(e).__name__))
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


def predictor(run_dir: str | os.PathLike) -> tuple[Predictor, list[str]]:
    """A predictor for any run folder, JAX or PyTorch (the latter needs torch)."""
    framework = json.loads((Path(run_dir) / "config.json").read_text()).get("framework", "jax")
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

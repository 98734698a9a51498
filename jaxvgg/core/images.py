"""Images given on the command line: which files, read as uint8 batches, and the predictions table."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxvgg.core.errors import UserError
from jaxvgg.core.folder import IMG_EXTENSIONS, UNREADABLE, link_problem, load_rgb, unreadable_reason
from jaxvgg.core.transforms import Pipeline


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


def load_batch(
    paths: Sequence[Path], image_size: int, resize: str = "crop"
) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """uint8 NHWC images of the readable paths, and the unreadable ones with a reason.

    Images above :data:`jaxvgg.core.folder.MAX_PIXELS` (decompression bombs) count as unreadable.
    """
    pipeline = Pipeline(image_size, resize=resize)
    images, ok, bad = [], [], []
    for p in paths:
        try:
            images.append(pipeline(load_rgb(p)))
            ok.append(p)
        except UNREADABLE as e:  # a damaged or hostile file costs that file, not the whole run
            bad.append((p, unreadable_reason(p, e)))
    return (np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)), ok, bad


Predictor = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC images -> class probabilities


UNSURE = "unsure"  # what predict.py shows for an image unlike the training images


def format_predictions(
    paths: Sequence[Path], probs: np.ndarray, classes: Sequence[str], unsure: np.ndarray | None = None
) -> str:
    """The table predict.py prints; ``unsure`` (per image, None for a run without calibration)
    marks the images that look like none of the training images."""
    flags = [bool(u) for u in unsure] if unsure is not None else [False] * len(paths)
    if len(paths) == 1:
        # The class stays last on the line, where scripts reading the first line look for it.
        note = f"{UNSURE} (unlike the training images); the model's guess: " if flags[0] else ""
        lines = [f"{paths[0]}: {note}{classes[int(probs[0].argmax())]}"]
        lines += [f"  {c:<16}{p:7.2%}" for c, p in zip(classes, probs[0], strict=True)]
        return "\n".join(lines)
    width = max(len(str(p)) for p in paths)
    note = f"  {'note':<6}" if unsure is not None else ""
    head = f"{'image':<{width}}  {'prediction':<14}" + "".join(f"{c[:12]:>13}" for c in classes) + note
    rows = [
        f"{p!s:<{width}}  {classes[int(q.argmax())]:<14}"
        + "".join(f"{x:13.2%}" for x in q)
        + (f"  {UNSURE if flag else '':<6}" if unsure is not None else "")
        for p, q, flag in zip(paths, probs, flags, strict=True)
    ]
    return "\n".join([head, "-" * len(head), *(r.rstrip() for r in rows)])


def prediction_rows(
    paths: Sequence[Path], probs: np.ndarray, classes: Sequence[str], unsure: np.ndarray | None = None
) -> list[dict]:
    """One record per image: its path, the predicted class, every class's probability and, for a
    calibrated run, whether it is ``unsure``."""
    return [
        {
            "image": str(p),
            "prediction": classes[int(q.argmax())],
            **{c: float(x) for c, x in zip(classes, q, strict=True)},
            **({UNSURE: bool(unsure[i])} if unsure is not None else {}),
        }
        for i, (p, q) in enumerate(zip(paths, probs, strict=True))
    ]


def predictions_csv(rows: list[dict], classes: Sequence[str]) -> str:
    extra = [UNSURE] if rows and UNSURE in rows[0] else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "prediction", *classes, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()

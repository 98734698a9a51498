"""What a checkpoint says about itself, checked before anything is built from it.

A checkpoint's meta names the model, the classes and the image size; a model is then built
and memory allocated from it, so a damaged or hostile file must not get that far (a
``num_classes`` of 10^13 once asked for a 36 TiB head).
"""

from __future__ import annotations

import os
from typing import Any

from jaxvgg.core.errors import UserError
from jaxvgg.core.specs import MODELS

MAX_CLASSES = 100_000
MAX_IMAGE_SIZE = 4096


def check_meta(meta: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``meta`` if it describes a model of the zoo sensibly, else a one-line error naming ``path``."""
    if not isinstance(meta, dict) or not meta:
        raise UserError(f"{path}: the checkpoint has no description of its model (empty or missing meta)")
    model = meta.get("model")
    if model not in MODELS:
        raise UserError(f"{path}: the checkpoint names model {model!r}, which is not one of this version's models")
    n = meta.get("num_classes")
    if not _is_int(n) or not 1 <= n <= MAX_CLASSES:
        raise UserError(f"{path}: the checkpoint declares num_classes {n!r}; expected an integer in 1..{MAX_CLASSES}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or len(classes) != n:
        raise UserError(f"{path}: the checkpoint's class names do not match its num_classes {n}")
    size = meta.get("image_size")
    if not _is_int(size) or not 8 <= size <= MAX_IMAGE_SIZE:
        raise UserError(
            f"{path}: the checkpoint declares image_size {size!r}; expected an integer in 8..{MAX_IMAGE_SIZE}"
        )
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_resume_meta(meta: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``meta`` of a ``last`` checkpoint if it holds a resumable position, else a one-line error."""
    if not isinstance(meta, dict):
        raise UserError(f"{path}: not a resumable checkpoint (no meta)")
    bad = [k for k in ("epoch", "batch", "bad_epochs") if not _is_int(meta.get(k))]
    if "best_acc" in meta and "best_score" not in meta:  # written before --select-by: it selected by accuracy
        meta["best_score"] = meta.pop("best_acc")
    if not isinstance(meta.get("best_score"), int | float) or isinstance(meta.get("best_score"), bool):
        bad.append("best_score")
    if bad:
        raise UserError(f"{path}: not a resumable checkpoint (its meta lacks or mangles {', '.join(bad)})")
    return meta

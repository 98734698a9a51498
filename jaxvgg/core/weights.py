"""Weights as both frameworks exchange them: torch-named numpy state_dicts.

A file or run folder is read by a :data:`WeightReader` that the caller passes in (each
framework reads its own files; :func:`jaxvgg.tools.weights.read_weights` reads either), and
:func:`fit_weights` checks the entries against the model that takes them, after reading the
tutorial's own layer names as ours (:mod:`jaxvgg.core.tutorial_keys`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxvgg.core.config import float_run_only, run_framework
from jaxvgg.core.errors import UserError, WeightMismatchError
from jaxvgg.core.freeze import head_module, under
from jaxvgg.core.tutorial_keys import from_tutorial

StateDict = dict[str, np.ndarray]
WeightReader = Callable[[str | Path], StateDict]  # a .pth/.msgpack file or a run folder -> torch-named arrays
BEST_FILES = {"jax": "best.msgpack", "torch": "best.pth"}


def weights_file(source: str | Path) -> Path:
    """The file ``source`` names: itself, or a run folder's best checkpoint of the framework its
    ``config.json`` names (a folder holding both frameworks' files is read as its config says)."""
    path = Path(source)
    if path.is_dir():
        float_run_only(path, "reading its float weights")  # --init-from, --pretrained, --teacher, ...
        path = path / BEST_FILES[run_framework(path)]
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path


def mismatch_error(
    subject: str, missing: list[str], unexpected: list[str], misshaped: list[str], hint: str = ""
) -> WeightMismatchError | None:
    """The one message for weights that do not fit a model (8 entries of each kind shown), or None."""
    if not (missing or unexpected or misshaped):
        return None
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = "; ".join(items[:8]) + (f"; … ({len(items) - 8} more)" if len(items) > 8 else "")
            parts.append(f"{label} ({len(items)}): {shown}")
    return WeightMismatchError(f"weights do not fit {subject}{hint}: " + " | ".join(parts))


def fit_weights(
    source: Mapping[str, np.ndarray],
    target: Mapping[str, tuple[int, ...]],
    name: str,
    replace_head: bool,
) -> tuple[StateDict, list[str]]:
    """The source entries for ``target`` (name -> shape), and notes on what was not taken.

    With ``replace_head``, a classification layer of the wrong shape is left out (its entries are
    absent from the result, so the caller keeps fresh ones); when the other layers of the head do
    not fit either (a light head from a VGG-16 run), the whole head is left out. Every other
    mismatch is an error naming the entries. ``num_batches_tracked`` is optional: our BatchNorm
    does not use it. A file in the tutorial's layout (``block1.0.weight``) is read under our
    names, and a note says so.
    """
    source, tutorial = from_tutorial(source, name)
    head = head_module(name)
    stack = head.split(".")[0]  # the whole head: "classifier" (VGG) or "fc" (ResNet)
    loaded: StateDict = {}
    missing, misshaped = [], []
    for key, shape in target.items():
        if key not in source:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        got = tuple(np.shape(source[key]))
        if got == tuple(shape):
            loaded[key] = np.asarray(source[key])
        else:
            misshaped.append(f"{key}: file {got}, model {tuple(shape)}")
    unexpected = [k for k in source if k not in target]
    notes: list[str] = []
    if replace_head and misshaped:

        def module(entry: str) -> str:
            return entry.partition(":")[0].rpartition(".")[0]

        # The last layer alone (the tutorial's new last layer), else the whole head, if that is all.
        for replaced in (head, stack):
            if all(under(module(e), replaced) for e in misshaped + missing + unexpected):
                for key in [k for k in loaded if under(k.rpartition(".")[0], replaced)]:
                    del loaded[key]  # a half-loaded head would be worse than a fresh one
                what = "classification layer" if replaced == head else "head"
                notes = [f"{what} {replaced} replaced, freshly initialised ({'; '.join(misshaped)})"]
                missing = misshaped = unexpected = []
                break
    hint = "" if replace_head else " (--pretrained replaces a head that does not fit)"
    hint += f" ({tutorial}; names below are the model's)" if tutorial else ""
    if error := mismatch_error(name, missing, unexpected, misshaped, hint):
        raise error
    notes = [tutorial, *notes] if tutorial else notes
    return loaded, notes


def describe_load(source: str | Path, loaded: Mapping[str, Any], notes: list[str]) -> str:
    text = f"initial weights: {len(loaded)} tensors from {weights_file(source)}"
    return text + "".join(f"\n  {n}" for n in notes)

"""Train/val/test splits that both frameworks read from one ``split.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from jaxvgg.core.atomic import write_text
from jaxvgg.core.errors import UserError
from jaxvgg.core.folder import ImageFolderIndex

SUBSETS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Split:
    classes: list[str]
    subsets: dict[str, list[str]]  # subset -> paths relative to the data root, "<class>/<file>"
    method: str
    seed: int

    def samples(self, subset: str) -> list[tuple[str, int]]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [(p, index[Path(p).parts[0]]) for p in self.subsets[subset]]

    def to_json(self, root: str | os.PathLike) -> dict:
        return {"root": str(root), "classes": self.classes, "method": self.method, "seed": self.seed, **self.subsets}


def make_split(
    data: ImageFolderIndex,
    method: str = "stratified",
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """80/20 by default. ``stratified`` keeps class proportions; ``random`` is ``random_split``-like.

    ``val_fraction`` (of the training part) holds out a validation set; at 0 the test split is
    also the validation split, as in the tutorial.
    """
    if method not in ("stratified", "random"):
        raise UserError(f"--split {method!r}: choose stratified or random")
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
        raise UserError("split fractions must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    paths = np.array([p for p, _ in data.samples])
    labels = np.array(data.labels)
    groups = (
        [np.flatnonzero(labels == k) for k in range(len(data.classes))]
        if method == "stratified"
        else [np.arange(len(paths))]
    )
    train, val, test = [], [], []
    for group in groups:
        order = rng.permutation(group)
        n_test = round(len(order) * test_fraction)
        rest = order[n_test:]
        n_val = round(len(rest) * val_fraction)
        test += order[:n_test].tolist()
        val += rest[:n_val].tolist()
        train += rest[n_val:].tolist()
    subsets = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    return Split(list(data.classes), {k: paths[v].tolist() for k, v in subsets.items()}, method, seed)


def save_split(split: Split, root: str | os.PathLike, path: str | os.PathLike) -> None:
    write_text(path, json.dumps(split.to_json(root), indent=1))


def load_split(path: str | os.PathLike, data: ImageFolderIndex | None = None) -> Split:
    """Read ``split.json``; with ``data``, check that its classes and files are there."""
    try:
        raw = json.loads(Path(path).read_text())
        split = Split(raw["classes"], {k: list(raw.get(k, [])) for k in SUBSETS}, raw["method"], raw["seed"])
    except FileNotFoundError as e:
        raise UserError(f"{path}: split file does not exist") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a split file ({type(e).__name__}: {e})") from e
    if data is not None:
        if list(data.classes) != split.classes:
            raise UserError(f"{path}: classes {split.classes} differ from the data's {data.classes}")
        known = {p for p, _ in data.samples}
        missing = [p for k in SUBSETS for p in split.subsets[k] if p not in known]
        if missing:
            raise UserError(
                f"{path}: {len(missing)} listed file(s) are missing or unreadable in {data.root}, e.g. {missing[0]}"
            )
    return split

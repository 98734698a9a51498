"""The tutorial's own checkpoints: its hand-built VGGs name layers by stage (``block1.0.weight``).

The tutorial builds VGG-16 as five ``nn.Sequential`` stages ``block1`` … ``block5`` (Conv2d,
ReLU, …, MaxPool2d) and an ``nn.Sequential`` ``classifier``; our zoo builds the same layers the
torchvision way (``features.N``, ``classifier.N``). A state_dict in the tutorial's layout is
recognised by its ``blockK`` names and renamed in the order the layers run: the modules with
weights of the K-th block become those of our K-th stage (:func:`jaxvgg.core.stages.vgg_stages`),
the classifier's become our head's. Matching by order rather than by index is what lets the
light variants in as well: their classifier indices shift with a Dropout or a Flatten, and a
depthwise-separable convolution may be a class (``block1.0.depthwise``) or a Sequential
(``block1.0.0``). The shapes are then checked like any file's (:func:`jaxvgg.core.weights.fit_weights`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

from jaxvgg.core.errors import WeightMismatchError
from jaxvgg.core.specs import get_spec
from jaxvgg.core.stages import head_modules, vgg_stages

V = TypeVar("V")
BLOCK = re.compile(r"block(\d+)")
HEAD = "classifier"


def is_tutorial_layout(keys: Iterable[str]) -> bool:
    """Whether state_dict keys name layers as the tutorial does (``blockK.…``, no ``features.…``)."""
    tops = {k.split(".")[0] for k in keys}
    return "features" not in tops and any(BLOCK.fullmatch(t) for t in tops)


def _modules(keys: Iterable[str]) -> dict[str, list[str]]:
    """The file's modules (a key without its leaf) under each top-level name, in the file's order:
    torch writes a state_dict in the order the modules were defined, which is the order they run."""
    out: dict[str, list[str]] = {}
    for key in keys:
        module = key.rpartition(".")[0]
        group = out.setdefault(module.split(".")[0], [])
        if module and module not in group:
            group.append(module)
    return out


def _pairs(label: str, theirs: list[str], ours: list[str], problems: list[str]) -> list[tuple[str, str]]:
    if len(theirs) != len(ours):
        problems.append(
            f"{label} holds {len(theirs)} layers with weights ({', '.join(theirs) or 'none'}), "
            f"the model's {len(ours)} ({', '.join(ours) or 'none'})"
        )
        return []
    return list(zip(theirs, ours, strict=True))


def tutorial_renames(keys: Iterable[str], name: str) -> dict[str, str]:
    """``{tutorial module: our module}`` for a state_dict in the tutorial's layout and model ``name``.

    Raises :class:`WeightMismatchError` naming every block whose layers do not line up with ours.
    """
    if get_spec(name).family != "vgg":
        raise WeightMismatchError(
            f"weights do not fit {name}: the file is laid out as the tutorial's VGG (block1, …), and {name} is no VGG"
        )
    groups = _modules(keys)
    stages = vgg_stages(name)
    blocks = sorted(int(m.group(1)) for t in groups if (m := BLOCK.fullmatch(t)))
    problems: list[str] = []
    if blocks != list(range(1, len(stages) + 1)):
        problems.append(f"the file has blocks {', '.join(f'block{b}' for b in blocks)}; {name} has {len(stages)}")
    pairs = []
    for k, stage in enumerate(stages, start=1):
        pairs += _pairs(f"block{k}", groups.get(f"block{k}", []), list(stage.modules), problems)
    pairs += _pairs(HEAD, groups.get(HEAD, []), head_modules(name), problems)
    if problems:
        raise WeightMismatchError(
            f"weights do not fit {name}: laid out as the tutorial's VGG (block1, …), but " + "; ".join(problems)
        )
    return dict(pairs)


def from_tutorial(source: Mapping[str, V], name: str) -> tuple[dict[str, V], str | None]:
    """``source`` with the tutorial's names replaced by model ``name``'s, and a one-line note saying
    so; ``source`` unchanged and ``None`` when it is not in the tutorial's layout. Keys outside the
    blocks and the classifier are kept as they are (the caller reports them as unexpected)."""
    if not is_tutorial_layout(source):
        return dict(source), None
    renames = tutorial_renames(source, name)
    out = {}
    for key, value in source.items():
        module, _, leaf = key.rpartition(".")
        out[f"{renames[module]}.{leaf}" if module in renames else key] = value
    blocks = len(vgg_stages(name))
    (first, ours_first), *_, (last, ours_last) = renames.items()
    note = (
        f"the tutorial's layout recognised (block1-block{blocks}, {HEAD}): {len(renames)} layers read as "
        f"{name}'s ({first} -> {ours_first}, …, {last} -> {ours_last})"
    )
    return out, note

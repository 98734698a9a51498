"""Transfer learning for both frameworks: starting weights from a file, and which layers to freeze.

Weights travel as torch-named numpy state_dicts, the one format both sides read: a torchvision
``.pth`` file, a torch run folder's ``best.pth`` or a JAX run folder's ``best.msgpack`` (converted).
:func:`fit_weights` checks every entry against the model and, when asked, leaves out a
classification layer whose shape does not fit (a 1000-class ImageNet head for a 3-class model),
so that it keeps its fresh initialisation; nothing else is allowed to differ.

Freezing names layers the way torch does (``features.0``, ``layer4.2.conv1``, ``fc``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxvgg.convert import flax_path_to_torch, flax_to_torch, load_pth, torch_to_flax
from jaxvgg.errors import UserError, WeightMismatchError
from jaxvgg.models import create_model, variable_shapes
from jaxvgg.models.specs import HEADS, get_spec

IsFrozen = Callable[[str], bool]


def head_module(name: str) -> str:
    """The torch name of the model's classification layer (the one a new dataset replaces)."""
    spec = get_spec(name)
    if spec.family == "resnet":
        return "fc"
    head = HEADS[spec.head]
    per_hidden = 3 if head.dropout else 2  # Linear, ReLU(, Dropout)
    return f"classifier.{per_hidden * len(head.hidden)}"


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def freeze_rule(name: str, freeze: str) -> IsFrozen | None:
    """``module_name -> frozen?`` for ``--freeze``: ``none``, ``backbone`` (all but the
    classification layer) or comma-separated torch module prefixes (``features,classifier.0``).
    """
    if freeze in ("", "none"):
        return None
    if freeze == "backbone":
        head = head_module(name)
        return lambda module: not _under(module, head)
    prefixes = tuple(p.strip() for p in freeze.split(",") if p.strip())
    return lambda module: any(_under(module, p) for p in prefixes)


def module_names(name: str, image_size: int = 224) -> list[str]:
    """torch names of the model's modules that hold parameters, in order."""
    options = {"image_size": image_size} if get_spec(name).sized else {}
    params = variable_shapes(create_model(name, **options), image_size)["params"]
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return list(dict.fromkeys(flax_path_to_torch(tuple(k.key for k in p[:-1])) for p, _ in paths))


def check_freeze(name: str, freeze: str, image_size: int = 224) -> None:
    """Every prefix must name something in the model, and something must stay trainable."""
    rule = freeze_rule(name, freeze)
    if rule is None:
        return
    modules = module_names(name, image_size)
    if freeze != "backbone":
        for prefix in freeze.split(","):
            prefix = prefix.strip()
            if prefix and not any(_under(m, prefix) for m in modules):
                tops = ", ".join(dict.fromkeys(m.split(".")[0] for m in modules))
                raise UserError(f"--freeze {prefix!r}: {name} has no such layer (its top-level layers: {tops})")
    if all(rule(m) for m in modules):
        raise UserError(f"--freeze {freeze!r} freezes every layer of {name}: nothing would train")


def weights_file(source: str | Path) -> Path:
    """The file ``source`` names: itself, or a run folder's best checkpoint of the framework its
    ``config.json`` names (a folder holding both frameworks' files is read as its config says)."""
    path = Path(source)
    if path.is_dir():
        from jaxvgg.config import run_framework

        path = path / {"jax": "best.msgpack", "torch": "best.pth"}[run_framework(path)]
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path


def read_weights(source: str | Path) -> dict[str, np.ndarray]:
    """A torch-named state_dict from a ``.pth``/``.msgpack`` file or a run folder."""
    path = weights_file(source)
    if path.suffix == ".msgpack":
        from jaxvgg.train.loop import load_variables  # the training loop imports this module

        _, variables, meta = load_variables(path.parent, path.name)
        options = {"image_size": meta["image_size"]} if get_spec(meta["model"]).sized else {}
        return flax_to_torch(meta["model"], variables, **options)
    return load_pth(str(path))


def fit_weights(
    source: Mapping[str, np.ndarray],
    target: Mapping[str, tuple[int, ...]],
    name: str,
    replace_head: bool,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The source entries for ``target`` (name -> shape), and notes on what was not taken.

    With ``replace_head``, a classification layer of the wrong shape is left out (its entries are
    absent from the result, so the caller keeps fresh ones); every other mismatch is an error
    naming the entries. ``num_batches_tracked`` is optional: our BatchNorm does not use it.
    """
    head = head_module(name)
    loaded: dict[str, np.ndarray] = {}
    missing, misshaped, replaced = [], [], []
    for key, shape in target.items():
        if key not in source:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        got = tuple(np.shape(source[key]))
        if got == tuple(shape):
            loaded[key] = np.asarray(source[key])
        elif replace_head and _under(key.rpartition(".")[0], head):
            replaced.append(f"{key}: file {got}, model {tuple(shape)}")
        else:
            misshaped.append(f"{key}: file {got}, model {tuple(shape)}")
    if replaced:  # a half-loaded head would be worse than a fresh one
        for key in [k for k in loaded if _under(k.rpartition(".")[0], head)]:
            del loaded[key]
    unexpected = [k for k in source if k not in target]
    if missing or misshaped or unexpected:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                more = f"; … ({len(items) - 6} more)" if len(items) > 6 else ""
                parts.append(f"{label} ({len(items)}): " + "; ".join(items[:6]) + more)
        hint = "" if replace_head else " (--pretrained replaces a classification layer that does not fit)"
        raise WeightMismatchError(f"weights do not fit {name}{hint}: " + " | ".join(parts))
    notes = [f"classification layer {head} replaced, freshly initialised ({'; '.join(replaced)})"] if replaced else []
    return loaded, notes


def describe_load(source: str | Path, loaded: Mapping[str, Any], notes: list[str]) -> str:
    text = f"initial weights: {len(loaded)} tensors from {weights_file(source)}"
    return text + "".join(f"\n  {n}" for n in notes)


def starting_variables(
    name: str,
    variables: Mapping[str, Any],
    source: str | Path,
    replace_head: bool,
    **options: Any,
) -> tuple[dict[str, Any], str]:
    """Flax ``variables`` with every entry that ``source`` provides; plus the report line(s)."""
    sd = read_weights(source)
    template = flax_to_torch(name, variables, **options)
    try:
        loaded, notes = fit_weights(sd, {k: v.shape for k, v in template.items()}, name, replace_head)
    except WeightMismatchError as e:
        raise WeightMismatchError(f"{source}: {e}") from e
    num_classes = int(np.shape(template[head_module(name) + ".weight"])[0])
    merged = torch_to_flax(name, {**template, **loaded}, num_classes, **options)
    return merged, describe_load(source, loaded, notes)


def param_labels(params: Any, is_frozen: IsFrozen | None) -> Any:
    """A pytree like ``params`` of ``"frozen"``/``"trainable"``, for ``optax.multi_transform``."""

    def label(path, _leaf) -> str:
        module = flax_path_to_torch(tuple(k.key for k in path[:-1]))
        return "frozen" if is_frozen is not None and is_frozen(module) else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)

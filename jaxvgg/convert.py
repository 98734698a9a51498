"""Weights between torch state_dicts and Flax variables, for every model in the zoo.

One naming rule covers all models: a torch module path becomes a Flax path by joining each
numeric index to the name before it (``features.10`` -> ``features_10``, ``layer1.0.conv1`` ->
``layer1_0/conv1``), which is how Flax names the lists of layers our models are built from.
Leaves map by kind:

=================  ==========================  =====================================
torch              Flax                        change
=================  ==========================  =====================================
conv ``weight``    ``params/…/kernel``         OIHW -> HWIO (depthwise included)
linear ``weight``  ``params/…/kernel``         (out, in) -> (in, out); our flatten uses
                                               torch's CHW order, so nothing more
BN ``weight``      ``params/…/scale``
``bias``           ``params/…/bias``
``running_mean``   ``batch_stats/…/mean``
``running_var``    ``batch_stats/…/var``
=================  ==========================  =====================================

``num_batches_tracked`` has no Flax counterpart; our BatchNorm uses a fixed momentum (torch's
default), for which torch ignores the counter, so it is dropped on the way in and written as
0 on the way out (or as the count you pass).

Nothing here imports torch: ``.pth`` files are read and written by :mod:`jaxvgg.tools.weights`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvgg.core.transpose import transposed_copy
from jaxvgg.core.weights import mismatch_error
from jaxvgg.models import create_model, variable_shapes

_INDEX = re.compile(r"^(.*)_(\d+)$")
_BN_STATS = {"running_mean": "mean", "running_var": "var"}


def torch_path_to_flax(path: str) -> tuple[str, ...]:
    """``"features.0"`` -> ``("features_0",)``; ``"layer1.0.conv1"`` -> ``("layer1_0", "conv1")``."""
    out: list[str] = []
    for part in path.split("."):
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(out)


def flax_path_to_torch(path: tuple[str, ...]) -> str:
    parts = []
    for part in path:
        m = _INDEX.match(part)
        parts.extend([m.group(1), m.group(2)] if m else [part])
    return ".".join(parts)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _flat_dict(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat_dict(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _nest(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def _model(name: str, num_classes: int | None, options: dict, state_dict_classes: int | None):
    classes = num_classes if num_classes is not None else state_dict_classes
    return create_model(name, classes or 3, **options)


def _last_linear_out(state_dict: Mapping[str, Any]) -> int | None:
    two_d = [k for k, v in state_dict.items() if k.endswith(".weight") and np.ndim(_to_numpy(v)) == 2]
    return int(np.shape(_to_numpy(state_dict[two_d[-1]]))[0]) if two_d else None


def torch_to_flax(
    name: str, state_dict: Mapping[str, Any], num_classes: int | None = None, **options: Any
) -> dict[str, Any]:
    """Flax variables for model ``name`` from a torch state_dict (tensors or arrays).

    ``num_classes`` defaults to the width of the state_dict's last layer. Raises
    :class:`WeightMismatchError` listing missing, unexpected and mis-shaped entries.
    """
    model = _model(name, num_classes, options, _last_linear_out(state_dict))
    expected = _flat_dict(variable_shapes(model))
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, misshaped = [], []
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        raw = _to_numpy(value)
        path = torch_path_to_flax(module)
        axes = tuple(range(raw.ndim))
        if leaf in _BN_STATS:
            target = ("batch_stats", *path, _BN_STATS[leaf])
        elif leaf == "bias":
            target = ("params", *path, "bias")
        elif leaf == "weight" and raw.ndim == 4:
            target, axes = ("params", *path, "kernel"), (2, 3, 1, 0)
        elif leaf == "weight" and raw.ndim == 2:
            target, axes = ("params", *path, "kernel"), (1, 0)
        elif leaf == "weight" and raw.ndim == 1:
            target = ("params", *path, "scale")
        else:
            unexpected.append(key)
            continue
        arr = raw.transpose(axes)
        if target not in expected:
            unexpected.append(key)
        elif tuple(expected[target].shape) != arr.shape:
            want = _torch_shape_of(expected[target], target)
            misshaped.append(f"{key}: got {_torch_shape_of(arr, target)}, model wants {want}")
        else:
            # A copy: torch tensors share memory with .numpy(), and torch updates BatchNorm statistics in place.
            flat[target] = transposed_copy(raw, axes, expected[target].dtype)
    missing = [_torch_name(p) for p in expected if p not in flat and not _is_reported(p, misshaped)]
    if error := mismatch_error(name, missing, unexpected, misshaped):
        raise error
    return _nest(flat)


def flax_to_torch(
    name: str, variables: Mapping[str, Any], num_batches_tracked: int = 0, contiguous: bool = True, **options: Any
) -> dict[str, np.ndarray]:
    """A torch-named state_dict of numpy arrays for model ``name`` (load with ``torch.from_numpy``).

    ``contiguous=False`` leaves the kernels as transposed views of ``variables``: for a reader that
    copies them anyway (``torch_to_flax`` transposes them back, so its copy is a plain one), it
    saves copying every weight into torch's layout first.
    ``options`` (the model's, e.g. ``image_size``) are accepted for symmetry with
    :func:`torch_to_flax`; the mapping itself does not depend on them.
    """
    stats = _flat_dict(variables.get("batch_stats", {}))
    by_module: dict[tuple[str, ...], dict[str, Any]] = {}
    for path, value in _flat_dict(variables.get("params", {})).items():
        by_module.setdefault(path[:-1], {})[path[-1]] = np.asarray(value)
    out: dict[str, np.ndarray] = {}
    for path, leaves in by_module.items():
        module = flax_path_to_torch(path)
        for leaf, arr in leaves.items():
            axes = tuple(range(arr.ndim))
            if leaf == "kernel" and arr.ndim == 4:
                axes = (3, 2, 0, 1)
            elif leaf == "kernel":
                axes = (1, 0)
            torch_leaf = "weight" if leaf in ("kernel", "scale") else leaf
            view = arr.transpose(axes)
            out[f"{module}.{torch_leaf}"] = (
                view if not contiguous or view.flags.c_contiguous else transposed_copy(arr, axes)
            )
        if (*path, "mean") in stats:
            out[f"{module}.running_mean"] = np.asarray(stats[(*path, "mean")])
            out[f"{module}.running_var"] = np.asarray(stats[(*path, "var")])
            out[f"{module}.num_batches_tracked"] = np.asarray(num_batches_tracked, dtype=np.int64)
    return out


def _torch_name(path: tuple[str, ...]) -> str:
    _collection, *rest = path
    leaf = rest[-1]
    module = flax_path_to_torch(tuple(rest[:-1]))
    torch_leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
    return f"{module}.{torch_leaf}"


def _torch_shape_of(arr: Any, target: tuple[str, ...]) -> tuple[int, ...]:
    shape = tuple(arr.shape)
    if target[-1] == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if target[-1] == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def _is_reported(path: tuple[str, ...], misshaped: list[str]) -> bool:
    name = _torch_name(path)
    return any(m.startswith(name + ":") for m in misshaped)

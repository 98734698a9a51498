"""``best.msgpack``: the best variables as one msgpack file with a JSON header, written atomically.

The file is written through :func:`jaxvgg.core.atomic.atomic_write` (a temporary file renamed over
the target), so a crash, Ctrl-C or full disk while saving leaves the previous good checkpoint
in place. It is the exchange format (``predict``, ``evaluate``, ``export``, ``--init-from``); the
resumable state, optimizer included, is orbax's, in ``last/`` (:mod:`jaxvgg.train.last_state`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from jaxvgg.compress.quantize import int8_template, quantized_apply
from jaxvgg.convert import flax_to_torch
from jaxvgg.core.atomic import write_bytes
from jaxvgg.core.errors import UserError, WeightMismatchError
from jaxvgg.core.meta import check_meta
from jaxvgg.core.run import INT8_CHECKPOINTS
from jaxvgg.core.specs import size_options
from jaxvgg.core.weights import weights_file
from jaxvgg.models import create_model, variable_shapes

# 2: the first FC layer after a flatten reads torch's CHW order (1 had HWC rows, which load
# without a shape error but compute something else, so they are refused by name).
FORMAT = "jaxvgg-checkpoint-2"
BEST = "best.msgpack"
INT8_BEST = INT8_CHECKPOINTS["jax"]  # an int8 run folder's model (scripts/quantize.py)


def save(path: str | os.PathLike, tree: Any, meta: dict[str, Any]) -> None:
    path = Path(path)
    state = serialization.to_state_dict(jax.device_get(tree))
    payload = serialization.msgpack_serialize({"format": FORMAT, "meta": json.dumps(meta), "state": state})
    write_bytes(path, payload)


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, raw state dict) of a checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint does not exist")
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        found = raw.get("format")
        if found == "jaxvgg-checkpoint-1":
            raise UserError(
                f"{path}: written by an earlier jaxvgg ({found}), whose flatten order differs; "
                f"this version reads {FORMAT}: train again, or convert through a .pth file from that version"
            )
        if found != FORMAT:
            raise ValueError("unknown format")
        meta = json.loads(raw["meta"])
        if not isinstance(meta, dict) or not isinstance(raw["state"], dict):
            raise ValueError("meta or state is not a mapping")
        return meta, raw["state"]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: not a jaxvgg checkpoint or damaged ({type(e).__name__}: {e})") from e


def restore(template: Any, state: dict[str, Any], path: str | os.PathLike, model: str) -> Any:
    """``state`` poured into the structure of ``template``; mis-shaped leaves are a clear error."""
    expected = serialization.to_state_dict(template)
    bad = _shape_mismatches(expected, state)
    if bad:
        raise WeightMismatchError(f"{path}: checkpoint does not fit {model}: " + "; ".join(bad[:5]))
    return serialization.from_state_dict(template, state)


def _shape_mismatches(expected: Any, got: Any, prefix: str = "") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{prefix or '/'}: missing"]
        out = [f"{prefix}/{k}: missing" for k in expected if k not in got]
        out += [f"{prefix}/{k}: unexpected" for k in got if k not in expected]
        for k in expected:
            if k in got:
                out += _shape_mismatches(expected[k], got[k], f"{prefix}/{k}")
        return out
    if np.shape(expected) != np.shape(got):
        return [f"{prefix}: shape {np.shape(got)}, model wants {np.shape(expected)}"]
    return []


def _model_and_template(meta: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The Flax model a checkpoint's meta describes, and zero variables of its shapes."""
    options = size_options(meta["model"], meta["image_size"])
    model = create_model(meta["model"], meta["num_classes"], **options)
    template = dict(variable_shapes(model, meta["image_size"]))
    template.setdefault("batch_stats", {})
    return model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)


def load_variables(run_dir: str | Path, which: str = BEST) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(Flax model, variables, meta) of a JAX run folder's best (or last) checkpoint."""
    path = Path(run_dir) / which
    meta, raw = read(path)
    check_meta(meta, path)
    if meta.get("framework", "jax") != "jax":
        raise UserError(f"{path}: not a JAX checkpoint")
    model, template = _model_and_template(meta)
    tree = restore(template, {"params": raw["params"], "batch_stats": raw.get("batch_stats", {})}, path, meta["model"])
    variables = {k: v for k, v in tree.items() if v}
    return model, variables, meta


def load_int8(run_dir: str | Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(apply, int8 variables, meta) of an int8 run folder (:mod:`jaxvgg.compress.quantize`'s
    layers: ``apply(variables, x)`` computes the convolutions and linear layers in integers)."""
    path = Path(run_dir) / INT8_BEST
    meta, raw = read(path)
    check_meta(meta, path)
    if meta.get("framework", "jax") != "jax" or meta.get("quantization") != "int8":
        raise UserError(f"{path}: not an int8 JAX checkpoint")
    model, template = _model_and_template(meta)
    template = int8_template({k: v for k, v in template.items() if v})
    tree = restore(template, {k: raw.get(k, {}) for k in template}, path, meta["model"])
    wrong = [
        f"{jax.tree_util.keystr(k)}: {np.asarray(got).dtype}, expected {want.dtype}"
        for (k, got), want in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(template), strict=True)
        if np.asarray(got).dtype != want.dtype
    ]
    if wrong:
        raise UserError(f"{path}: damaged int8 checkpoint: " + "; ".join(wrong[:3]))
    return quantized_apply(model), tree, meta


def read_jax_weights(source: str | Path) -> dict[str, np.ndarray]:
    """A torch-named state_dict of a JAX run folder or ``.msgpack`` checkpoint (the JAX layer's
    :data:`~jaxvgg.core.weights.WeightReader`; ``.pth`` files need :func:`jaxvgg.tools.weights.read_weights`).
    The kernels are read-only views in torch's layout: copy before changing one."""
    path = weights_file(source)
    if path.suffix != ".msgpack":
        raise UserError(f"{path}: not a JAX checkpoint; reading {path.suffix} files needs jaxvgg.tools.weights")
    _, variables, meta = load_variables(path.parent, path.name)
    options = size_options(meta["model"], meta["image_size"])
    return flax_to_torch(meta["model"], variables, contiguous=False, **options)  # every reader copies

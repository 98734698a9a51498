"""Checkpoints: one msgpack file holding the state pytree and a JSON header, written atomically.

The file is written through :func:`jaxvgg.atomic.atomic_write` (a temporary file renamed over
the target), so a crash, Ctrl-C or full disk while saving leaves the previous good checkpoint
in place. Orbax would add async and
multi-host sharded saving; for one replicated state per process a single atomic file is
simpler, starts faster and is all we need (process 0 writes, see the scale issue).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from jaxvgg.atomic import write_bytes
from jaxvgg.errors import UserError, WeightMismatchError

# 2: the first FC layer after a flatten reads torch's CHW order (1 had HWC rows, which load
# without a shape error but compute something else, so they are refused by name).
FORMAT = "jaxvgg-checkpoint-2"


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

"""A pruned model's weights, stored compactly, and the per-layer sparsity table (both frameworks).

Weights come as torch-named numpy state_dicts, so the file and the table are the same whichever
framework pruned the model. Each kernel is stored as a packed bit-mask plus its non-zero values
(1 bit per weight + 32 per kept one: ~73% of the dense size at 30% sparsity), in a ``.npz``.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping

import numpy as np

SPARSE_BEST = "best.sparse.npz"  # a pruned run's best weights in the compact form


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    name: str  # torch module name, e.g. "features.0"
    size: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size


def sparsity(state_dict: Mapping[str, np.ndarray]) -> list[LayerSparsity]:
    """Zeros in every conv/linear kernel (the ``weight`` entries with 2 or more dimensions)."""
    return [
        LayerSparsity(key.removesuffix(".weight"), int(np.size(w)), int((np.asarray(w) == 0).sum()))
        for key, w in state_dict.items()
        if key.endswith(".weight") and np.ndim(w) >= 2
    ]


def format_sparsity(rows: list[LayerSparsity]) -> str:
    lines = [f"{'layer':<16}{'weights':>14}{'zeros':>14}{'sparsity':>10}"]
    lines += [f"{r.name:<16}{r.size:>14,}{r.zeros:>14,}{r.sparsity:>10.1%}" for r in rows]
    size, zeros = sum(r.size for r in rows), sum(r.zeros for r in rows)
    lines.append(f"{'total':<16}{size:>14,}{zeros:>14,}{zeros / max(size, 1):>10.1%}")
    return "\n".join(lines)


def compact_bytes(state_dict: Mapping[str, np.ndarray]) -> bytes:
    """The ``.npz`` bytes of ``state_dict`` with every kernel as a bit-mask plus its non-zeros."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        a = np.asarray(value)
        if a.ndim < 2:
            arrays[key] = a
            continue
        nz = a != 0
        arrays[f"{key}@shape"] = np.array(a.shape)
        arrays[f"{key}@mask"] = np.packbits(nz.ravel())
        arrays[f"{key}@values"] = a[nz]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def from_compact_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`compact_bytes`."""
    with np.load(io.BytesIO(data)) as z:
        stored = {k: z[k] for k in z.files}
    out: dict[str, np.ndarray] = {}
    for key, value in stored.items():
        name, _, part = key.rpartition("@")
        if not name:
            out[key] = value
        elif part == "shape":
            shape = tuple(int(s) for s in value)
            nz = np.unpackbits(stored[f"{name}@mask"], count=int(np.prod(shape))).astype(bool)
            dense = np.zeros(nz.size, stored[f"{name}@values"].dtype)
            dense[nz] = stored[f"{name}@values"]
            out[name] = dense.reshape(shape)
    return out

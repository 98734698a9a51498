"""The torch half of ``scripts/quantize.py``: a float run's best model as an int8 checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from torchref.checkpoint import BEST, INT8_BEST, load_model, save_int8
from torchref.compress import quantize_int8
from torchref.data import normalize_uint8


def write_int8(run_dir: str | Path, images: np.ndarray, out_dir: Path, batch_size: int = 32) -> tuple[Path, Path]:
    """Quantize ``run_dir``'s best model with FX graph mode, its activations calibrated on
    ``images`` (uint8 NHWC), into ``out_dir``; returns (the float file, the int8 file)."""
    model, meta = load_model(run_dir)
    batches = [
        normalize_uint8(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    save_int8(out_dir / INT8_BEST, quantize_int8(model, batches), meta)
    return Path(run_dir) / BEST, out_dir / INT8_BEST

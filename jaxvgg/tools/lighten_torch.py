"""The torch half of the lighten table (see :mod:`jaxvgg.tools.lighten`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jaxvgg.core.sparse import SPARSE_BEST
from jaxvgg.tools.lighten import Measurement, Variant, measure
from torchref.checkpoint import BEST, load_model
from torchref.compress import quantize_int8
from torchref.data import normalize_uint8


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised NCHW, what ToTensor + Normalize give."""
    return normalize_uint8(torch.from_numpy(np.ascontiguousarray(images)))


def torch_row(
    variant: Variant, test: tuple, calibration: np.ndarray, macs: int, out_dir: Path, repeats: int = 5
) -> Measurement:
    model, _ = load_model(variant.run, BEST, "cpu")
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    file_path = Path(variant.run) / (SPARSE_BEST if variant.kind == "pruned" else BEST)
    if variant.kind == "int8":
        model = quantize_int8(model, [to_tensor(calibration[i : i + 32]) for i in range(0, len(calibration), 32)])
        file_path = out_dir / f"{Path(variant.run).name}-int8.pth"
        torch.save(model.state_dict(), file_path)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(to_tensor(x)).numpy()

    return measure(variant, "PyTorch", run, test, n_params, nonzero, macs, file_path, repeats)

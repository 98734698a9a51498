"""Prediction from a PyTorch run folder, with the same interface as :func:`jaxvgg.predict.jax_predictor`."""

from __future__ import annotations

import os

import numpy as np
import torch

from jaxvgg.core.calibration import CalibratedPredictor, load_calibration
from torchref.checkpoint import load_model
from torchref.data import normalize_uint8
from torchref.device import pick_device


def torch_predictor(
    run_dir: str | os.PathLike, batch_size: int = 32, device: str | None = None
) -> tuple[CalibratedPredictor, list[str]]:
    """``device``: as ``train_torch.py --device`` (default MPS, then CUDA, then CPU)."""
    dev = pick_device(device)
    model, meta = load_model(run_dir, device=dev)

    def logits(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(dev)
                out.append(model(normalize_uint8(x)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, meta["num_classes"]), np.float32)

    return CalibratedPredictor(logits, load_calibration(run_dir)), meta["classes"]

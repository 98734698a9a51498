"""Prediction from a PyTorch run folder, with the same interface as :func:`jaxvgg.predict.jax_predictor`."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

from jaxvgg.core.calibration import CalibratedPredictor, load_calibration
from jaxvgg.core.config import run_quantization
from torchref.checkpoint import load_int8, load_model
from torchref.data import normalize_uint8
from torchref.device import pick_device


def inference_model(run_dir: str | os.PathLike, device: str | None = None) -> tuple[nn.Module, dict, torch.device]:
    """(model, meta, the device it runs on) of a run folder: the best checkpoint's on ``device``,
    or an int8 run's on the CPU, where its kernels (fbgemm/x86) are."""
    if run_quantization(run_dir) == "int8":
        if device and pick_device(device).type != "cpu":  # a bad --device is still refused
            print(f"{run_dir}: an int8 model runs on the CPU (fbgemm/x86 kernels), not on {device}", file=sys.stderr)
        model, meta = load_int8(run_dir)
        return model, meta, torch.device("cpu")
    dev = pick_device(device)
    model, meta = load_model(run_dir, device=dev)
    return model, meta, dev


def torch_predictor(
    run_dir: str | os.PathLike, batch_size: int = 32, device: str | None = None
) -> tuple[CalibratedPredictor, list[str]]:
    """``device``: as ``train_torch.py --device`` (default MPS, then CUDA, then CPU)."""
    model, meta, dev = inference_model(run_dir, device)

    def logits(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(dev)
                out.append(model(normalize_uint8(x)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, meta["num_classes"]), np.float32)

    return CalibratedPredictor(logits, load_calibration(run_dir)), meta["classes"]

"""Prediction from a PyTorch run folder, with the same interface as :func:`jaxvgg.predict.jax_predictor`."""

from __future__ import annotations

import os

import numpy as np
import torch

from jaxvgg.core.images import Predictor
from torchref.checkpoint import load_model
from torchref.data import normalize_uint8


def torch_predictor(run_dir: str | os.PathLike, batch_size: int = 32) -> tuple[Predictor, list[str]]:
    model, meta = load_model(run_dir)

    def predict(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = normalize_uint8(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
                out.append(torch.softmax(model(x), 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, meta["num_classes"]), np.float32)

    return predict, meta["classes"]

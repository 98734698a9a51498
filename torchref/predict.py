"""Prediction from a PyTorch run folder, with the same interface as :func:`jaxvgg.predict.jax_predictor`."""

from __future__ import annotations

import os

import numpy as np
import torch

from jaxvgg.core.images import Predictor
from jaxvgg.core.transforms import IMAGENET_MEAN, IMAGENET_STD
from torchref.checkpoint import load_model


def torch_predictor(run_dir: str | os.PathLike, batch_size: int = 32) -> tuple[Predictor, list[str]]:
    model, meta = load_model(run_dir)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def predict(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).float() / 255.0
                out.append(torch.softmax(model((x - mean) / std), 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, meta["num_classes"]), np.float32)

    return predict, meta["classes"]

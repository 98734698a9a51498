"""Device choice as the tutorial makes it: Apple MPS, then CUDA, then the CPU."""

from __future__ import annotations

import torch

from jaxvgg.core.errors import UserError


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        kind = requested.split(":")[0]
        if kind not in available:
            raise UserError(f"--device {requested!r}: choose cpu, cuda or mps")
        if not available[kind]:
            raise UserError(f"--device {requested}: not available on this machine")
        return torch.device(requested)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")

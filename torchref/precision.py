"""Mixed precision and GPU layout for the torch side: ``--precision bf16`` is autocast to bfloat16
(float32 weights, optimizer and loss reduction), and on CUDA channels_last with cudnn.benchmark."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and x.dim() == 4:
        return x.to(device, memory_format=torch.channels_last, non_blocking=True)
    return x.to(device)

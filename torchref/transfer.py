"""Transfer learning on the torch side: the same starting weights and freezing rules as jaxvgg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from jaxvgg.core.errors import WeightMismatchError
from jaxvgg.core.freeze import IsFrozen
from jaxvgg.core.weights import WeightReader, describe_load, fit_weights
from torchref.checkpoint import read_torch_weights


def load_starting_weights(
    model: nn.Module, name: str, source: str | Path, replace_head: bool, read_weights: WeightReader = read_torch_weights
) -> str:
    """Load every entry ``source`` provides into ``model``; returns the report line(s)."""
    sd = read_weights(source)
    current = model.state_dict()
    try:
        loaded, notes = fit_weights(sd, {k: tuple(v.shape) for k, v in current.items()}, name, replace_head)
    except WeightMismatchError as e:
        raise WeightMismatchError(f"{source}: {e}") from e
    model.load_state_dict({**current, **{k: torch.from_numpy(np.array(v)) for k, v in loaded.items()}})
    return describe_load(source, loaded, notes)


def freeze(model: nn.Module, is_frozen: IsFrozen | None) -> list[nn.Module]:
    """``requires_grad=False`` on frozen parameters; returns the frozen BatchNorm layers."""
    if is_frozen is None:
        return []
    for name, p in model.named_parameters():
        if is_frozen(name.rpartition(".")[0]):
            p.requires_grad_(False)
    return [m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and is_frozen(n)]


def train_mode(model: nn.Module, frozen_batchnorm: list[nn.Module]) -> None:
    """``model.train()``, except that frozen BatchNorm layers keep using (and keeping) running statistics."""
    model.train()
    for m in frozen_batchnorm:
        m.eval()

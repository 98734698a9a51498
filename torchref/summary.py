"""Rows of the torchsummary-style table for a torch model (formatting is shared with jaxvgg)."""

from __future__ import annotations

import torch
from torch import nn

from jaxvgg.core.summary import Row, Summary, layer_macs


def torch_summary(model: nn.Module, image_size: int) -> Summary:
    rows: list[Row] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def record(module: nn.Module, inputs, output) -> None:
        own = list(module.parameters(recurse=False))
        trainable = sum(p.numel() for p in own if p.requires_grad)
        frozen = sum(p.numel() for p in own if not p.requires_grad)
        weight = getattr(module, "weight", None)
        kind = type(module).__name__
        shape = tuple(output.shape)
        rows.append(
            Row(
                kind,
                names[module],
                shape,
                trainable,
                frozen,
                layer_macs(kind, weight.numel() if weight is not None else 0, shape),
            )
        )

    for module in model.modules():
        if not list(module.children()) and module is not model and not isinstance(module, nn.Identity):
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Summary(rows, (3, image_size, image_size))

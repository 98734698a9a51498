"""Grad-CAM for a torch model, with the same interface as :mod:`jaxvgg.explain`: a forward hook
keeps the explained module's output, ``torch.autograd.grad`` differentiates a class logit with
respect to it, and :mod:`jaxvgg.core.gradcam` does the rest."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from jaxvgg.core.gradcam import Explainer, cam_layer, grad_cam
from torchref.checkpoint import load_model
from torchref.data import normalize_uint8
from torchref.device import pick_device


def gradcam_inputs(
    model: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(A, dlogit/dA) at module ``layer`` of ``model`` (in eval mode) for NCHW ``x``, as NHWC numpy arrays.

    Summing the chosen logits over the batch gives each image's own gradient (in eval mode no
    image's logits depend on another's).
    """
    kept: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _inputs, out: kept.append(out))
    try:
        with torch.enable_grad():
            # Inputs that need a gradient keep a graph even where every weight is frozen.
            logits = model(x.detach().requires_grad_(True))
            (acts,) = kept
            (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)
    finally:
        handle.remove()
    nhwc = lambda t: t.detach().permute(0, 2, 3, 1).float().cpu().numpy()
    return nhwc(acts), nhwc(grads)


def torch_explain(model: nn.Module, name: str, device: torch.device, batch_size: int = 16) -> Explainer:
    """The Grad-CAM :data:`~jaxvgg.core.gradcam.Explainer` of zoo model ``name`` (a torch module on ``device``)."""
    layer = cam_layer(name)

    def explain(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        maps = []
        for i in range(0, len(images), batch_size):
            x = normalize_uint8(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device))
            t = torch.as_tensor(np.asarray(targets[i : i + batch_size]), dtype=torch.long, device=device)
            maps.append(grad_cam(*gradcam_inputs(model, layer, x, t), images.shape[1:3]))
        return np.concatenate(maps) if maps else np.zeros(images.shape[:3], np.float32)

    return explain


def torch_explainer(run_dir: str | os.PathLike, device: str | None = None) -> tuple[Explainer, list[str]]:
    """Grad-CAM with the best model of a PyTorch run (on ``device``, as ``predict.py --device``), and its classes."""
    dev = pick_device(device)
    model, meta = load_model(run_dir, device=dev)
    return torch_explain(model, meta["model"], dev), meta["classes"]

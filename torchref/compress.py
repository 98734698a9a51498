"""Pruning, int8 quantization and distillation on the torch side, as the tutorial does them."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_model(model: nn.Module, amount: float, scope: str = "layer") -> None:
    """``l1_unstructured`` per layer or ``global_unstructured``; the masks stay attached (forward
    hooks compute ``weight = weight_orig * weight_mask``), so fine-tuning keeps pruned weights at 0."""
    targets = prunable(model)
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module, name in targets:
            prune.l1_unstructured(module, name, amount)


def add_pruning_slots(model: nn.Module) -> None:
    """Empty masks (``prune.identity``), so that a pruned run's checkpoint loads into ``model``."""
    for module, name in prunable(model):
        prune.identity(module, name)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with masks applied (``weight`` instead of ``weight_orig`` + ``weight_mask``)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("weight_mask"):
            continue
        if key.endswith("weight_orig"):
            key = key.removesuffix("_orig")
            value = value * model.state_dict()[key + "_mask"]
        out[key] = value
    return out


def numpy_state_dict(model: nn.Module) -> dict[str, np.ndarray]:
    """:func:`plain_state_dict` as numpy arrays: what the framework-neutral sparsity tools take."""
    return {k: v.detach().cpu().numpy() for k, v in plain_state_dict(model).items()}


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.7,
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y), batch means."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def _prepare_int8(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` (a copy, on the CPU) with fbgemm/x86 observers inserted by FX's ``prepare_fx``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = "x86"
    return prepare_fx(copy.deepcopy(model).cpu().eval(), get_default_qconfig_mapping("x86"), (example,))


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """Post-training static int8 quantization (x86/fbgemm kernels; CPU only).

    FX graph mode (``prepare_fx``/``convert_fx``): it quantizes our Sequential-built models
    without hand-placed QuantStubs, and it runs on torch 2.14 as shipped. Its successor, PT2E
    in torchao, is a separate package outside our pinned dependencies. torch.ao.quantization
    announces its deprecation on every call; those warnings are silenced here.
    """
    from torch.ao.quantization.quantize_fx import convert_fx

    batches = list(calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = _prepare_int8(model, batches[0])
        with torch.no_grad():
            for x in batches:
                prepared(x)
        return convert_fx(prepared)


def int8_structure(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The module :func:`quantize_int8` makes of ``model``, uncalibrated: what a saved int8
    state_dict (int8 weights, scales and zero points) loads into.

    A converted FX module is a generated graph, not a class a state_dict could be poured into;
    the same prepare/convert on the same architecture builds the same graph and names, so a
    state_dict saved from one loads strictly into the other (checked by the tests).
    """
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation, and the observers that saw no data
        return convert_fx(_prepare_int8(model, example))

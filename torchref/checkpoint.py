"""torchref's checkpoint files: ``best.pth`` (weights + meta), ``last.pth`` (everything a resume needs).

Every file goes through :mod:`torchref.torchfile` (``weights_only=True`` reads, atomic writes).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchref
from jaxvgg.core.errors import UserError
from jaxvgg.core.meta import check_meta, check_resume_meta
from jaxvgg.core.run import INT8_CHECKPOINTS
from jaxvgg.core.specs import size_options
from jaxvgg.core.weights import StateDict, weights_file
from torchref.compress import int8_structure, plain_state_dict
from torchref.torchfile import load_torch_file, save_torch_file

LAST, BEST = "last.pth", "best.pth"
INT8_BEST = INT8_CHECKPOINTS["torch"]  # an int8 run folder's model (scripts/quantize.py)


def save_best(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    save_torch_file(path, {"model": plain_state_dict(model), "meta": meta})


def save_last_state(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, meta: dict[str, Any]) -> None:
    """Model, optimizer, scheduler and torch's RNG, with the run's progress in ``meta``."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "meta": meta,
    }
    save_torch_file(path, state)


def _checkpoint(path: Path, device: str | torch.device) -> tuple[dict, dict[str, Any], nn.Module]:
    """(the file's contents, its checked meta, the float model it describes) of a torchref checkpoint."""
    if not path.exists():
        raise UserError(f"{path}: checkpoint does not exist")
    ckpt = load_torch_file(path, map_location=device)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path}: not a torchref checkpoint (expected a model state_dict and its meta)")
    meta = check_meta(ckpt.get("meta"), path)
    options = size_options(meta["model"], meta["image_size"])
    return ckpt, meta, torchref.create_model(meta["model"], meta["num_classes"], **options)


def _load_weights(model: nn.Module, state: Any, path: Path, name: str) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, ValueError, KeyError) as e:
        raise UserError(f"{path}: checkpoint does not fit {name}: {str(e).splitlines()[0]}") from e


def load_model(run_dir: str | Path, which: str = BEST, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    path = Path(run_dir) / which
    ckpt, meta, model = _checkpoint(path, device)
    _load_weights(model, ckpt["model"], path, meta["model"])
    return model.to(device).eval(), meta


def save_int8(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """An int8 model of :func:`torchref.compress.quantize_int8`: its state_dict (int8 weights with
    their per-channel scales, the activations' scales and zero points), as plain tensors."""
    save_torch_file(path, {"model": model.state_dict(), "meta": {**meta, "quantization": "int8"}})


def load_int8(run_dir: str | Path) -> tuple[nn.Module, dict]:
    """(int8 model, meta) of an int8 run folder; the model runs on the CPU only (fbgemm/x86 kernels)."""
    path = Path(run_dir) / INT8_BEST
    with warnings.catch_warnings():  # torch's deprecation notices for the quantized tensors it reads
        warnings.simplefilter("ignore")
        ckpt, meta, model = _checkpoint(path, "cpu")
    if meta.get("quantization") != "int8":
        raise UserError(f"{path}: not an int8 checkpoint")
    example = torch.zeros(1, 3, meta["image_size"], meta["image_size"])
    qmodel = int8_structure(model, example)
    _load_weights(qmodel, ckpt["model"], path, f"{meta['model']} (int8)")
    return qmodel.eval(), meta


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping the kernels the optimizer was built with.

    A saved state carries its param groups' settings, ``fused`` among them, so a checkpoint of a
    run on the default kernels (older runs, another device) would quietly switch them back; the
    fused kernels also want each ``step`` as float32 on its weight's device.
    """
    optimizer.load_state_dict(state)
    fused = optimizer.defaults.get("fused")
    for group in optimizer.param_groups:
        group["fused"] = fused
    if fused:
        for param, param_state in optimizer.state.items():
            if "step" in param_state:
                param_state["step"] = param_state["step"].to(torch.float32).to(param.device)


def restore_last(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, name: str, device: torch.device
) -> dict[str, Any]:
    """Pour ``last.pth`` into the model, optimizer, scheduler and torch's RNG; returns its meta."""
    ckpt = load_torch_file(path, map_location=device)
    try:
        meta = ckpt["meta"]
        if meta["model"] != name:
            raise UserError(f"{path}: checkpoint is for {meta['model']}, not {name}")
        model.load_state_dict(ckpt["model"])
        load_optimizer_state(optimizer, ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"].cpu())
        check_resume_meta(meta, path)
        if not isinstance(meta.get("step"), int):
            raise KeyError("step")
    except UserError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a resumable torchref checkpoint ({type(e).__name__}: {e})") from e
    return meta


def read_torch_weights(source: str | Path) -> StateDict:
    """A torch-named state_dict of a ``.pth`` file or a torch run folder (torchref's
    :data:`~jaxvgg.core.weights.WeightReader`; JAX run folders need :func:`jaxvgg.tools.weights.read_weights`)."""
    path = weights_file(source)
    if path.suffix != ".pth":
        raise UserError(f"{path}: not a PyTorch file; reading {path.suffix} files needs jaxvgg.tools.weights")
    obj = load_torch_file(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
    return {k.removeprefix("module."): v.detach().cpu().numpy() for k, v in obj.items()}

"""Reading and writing ``.pth`` files safely: the one place the project calls ``torch.load``.

``torch.load`` with ``weights_only=False`` unpickles arbitrary objects, so a shared run folder
could run code on the machine that opens it. Every ``.pth`` is read here with
``weights_only=True``: tensors, numbers, strings, lists and dicts only (our checkpoints hold
nothing else; torch's RNG state is a uint8 tensor).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from jaxvgg.core.atomic import atomic_write
from jaxvgg.core.errors import UserError


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """The contents of a ``.pth`` file, refusing anything that is not plain weights."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests retrying with weights_only=False, which is exactly what must not happen.
        raise UserError(
            f"{path}: not a plain weights file (it holds Python objects other than tensors, numbers, strings "
            "and dicts, which could run code); refused"
        ) from e
    except Exception as e:  # a damaged or truncated file fails in many ways inside torch
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise UserError(f"{path}: damaged or not a PyTorch file ({type(e).__name__}: {first})") from e


def save_torch_file(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` through :func:`jaxvgg.core.atomic.atomic_write`."""
    path = Path(path)
    return atomic_write(path, lambda f: torch.save(obj, f))

"""torchref: the PyTorch reference for jaxvgg — the tutorial's models and training loop.

Importing this package loads nothing: ``torchref.create_model`` and ``torchref.list_models`` load
the models (and torchvision, ~2 s of which is torch._dynamo) on first use, so a JAX run that only
reads a ``.pth`` through ``torchref.checkpoint`` imports torch alone.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["create_model", "list_models"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("torchref.models"), name)
    raise AttributeError(f"module 'torchref' has no attribute {name!r}")

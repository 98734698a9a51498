"""jaxvgg: the potato-leaf VGG-16 classifier in functional JAX/Flax, with a PyTorch twin in ``torchref``.

Layers (docs/architecture.md): ``jaxvgg.core`` imports neither framework, ``jaxvgg`` itself is
the JAX layer, ``torchref`` the torch layer, ``jaxvgg.tools`` the one place both meet.
Importing this package loads nothing: ``jaxvgg.create_model`` and friends load the JAX layer on
first use, so ``import jaxvgg.core.errors`` (what torchref does) never pulls in JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["count_params", "create_model", "init_variables", "list_models"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("jaxvgg.models"), name)
    raise AttributeError(f"module 'jaxvgg' has no attribute {name!r}")

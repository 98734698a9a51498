"""torchref: the PyTorch reference for jaxvgg — the tutorial's models and training loop."""

from torchref.models import create_model, list_models

__all__ = ["create_model", "list_models"]

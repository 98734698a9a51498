"""jaxvgg: the potato-leaf VGG-16 classifier in functional JAX/Flax, with a PyTorch twin in ``torchref``."""

from jaxvgg.models import count_params, create_model, init_variables, list_models

__all__ = ["count_params", "create_model", "init_variables", "list_models"]
__version__ = "0.1.0"

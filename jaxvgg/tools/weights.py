"""Weights across frameworks: one reader for any ``.pth``/``.msgpack`` file or run folder.

This is the reader both training commands hand their framework (``--pretrained``, ``--init-from``,
``--teacher``): a JAX run can start from torchvision's ``.pth`` and a torch run from a JAX run.
Each framework is imported only when a file of its kind is met.
"""

from __future__ import annotations

from pathlib import Path

from jaxvgg.core.errors import UserError
from jaxvgg.core.weights import StateDict, weights_file


def read_weights(source: str | Path) -> StateDict:
    """A torch-named state_dict from a ``.pth``/``.msgpack`` file or a run folder of either framework."""
    path = weights_file(source)
    if path.suffix == ".msgpack":
        from jaxvgg.train.checkpoint import read_jax_weights

        return read_jax_weights(path)
    try:
        from torchref.checkpoint import read_torch_weights
    except ImportError as e:
        raise UserError(f"{path}: reading .pth files needs PyTorch (pip install -e '.[torch]')") from e
    return read_torch_weights(path)

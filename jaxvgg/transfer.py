"""Transfer learning in JAX: Flax variables started from another model's weights, and freezing labels.

Weights arrive as torch-named numpy state_dicts from a :data:`jaxvgg.core.weights.WeightReader`
(JAX run folders by default; :func:`jaxvgg.tools.weights.read_weights` also reads ``.pth``
files). Which layers freeze is decided by :mod:`jaxvgg.core.freeze`, the same for both frameworks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxvgg.convert import flax_path_to_torch, flax_to_torch, torch_to_flax
from jaxvgg.core.errors import WeightMismatchError
from jaxvgg.core.freeze import IsFrozen, head_module
from jaxvgg.core.weights import WeightReader, describe_load, fit_weights


def starting_variables(
    name: str,
    variables: Mapping[str, Any],
    source: str | Path,
    replace_head: bool,
    read_weights: WeightReader,
    **options: Any,
) -> tuple[dict[str, Any], str]:
    """Flax ``variables`` with every entry that ``source`` provides; plus the report line(s)."""
    sd = read_weights(source)
    template = flax_to_torch(name, variables, contiguous=False, **options)
    try:
        loaded, notes = fit_weights(sd, {k: v.shape for k, v in template.items()}, name, replace_head)
    except WeightMismatchError as e:
        raise WeightMismatchError(f"{source}: {e}") from e
    num_classes = int(np.shape(template[head_module(name) + ".weight"])[0])
    merged = torch_to_flax(name, {**template, **loaded}, num_classes, **options)
    return merged, describe_load(source, loaded, notes)


def param_labels(params: Any, is_frozen: IsFrozen | None) -> Any:
    """A pytree like ``params`` of ``"frozen"``/``"trainable"``, for ``optax.multi_transform``."""

    def label(path, _leaf) -> str:
        module = flax_path_to_torch(tuple(k.key for k in path[:-1]))
        return "frozen" if is_frozen is not None and is_frozen(module) else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)

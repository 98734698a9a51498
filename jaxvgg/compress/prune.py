"""Magnitude (L1) pruning of conv and linear weights, with masks that keep pruned weights at zero.

Semantics are ``torch.nn.utils.prune``'s: ``l1_unstructured`` zeroes the ``round(amount * n)``
weights of smallest magnitude in each layer; ``global_unstructured`` ranks all layers' weights
together. Biases and BatchNorm parameters are not pruned (as in the tutorial).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvgg.core.errors import UserError

SCOPES = ("layer", "global")


def _is_weight(path: tuple[Any, ...]) -> bool:
    return path[-1].key == "kernel"


def _prune_count(amount: float, n: int) -> int:
    if not 0.0 <= amount <= 1.0:
        raise UserError(f"--amount {amount}: must be a fraction between 0 and 1")
    return round(amount * n)  # torch's _compute_nparams_toprune for a float amount


def _smallest(weights: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask (True = keep) zeroing the k entries of smallest magnitude."""
    keep = np.ones(weights.size, bool)
    if k:
        keep[np.argpartition(np.abs(weights).ravel(), k - 1)[:k]] = False
    return keep.reshape(weights.shape)


def l1_masks(params: Any, amount: float, scope: str = "layer") -> Any:
    """A pytree like ``params``: boolean keep-masks for every conv/linear kernel, None elsewhere."""
    if scope not in SCOPES:
        raise UserError(f"--scope {scope!r}: choose one of {', '.join(SCOPES)}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    weights = {i: np.asarray(leaf) for i, (path, leaf) in enumerate(flat) if _is_weight(path)}
    masks: dict[int, np.ndarray] = {}
    if scope == "layer":
        masks = {i: _smallest(w, _prune_count(amount, w.size)) for i, w in weights.items()}
    else:
        everything = np.concatenate([np.abs(w).ravel() for w in weights.values()])
        keep = _smallest(everything, _prune_count(amount, everything.size))
        offset = 0
        for i, w in weights.items():
            masks[i] = keep[offset : offset + w.size].reshape(w.shape)
            offset += w.size
    return jax.tree_util.tree_unflatten(treedef, [masks.get(i) for i in range(len(flat))])


def apply_masks(params: Any, masks: Any) -> Any:
    return jax.tree.map(lambda p, m: p if m is None else p * m.astype(p.dtype), params, masks, is_leaf=_none_leaf)


def keep_zeros() -> optax.GradientTransformation:
    """Zeroes the updates of weights that are exactly 0, so pruned weights stay 0 while fine-tuning.

    The mask is the pruned weights' zero pattern itself, so it survives checkpoints and resumes
    without being stored (a trained weight landing on exactly 0.0 would freeze too; in float32
    that does not happen in practice). Chain it last, after the optimizer.
    """

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("keep_zeros needs the parameters")
        return jax.tree.map(lambda u, p: jnp.where(p == 0, jnp.zeros_like(u), u), updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _none_leaf(x: Any) -> bool:
    return x is None

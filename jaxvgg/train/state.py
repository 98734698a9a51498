"""The training state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import optax

from jaxvgg.models import Variables


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key data; dropout keys are folded from it per step
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @property
    def variables(self) -> Variables:
        out: Variables = {"params": self.params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


def create_train_state(
    model: nn.Module,
    variables: Variables,
    tx: optax.GradientTransformation,
    seed: int = 0,
    apply_fn: Callable | None = None,
) -> TrainState:
    """``apply_fn`` defaults to ``model.apply`` (see :mod:`jaxvgg.train.freeze` for a wrapped one)."""
    params = variables["params"]
    return TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        # One compiled program: run eagerly, optax's zeros compile one small program per leaf shape
        # (vgg16: 2.9 s of a 6.3 s trainer build, docs/performance.md).
        opt_state=jax.jit(tx.init)(params),
        rng=jax.random.key_data(jax.random.key(seed + 1)),
        apply_fn=apply_fn or model.apply,
        tx=tx,
    )

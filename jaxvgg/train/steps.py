"""Pure, jit-compiled train and eval steps: ``(state, batch) -> (state, metrics)``.

A batch is ``{"image": uint8 NHWC, "label": int32, "weight": float32}``; images are
normalised here, on the device. Metrics are sums (loss, correct, count) so that epoch
averages are exact whatever the batch sizes and padding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxvgg.data.normalize import normalize
from jaxvgg.models.layers import at_least_float32
from jaxvgg.parallel import DataParallel
from jaxvgg.train.optim import apply_gradients
from jaxvgg.train.state import TrainState

Batch = dict[str, jax.Array]


def cross_entropy(
    logits: jax.Array, labels: jax.Array, weight: jax.Array, class_weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(mean loss, mean loss x examples), like ``nn.CrossEntropyLoss(weight=class_weights)``.

    ``weight`` is 1 for real examples and 0 for padding. With ``class_weights`` each example's loss
    is scaled by its class's weight and the mean is taken over the summed weights, as torch does.
    The second value is what the epoch's running sums add up (torch's ``loss.item() * len(y)``).
    """
    per_example = optax.softmax_cross_entropy_with_integer_labels(at_least_float32(logits), labels)
    w = weight if class_weights is None else weight * jnp.asarray(class_weights, jnp.float32)[labels]
    total_w = jnp.sum(w)
    mean = jnp.sum(per_example * w) / jnp.where(total_w > 0, total_w, 1.0)
    return mean, mean * jnp.sum(weight)


def _metrics(logits: jax.Array, batch: Batch, loss_sum: jax.Array) -> dict[str, jax.Array]:
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32) * batch["weight"]
    return {"loss_sum": loss_sum, "correct": jnp.sum(correct), "count": jnp.sum(batch["weight"])}


# (logits, batch, normalised images, aux) -> (the mean loss to minimise, loss x examples for the
# epoch sums). ``aux`` is whatever else the loss reads, passed to every step: a teacher's variables.
LossFn = Callable[[jax.Array, Batch, jax.Array, Any], tuple[jax.Array, jax.Array]]


def cross_entropy_loss(class_weights: Sequence[float] | None = None) -> LossFn:
    """The tutorial's loss, class-weighted like ``nn.CrossEntropyLoss(weight=...)`` when asked."""

    def loss(logits: jax.Array, batch: Batch, images: jax.Array, aux: Any) -> tuple[jax.Array, jax.Array]:
        return cross_entropy(logits, batch["label"], batch["weight"], class_weights)

    return loss


def train_step(
    state: TrainState, batch: Batch, aux: Any = None, *, loss_fn: LossFn
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on ``loss_fn``; bind ``loss_fn`` with :func:`functools.partial` before jit."""
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images = normalize(batch["image"])

    def objective(params: Any):
        variables = {"params": params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits, updates = state.apply_fn(
            variables, images, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
        loss, loss_sum = loss_fn(logits, batch, images, aux)
        return loss, (logits, loss_sum, updates.get("batch_stats", {}))

    grads, (logits, loss_sum, batch_stats) = jax.grad(objective, has_aux=True)(state.params)
    params, opt_state = apply_gradients(state.tx, grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, _metrics(logits, batch, loss_sum)


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    logits = state.apply_fn(state.variables, normalize(batch["image"]), train=False)
    _, loss_sum = cross_entropy(logits, batch["label"], batch["weight"])
    # Labels and weights come back with the logits: under a multi-host mesh they are the global batch.
    return {**_metrics(logits, batch, loss_sum), "logits": logits, "label": batch["label"], "weight": batch["weight"]}


def compile_steps(loss_fn: LossFn | None = None, parallel: DataParallel | None = None) -> tuple[Callable, Callable]:
    """The jitted ``train_step(state, batch, aux=None)`` and ``eval_step(state, batch)`` that
    training, ``bench.py`` and the tests all run: state replicated over ``parallel``'s devices (one
    device by default) and donated, batches sharded along its ``data`` axis."""
    par = parallel or DataParallel.create(1)
    step = functools.partial(train_step, loss_fn=loss_fn or cross_entropy_loss())
    compiled_train, compiled_eval = par.compile_steps(step, eval_step)

    def train(state: TrainState, batch: Batch, aux: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
        return compiled_train(state, batch, aux)

    return train, compiled_eval

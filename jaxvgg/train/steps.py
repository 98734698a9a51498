"""Pure, jit-compiled train and eval steps: ``(state, batch) -> (state, metrics)``.

A batch is ``{"image": uint8 NHWC, "label": int32, "weight": float32}``; images are
normalised here, on the device. Metrics are sums (loss, correct, count) so that epoch
averages are exact whatever the batch sizes and padding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxvgg.compress.distill import distillation_loss
from jaxvgg.data.normalize import normalize
from jaxvgg.models.layers import at_least_float32
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


def train_step(
    state: TrainState, batch: Batch, class_weights: jax.Array | None = None
) -> tuple[TrainState, dict[str, jax.Array]]:
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images = normalize(batch["image"])

    teacher_logits = None
    if state.teacher_apply is not None:  # once per batch, inside the compiled step
        teacher_logits = jax.lax.stop_gradient(state.teacher_apply(state.teacher, images, train=False))

    def loss_fn(params: Any):
        variables = {"params": params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits, updates = state.apply_fn(
            variables, images, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
        if teacher_logits is None:
            loss, loss_sum = cross_entropy(logits, batch["label"], batch["weight"], class_weights)
        else:
            d = state.distillation
            loss, loss_sum = distillation_loss(
                logits, teacher_logits, batch["label"], batch["weight"], d.temperature, d.alpha
            )
        return loss, (logits, loss_sum, updates.get("batch_stats", {}))

    grads, (logits, loss_sum, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, _metrics(logits, batch, loss_sum)


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    logits = state.apply_fn(state.variables, normalize(batch["image"]), train=False)
    _, loss_sum = cross_entropy(logits, batch["label"], batch["weight"])
    # Labels and weights come back with the logits: under a multi-host mesh they are the global batch.
    return {**_metrics(logits, batch, loss_sum), "logits": logits, "label": batch["label"], "weight": batch["weight"]}


def compile_steps(donate: bool = True):
    """The jitted steps; the train step donates the incoming state, so it is updated in place."""
    return jax.jit(train_step, donate_argnums=(0,) if donate else ()), jax.jit(eval_step)

"""Knowledge distillation (Hinton et al.): the student learns the teacher's softened outputs.

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The T^2 keeps the soft term's gradients on the scale of the hard term's as T changes.
:func:`distillation` is a loss for :func:`jaxvgg.train.steps.train_step`: the teacher's
variables come in as the step's ``aux`` argument (never part of the trained state), and the
teacher runs inside the compiled step, once per batch. Without augmentation a training image is
the same every epoch and so are the teacher's logits of it: :func:`distillation_from_logits`
looks them up by the batch's sample ``index`` in a table computed once (``aux``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxvgg.models.layers import at_least_float32


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    weight: jax.Array,
    temperature: float = 4.0,
    alpha: float = 0.7,
) -> tuple[jax.Array, jax.Array]:
    """(weighted mean, weighted sum) over the batch, like :func:`jaxvgg.train.steps.cross_entropy`."""
    s, t = at_least_float32(student_logits), at_least_float32(teacher_logits)
    log_p_student = jax.nn.log_softmax(s / temperature)
    log_p_teacher = jax.nn.log_softmax(t / temperature)
    kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    ce = optax.softmax_cross_entropy_with_integer_labels(s, labels)
    per_example = alpha * temperature**2 * kl + (1 - alpha) * ce
    total = jnp.sum(per_example * weight)
    return total / jnp.maximum(jnp.sum(weight), 1.0), total


def distillation(teacher_apply: Callable, temperature: float, alpha: float) -> Callable:
    """A ``LossFn`` (:mod:`jaxvgg.train.steps`) whose ``aux`` is the teacher's variables."""

    def loss(logits: jax.Array, batch: dict[str, jax.Array], images: jax.Array, teacher: Any):
        teacher_logits = jax.lax.stop_gradient(teacher_apply(teacher, images, train=False))
        return distillation_loss(logits, teacher_logits, batch["label"], batch["weight"], temperature, alpha)

    return loss


def distillation_from_logits(temperature: float, alpha: float) -> Callable:
    """A ``LossFn`` whose ``aux`` is the teacher's logits of every training image, by sample index."""

    def loss(logits: jax.Array, batch: dict[str, jax.Array], images: jax.Array, table: jax.Array):
        teacher_logits = jax.lax.stop_gradient(table[batch["index"]])
        return distillation_loss(logits, teacher_logits, batch["label"], batch["weight"], temperature, alpha)

    return loss

"""Knowledge distillation (Hinton et al.): the student learns the teacher's softened outputs.

loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The T^2 keeps the soft term's gradients on the scale of the hard term's as T changes. The
teacher runs inside the compiled train step (see :mod:`jaxvgg.train.steps`), once per batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxvgg.models.layers import at_least_float32


@dataclasses.dataclass(frozen=True)
class Distillation:
    temperature: float = 4.0
    alpha: float = 0.7


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

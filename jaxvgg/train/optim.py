"""Optimizers and learning-rate schedules with PyTorch's semantics, in optax.

Schedules are stepped per epoch like torch's ``CosineAnnealingLR``/``StepLR`` called once per
epoch: the rate is a function of ``step // steps_per_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import optax

from jaxvgg.core.config import OPTIMIZERS, SCHEDULES
from jaxvgg.core.errors import UserError


def epoch_lr(
    schedule: str,
    base_lr: float,
    epoch: int,
    epochs: int,
    step_size: int = 30,
    gamma: float = 0.1,
    eta_min: float = 0.0,
) -> float:
    """The learning rate during ``epoch`` (0-based), as torch's scheduler gives it."""
    if schedule == "cosine":
        return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2
    if schedule == "step":
        return base_lr * gamma ** (epoch // step_size)
    if schedule == "constant":
        return base_lr
    if schedule == "cosine_rebuilt":
        return eta_min + (base_lr - eta_min) * _rebuilt_factor(epochs) ** epoch
    raise UserError(f"--schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


def _rebuilt_factor(epochs: int) -> float:
    """The tutorial's optimized loop builds a new ``CosineAnnealingLR(T_max=epochs)`` every epoch
    and steps it once: each is at its first step, so the rate only ever takes the cosine's first
    step, (1 + cos(pi / T)) / 2 of itself (3e-4 -> 2.93e-4 over 100 epochs)."""
    return (1 + math.cos(math.pi / epochs)) / 2


def make_schedule(
    schedule: str,
    base_lr: float,
    epochs: int,
    steps_per_epoch: int,
    step_size: int = 30,
    gamma: float = 0.1,
    eta_min: float = 0.0,
) -> Callable:
    """``step -> lr`` for optax, constant within an epoch."""
    epoch_lr(schedule, base_lr, 0, epochs, step_size, gamma, eta_min)  # validates the name

    def lr(step):
        epoch = step // steps_per_epoch
        if schedule == "cosine":
            return eta_min + (base_lr - eta_min) * (1 + jnp.cos(jnp.pi * epoch / epochs)) / 2
        if schedule == "step":
            return base_lr * gamma ** (epoch // step_size)
        if schedule == "cosine_rebuilt":
            return eta_min + (base_lr - eta_min) * _rebuilt_factor(epochs) ** epoch
        return jnp.full((), base_lr, jnp.float32)

    return lr


def make_optimizer(
    name: str, learning_rate: Callable | float, weight_decay: float = 0.0, momentum: float = 0.9
) -> optax.GradientTransformation:
    """torch's optimizers:

    * ``adam``: ``torch.optim.Adam(weight_decay=wd)``, L2 added to the gradient *before* the moments;
    * ``adamw``: ``torch.optim.AdamW``, decay applied to the weights, decoupled from the moments;
    * ``sgd``: ``torch.optim.SGD(momentum=m, weight_decay=wd)`` (no dampening, no Nesterov).
    """
    decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    if name == "adam":
        parts = [*decay, optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)]
    elif name == "adamw":
        parts = [optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), *decay]
    elif name == "sgd":
        parts = [*decay, optax.trace(decay=momentum, nesterov=False)] if momentum else decay
    else:
        raise UserError(f"--optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))

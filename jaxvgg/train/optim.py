"""Optimizers and learning-rate schedules with PyTorch's semantics, in optax.

Schedules are stepped per epoch like torch's ``CosineAnnealingLR``/``StepLR`` called once per
epoch: the rate is a function of ``step // steps_per_epoch``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxvgg.core.config import OPTIMIZERS, SCHEDULES
from jaxvgg.core.errors import UserError
from jaxvgg.ops import native

B1, B2, EPS = 0.9, 0.999, 1e-8


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

    Adam and AdamW come with ``step`` (:class:`AdamWithStep`), one pass per weight on a CPU with the
    kernels built, the same arithmetic in jnp elsewhere.
    """
    decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    if name == "adam":
        parts = [*decay, optax.scale_by_adam(b1=B1, b2=B2, eps=EPS)]
    elif name == "adamw":
        parts = [optax.scale_by_adam(b1=B1, b2=B2, eps=EPS), *decay]
    elif name == "sgd":
        parts = [*decay, optax.trace(decay=momentum, nesterov=False)] if momentum else decay
    else:
        raise UserError(f"--optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    tx = optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))
    if name == "sgd":
        return tx
    return AdamWithStep(tx.init, tx.update, _adam_step(learning_rate, weight_decay, decoupled=name == "adamw"))


class AdamWithStep(NamedTuple):
    """optax's Adam chain (``init`` and ``update``: the state and what checkpoints hold), and ``step``,
    which computes what ``update`` then ``optax.apply_updates`` do, with torch's bias corrections, in
    one pass over each weight on a CPU (:func:`jaxvgg.ops.native.adam`; XLA:CPU makes three passes of
    optax's chain, docs/performance.md) and in jnp where the kernel does not apply."""

    init: optax.TransformInitFn
    update: optax.TransformUpdateFn
    step: Callable[[Any, optax.OptState, Any], tuple[Any, optax.OptState]]


def apply_gradients(tx: optax.GradientTransformation, grads: Any, opt_state: optax.OptState, params: Any):
    """(new params, new optimizer state): ``tx``'s ``step`` where it has one, else optax's update and
    apply. A wrapped optimizer (frozen layers: ``optax.multi_transform``) takes optax's way, whose
    float32 bias corrections differ from the step's by up to 1.3e-5 relative."""
    step = getattr(tx, "step", None)
    if step is not None:
        return step(grads, opt_state, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _adam_step(learning_rate: Callable | float, weight_decay: float, decoupled: bool) -> Callable:
    def step(grads: Any, opt_state: tuple, params: Any) -> tuple[Any, tuple]:
        # optax's chain state: the Adam moments and step count, an empty state for the decay, and
        # the schedule's step count last (an empty state for a constant rate).
        (adam_at,) = [i for i, s in enumerate(opt_state) if isinstance(s, optax.ScaleByAdamState)]
        adam_state, lr_state = opt_state[adam_at], opt_state[-1]
        count = optax.safe_increment(adam_state.count)
        if callable(learning_rate):
            lr = learning_rate(lr_state.count)
            lr_state = optax.ScaleByScheduleState(count=optax.safe_increment(lr_state.count))
        else:
            lr = learning_rate

        def one(w, g, mu, nu):
            # The bias corrections 1 - b^t to float32 rounding (torch computes them in double): optax's
            # 1 - b2**t in float32 is 1.3e-5 off at t = 1 (0.999f^t rounds), -expm1(t log b) is not.
            t = count.astype(w.dtype)
            corrections = [-jnp.expm1(t * math.log(b)) for b in (B1, B2)]
            values = (lr, B1, 1 - B1, B2, 1 - B2, EPS, weight_decay, *corrections)
            hyper = jnp.stack([jnp.asarray(v, w.dtype) for v in values])
            by_ops = functools.partial(_adam_by_ops, w, g, mu, nu, hyper, decoupled)
            return native.adam(w, g, mu, nu, hyper, decoupled, fallback=by_ops)

        leaves, treedef = jax.tree.flatten(params)
        others = (treedef.flatten_up_to(t) for t in (grads, adam_state.mu, adam_state.nu))
        columns = zip(*(one(*args) for args in zip(leaves, *others, strict=True)), strict=True)
        new_params, mu, nu = (treedef.unflatten(c) for c in columns)
        new_state = list(opt_state)
        new_state[adam_at] = optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
        new_state[-1] = lr_state
        return new_params, tuple(new_state)

    return step


def _adam_by_ops(w, g, mu, nu, hyper, decoupled: bool):
    """The kernel's arithmetic in jnp, for backends other than the CPU."""
    lr, b1, one_minus_b1, b2, one_minus_b2, eps, wd, bc1, bc2 = hyper
    g = g if decoupled else g + wd * w
    mu = one_minus_b1 * g + b1 * mu
    nu = one_minus_b2 * (g * g) + b2 * nu
    update = (mu / bc1) / (jnp.sqrt(nu / bc2) + eps) + (wd * w if decoupled else 0)
    return w - lr * update, mu, nu

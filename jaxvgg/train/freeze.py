"""Frozen layers in JAX: no updates, no optimizer state, BatchNorm in inference mode.

Freezing is a property of the optimizer and of how the model is applied, not of the model or
its parameters, so the model definitions stay untouched:

* the optimizer is ``optax.multi_transform`` of the real optimizer (trainable leaves) and
  ``optax.set_to_zero`` (frozen leaves, which therefore hold no Adam moments);
* ``apply`` is wrapped so that frozen BatchNorm layers normalise with their running statistics
  and do not update them, as ``module.eval()`` does on the torch side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import optax

from jaxvgg.convert import flax_path_to_torch
from jaxvgg.core.freeze import IsFrozen
from jaxvgg.models.layers import BatchNorm2d
from jaxvgg.transfer import param_labels


def freeze_optimizer(tx: optax.GradientTransformation, params: Any, is_frozen: IsFrozen | None):
    if is_frozen is None:
        return tx
    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, param_labels(params, is_frozen))


def frozen_batchnorm_apply(apply_fn: Callable, is_frozen: IsFrozen | None) -> Callable:
    """``apply_fn`` with frozen BatchNorm layers always in inference mode."""
    if is_frozen is None:
        return apply_fn

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name == "__call__"
            and isinstance(module, BatchNorm2d)
            and is_frozen(flax_path_to_torch(tuple(module.path)))
        ):
            if "train" in kwargs:
                kwargs = {**kwargs, "train": False}
            else:
                args = (args[0], False, *args[2:])
        return next_fun(*args, **kwargs)

    def apply(*args: Any, **kwargs: Any):
        with nn.intercept_methods(interceptor):
            return apply_fn(*args, **kwargs)

    return apply

"""XLA compiler options per kind of step and backend, passed to ``jax.jit(compiler_options=...)``.

On XLA:CPU, YNNPACK's fusions of dots make training faster and inference slower: with them off
for the eval step only, inference gained 1.1-2.1x (vgg16, vgg16_gap, vgg16_dsconv at 64-112 px)
while training needs them (0.53-0.84x without), and so do integer convolutions: an int8
vgg16_bn forward ran 11x slower without them. Measurements: docs/performance.md.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

# The XLA:CPU debug option and the value that turns YNNPACK's fusions off (an empty set of kinds).
NO_YNN_FUSIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def inference_options(platform: str | None = None, int8: bool = False) -> dict[str, Any]:
    """Compiler options for an inference (eval, predict) step on ``platform`` (default: JAX's
    backend): YNNPACK's fusions off on a CPU whose jaxlib knows the option, nothing elsewhere,
    and nothing for an int8 model (``int8``), whose integer convolutions need them."""
    platform = platform or jax.default_backend()
    if int8 or platform != "cpu" or not _cpu_knows(tuple(NO_YNN_FUSIONS.items())):
        return {}
    return dict(NO_YNN_FUSIONS)


@functools.cache
def _cpu_knows(options: tuple[tuple[str, Any], ...]) -> bool:
    """Whether this jaxlib's XLA:CPU takes ``options`` (an unknown option fails the compile)."""
    try:
        jax.jit(jnp.negative, compiler_options=dict(options)).lower(jnp.zeros(2)).compile()
    except Exception:
        return False
    return True

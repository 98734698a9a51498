"""JAX's persistent compilation cache, turned on by the entry points that compile."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from jaxvgg.core.cache import cache_dir


def enable_compilation_cache() -> Path | None:
    """JAX's persistent compilation cache under ``$JAXVGG_CACHE/xla`` (default ~/.cache/jaxvgg/xla).

    A second run of the same configuration loads its compiled steps instead of compiling them
    (docs/performance.md). ``JAXVGG_COMPILE_CACHE=0`` turns it off.
    """
    if os.environ.get("JAXVGG_COMPILE_CACHE", "1") == "0":
        return None
    path = cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path

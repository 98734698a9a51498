"""Where jaxvgg keeps what it can rebuild: the drawn built-in dataset and JAX's compiled steps."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$JAXVGG_CACHE``, default ``~/.cache/jaxvgg``."""
    return Path(os.environ.get("JAXVGG_CACHE", Path.home() / ".cache" / "jaxvgg"))

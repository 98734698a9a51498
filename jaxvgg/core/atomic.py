"""Every file of a run folder is written through here: all or nothing, never a half-written file.

The bytes go to a temporary file in the target's folder (so the rename cannot cross file
systems), are flushed to disk with ``fsync``, and the temporary file is renamed over the target.
A failure at any point (disk full, Ctrl-C) removes the temporary file and leaves the previous
version of the target in place. A full disk or a read-only folder is a one-line
:class:`UserError` naming the file. Imports neither JAX nor torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from jaxvgg.core.errors import UserError


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary file object and put the result at ``path`` atomically."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(e, OSError):
            raise UserError(f"{path}: could not be written ({_reason(e)}); nothing was changed") from e
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2))


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    return e.strerror or type(e).__name__

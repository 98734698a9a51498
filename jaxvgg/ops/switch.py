"""Trace-time switches: a context variable set for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def set_within(var: contextvars.ContextVar[T], value: T) -> Iterator[None]:
    """``var`` is ``value`` inside the block (and in what it traces), its old value after."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)

"""What every command-line script shares: one-line errors, no tracebacks for user mistakes."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from jaxvgg.core.errors import UserError


def main_guard(fn: Callable[[], int | None]) -> Callable[[], None]:
    """Run ``fn``; a :class:`UserError` becomes ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper() -> None:
        try:
            code = fn()
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:  # output piped into `head` and the like
            sys.stderr.close()
            sys.exit(0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper


def silence_stdout() -> None:
    """Send this process's standard output (the C++ runtime's too) to /dev/null; stderr stays.

    The non-zero processes of a multi-process run call it, so that process 0 alone reports."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

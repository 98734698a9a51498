"""What every command-line script shares: one-line errors, no tracebacks for user mistakes."""

from __future__ import annotations

import functools
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

"""Progress bars that suit where the output goes.

On a terminal, tqdm's bar. Anywhere else (CI, ``nohup``, ``> log``) tqdm's redraws would fill
the log with carriage-return frames (56 KB for a six-epoch run), so there a bar prints at most
one plain line every ``LOG_INTERVAL_S`` seconds, and nothing for work that ends sooner.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


class LogBar:
    """tqdm's interface (``update``, ``set_postfix``, ``write``, ``close``, iteration) as occasional lines."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        disable: bool = False,
        **_: Any,
    ) -> None:
        self.iterable, self.total, self.n, self.desc, self.disable = iterable, total, initial, desc, disable
        self.postfix = ""
        self.last = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable and time.monotonic() - self.last >= LOG_INTERVAL_S:
            self.last = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self.n}{of}{self.postfix}", file=sys.stderr, flush=True)

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.postfix = "".join(f", {k}={v}" for k, v in values.items())

    def write(self, message: str) -> None:
        print(message, flush=True)

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable[Any] | None = None, **kw: Any) -> Any:
    """``tqdm(iterable, **kw)`` on a terminal, a :class:`LogBar` elsewhere."""
    return tqdm(iterable, **kw) if on_terminal() else LogBar(iterable, **kw)

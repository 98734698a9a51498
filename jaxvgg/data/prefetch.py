"""Batches put on the device ahead of the step that uses them."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")


def prefetch(batches: Iterable[T], put: Callable[[T], U], depth: int = 2) -> Iterator[U]:
    """``put(batch)`` for each batch, ``depth`` of them put at any time (flax's ``prefetch_to_device``).

    ``put`` is ``jax.device_put`` (sharded) and whatever the device does to a batch first; JAX
    runs both asynchronously. A batch is handed out with the next one already put, and asking
    for it (after dispatching the step on the previous one) puts the one after: so while a step
    computes, the next two batches' copies are done or under way. Same batches, same order:
    results do not change.
    """
    it = iter(batches)
    queue: collections.deque[U] = collections.deque(put(b) for b in itertools.islice(it, depth))
    while queue:
        yield queue.popleft()
        queue.extend(put(b) for b in itertools.islice(it, 1))

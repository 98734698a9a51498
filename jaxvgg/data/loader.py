"""A background loader that keeps the compiled step busy.

Threads, not processes: PIL releases the GIL while it decodes and resizes, so a thread pool
scales over cores without pickling images between processes, and it starts instantly
(measured against a process pool: docs/performance.md#the-loader). Every random choice depends
only on (seed, epoch, position), so an epoch is the same whether it is run whole, resumed
half-way, or loaded by more workers.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jaxvgg.core.folder import load_rgb
from jaxvgg.core.machine import usable_cores
from jaxvgg.core.transforms import Pipeline


@dataclasses.dataclass
class Batch:
    image: np.ndarray  # uint8 (B, H, W, 3)
    label: np.ndarray  # int32 (B,)
    weight: np.ndarray  # float32 (B,): 0 marks padding in a last, short eval batch
    index: np.ndarray  # int32 (B,): each row's sample (0 for padding); a teacher's logits are looked up by it

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"image": self.image, "label": self.label, "weight": self.weight, "index": self.index}


def default_workers(workers: int | None) -> int:
    """``--workers``: the given count, or (None, 0) the cores this process may use, at most 8."""
    return workers or min(8, usable_cores())


class Loader:
    """Batches of one subset.

    ``train=True`` shuffles every epoch and drops the last short batch (one compiled shape,
    and no tiny batch skewing BatchNorm statistics); otherwise the order is fixed and the last
    batch is padded to full size with ``weight == 0``.

    ``batch_size`` is the global batch. With ``shard=(i, n)`` (process ``i`` of ``n`` in a
    multi-host run) each batch holds only rows ``[i*b/n, (i+1)*b/n)`` of the global batch, so
    the processes together load every image once and in the same order as a single process.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        samples: list[tuple[str, int]],
        pipeline: Pipeline,
        batch_size: int,
        train: bool,
        seed: int = 0,
        workers: int | None = None,
        prefetch: int = 4,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        index, count = shard
        if batch_size % count:
            raise ValueError(f"batch size {batch_size} does not split over {count} processes")
        self.root = Path(root)
        self.samples = samples
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.workers = default_workers(workers)
        self.prefetch = prefetch
        self.rows = slice(index * batch_size // count, (index + 1) * batch_size // count)

    def __len__(self) -> int:
        n = len(self.samples)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return np.arange(len(self.samples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.samples))

    def rng(self, epoch: int, position: int) -> np.random.Generator | None:
        """The random draws of the image at ``position`` of ``epoch`` (None without augmentation)."""
        return np.random.default_rng([self.seed, epoch, position]) if self.pipeline.augment else None

    def plan(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(epoch positions, sample indices) of this process's rows of each batch from
        ``start_batch`` on; rows past the end of a short eval batch are left out (padding)."""
        order = self.order(epoch)
        for b in range(start_batch, len(self)):
            positions = np.arange(b * self.batch_size, (b + 1) * self.batch_size)[self.rows]
            positions = positions[positions < len(order)]
            yield positions, order[positions]

    def padded(self, arrays: dict[str, np.ndarray], indices: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``arrays`` (one row per index) and the labels, zero-padded to this process's rows of a
        full batch (the compiled shape), and the per-row weights (0 for padding)."""
        local = self.rows.stop - self.rows.start
        n = len(indices)
        labels = np.array([self.samples[i][1] for i in indices], np.int32)
        weight = np.ones(local, np.float32)
        weight[n:] = 0
        out = {}
        for key, value in {**arrays, "label": labels}.items():
            pad = np.zeros((local - n, *value.shape[1:]), value.dtype)
            out[key] = np.concatenate([value[:n], pad]) if n < local else value
        return out, weight

    def _load(self, epoch: int, position: int, index: int) -> np.ndarray:
        path, _ = self.samples[index]
        return self.pipeline(load_rgb(self.root / path), self.rng(epoch, position))

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, from ``start_batch`` on (for resuming mid-epoch)."""
        pending: collections.deque[tuple[list[Future], np.ndarray]] = collections.deque()
        plan = self.plan(epoch, start_batch)
        with ThreadPoolExecutor(self.workers) as pool:

            def submit() -> None:
                item = next(plan, None)
                if item is not None:
                    positions, indices = item
                    pairs = zip(positions, indices, strict=True)
                    futures = [pool.submit(self._load, epoch, int(p), int(i)) for p, i in pairs]
                    pending.append((futures, indices))

            for _ in range(self.prefetch):
                submit()
            while pending:
                futures, indices = pending.popleft()
                submit()
                empty = np.zeros((0, *self.pipeline.output_shape), np.uint8)
                images = np.stack([f.result() for f in futures]) if futures else empty
                arrays, weight = self.padded({"image": images, "index": indices.astype(np.int32)}, indices)
                yield Batch(arrays["image"], arrays["label"], weight, arrays["index"])

"""A background loader that keeps the compiled step busy.

Threads, not processes: PIL releases the GIL while it decodes and resizes, so a thread pool
scales over cores without pickling images between processes, and it starts instantly. Every
random choice depends only on (seed, epoch, position), so an epoch is the same whether it is
run whole, resumed half-way, or loaded by more workers.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jaxvgg.data.folder import load_rgb
from jaxvgg.data.transforms import Pipeline


@dataclasses.dataclass
class Batch:
    image: np.ndarray  # uint8 (B, H, W, 3)
    label: np.ndarray  # int32 (B,)
    weight: np.ndarray  # float32 (B,): 0 marks padding in a last, short eval batch

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"image": self.image, "label": self.label, "weight": self.weight}


class Loader:
    """Batches of one subset.

    ``train=True`` shuffles every epoch and drops the last short batch (one compiled shape,
    and no tiny batch skewing BatchNorm statistics); otherwise the order is fixed and the last
    batch is padded to full size with ``weight == 0``.
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
    ) -> None:
        self.root = Path(root)
        self.samples = samples
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.prefetch = prefetch

    def __len__(self) -> int:
        n = len(self.samples)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return np.arange(len(self.samples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.samples))

    def _load(self, epoch: int, position: int, index: int) -> np.ndarray:
        path, _ = self.samples[index]
        rng = np.random.default_rng([self.seed, epoch, position]) if self.pipeline.augment else None
        return self.pipeline(load_rgb(self.root / path), rng)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, from ``start_batch`` on (for resuming mid-epoch)."""
        order = self.order(epoch)
        bs = self.batch_size
        pending: collections.deque[tuple[list[Future], np.ndarray, int]] = collections.deque()
        batches = iter(range(start_batch, len(self)))
        with ThreadPoolExecutor(self.workers) as pool:

            def submit() -> bool:
                b = next(batches, None)
                if b is None:
                    return False
                positions = np.arange(b * bs, min((b + 1) * bs, len(order)))
                futures = [pool.submit(self._load, epoch, int(p), int(order[p])) for p in positions]
                pending.append((futures, order[positions], len(positions)))
                return True

            for _ in range(self.prefetch):
                submit()
            while pending:
                futures, indices, n = pending.popleft()
                submit()
                images = np.stack([f.result() for f in futures])
                labels = np.array([self.samples[i][1] for i in indices], np.int32)
                weight = np.ones(bs, np.float32)
                if n < bs:  # pad a short eval batch to the compiled shape
                    images = np.concatenate([images, np.zeros((bs - n, *images.shape[1:]), np.uint8)])
                    labels = np.concatenate([labels, np.zeros(bs - n, np.int32)])
                    weight[n:] = 0
                yield Batch(images, labels, weight)

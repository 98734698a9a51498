"""The cached route (``--data-cache``): every image decoded once into one uint8 array in memory.

A subset's images are decoded a single time into an array (N, H, W, 3):

- without augmentation each row is the pipeline's output (Resize + CenterCrop), so batches are
  the PIL loader's, bit for bit, and the device only gathers them;
- with augmentation each row is the decoded image itself when all share one size (the built-in
  set and PlantVillage are 256 x 256), so RandomResizedCrop's box is drawn on the image PIL
  would crop. Images of mixed sizes are stored as their central square at the pipeline's resize
  size (Resize + CenterCrop, 256 for 224 px) and the crops are drawn inside it: close to, not
  exactly, torchvision's crops.

The crop, resize, flip (:mod:`jaxvgg.data.augment`) and normalisation then run on the device.
The host only draws each example's box and flip, with the PIL loader's generator for (seed,
epoch, position): the cached route trains on the same crops as the PIL loader, and resumes
bit-exactly for the same reason.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from jaxvgg.core.folder import load_rgb
from jaxvgg.core.transforms import Pipeline, center_crop, random_resized_crop_box, resize, resize_size
from jaxvgg.data.loader import Loader, default_workers

# --data-cache auto puts the images where they take at most this share of the memory.
DEVICE_SHARE = 1 / 8  # a GPU's memory is mostly the model's
HOST_SHARE = 1 / 4


def placement(requested: str, nbytes: int, platform: str, device_bytes: int | None, host_bytes: int | None) -> str:
    """Where ``--data-cache requested`` keeps ``nbytes`` of images: device, host or none.

    ``auto``: on a GPU or TPU, on the device when the images take at most ``DEVICE_SHARE`` of
    its memory, else in host memory when they take at most ``HOST_SHARE`` of it, else none (the
    PIL loader); on a CPU, none: the model, not the loader, is what takes the time there, and
    the PIL loader's results are the reference.
    """
    if requested != "auto":
        return requested
    if platform == "cpu":
        return "none"
    if device_bytes and nbytes <= DEVICE_SHARE * device_bytes:
        return "device"
    if host_bytes and nbytes <= HOST_SHARE * host_bytes:
        return "host"
    return "none"


def host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


@dataclasses.dataclass(frozen=True)
class Layout:
    """The shape each image is stored at, and what a row is."""

    shape: tuple[int, int, int]
    kind: str  # "output": the pipeline's own output; "original": the decoded image; "square": its central square

    def nbytes(self, count: int) -> int:
        return count * int(np.prod(self.shape))


def layout(root: str | os.PathLike, samples: list[tuple[str, int]], pipeline: Pipeline, workers: int) -> Layout:
    """How ``samples`` would be stored (augmentation: the image headers are read, nothing decoded)."""
    if not pipeline.augment:
        return Layout(pipeline.output_shape, "output")

    def size(sample: tuple[str, int]) -> tuple[int, int]:
        with Image.open(Path(root) / sample[0]) as img:
            return img.size

    with ThreadPoolExecutor(workers) as pool:
        sizes = set(pool.map(size, samples))
    if len(sizes) == 1:
        (w, h) = sizes.pop()
        return Layout((h, w, 3), "original")
    side = resize_size(pipeline.image_size)
    return Layout((side, side, 3), "square")


@dataclasses.dataclass(frozen=True)
class ImageCache:
    root: Path
    samples: list[tuple[str, int]]
    images: np.ndarray  # uint8 (N, H, W, 3)
    layout: Layout
    seconds: float  # to decode them

    @classmethod
    def build(
        cls,
        root: str | os.PathLike,
        samples: list[tuple[str, int]],
        pipeline: Pipeline,
        workers: int | None = None,
        plan: Layout | None = None,
    ) -> ImageCache:
        """Decode every image of ``samples`` once (in ``workers`` threads) as ``plan`` (default:
        :func:`layout`) says."""
        t0 = time.perf_counter()
        workers = default_workers(workers)
        plan = plan or layout(root, samples, pipeline, workers)
        images = np.empty((len(samples), *plan.shape), np.uint8)
        side = plan.shape[0]

        def store(i: int) -> None:
            img = load_rgb(Path(root) / samples[i][0])
            if plan.kind == "output":
                images[i] = pipeline(img)
            elif plan.kind == "original":
                images[i] = np.asarray(img)
            else:
                images[i] = np.asarray(center_crop(resize(img, side), side))

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(store, range(len(samples))))
        return cls(Path(root), samples, images, plan, time.perf_counter() - t0)

    def describe(self) -> str:
        h, w, _ = self.layout.shape
        what = {"output": "", "original": " as decoded", "square": " (mixed sizes: their central squares)"}
        return f"{len(self.samples):,} images of {w}x{h}{what[self.layout.kind]}, {self.images.nbytes / 2**20:,.0f} MB"


@dataclasses.dataclass
class CachedBatch:
    """Host arrays of one batch of the cached route: ``index`` (each row's sample: the images are
    gathered by it when the cache is on the device), ``image`` (stored images, cache in host
    memory), ``box``/``flip`` with augmentation, labels, weights."""

    arrays: dict[str, np.ndarray]

    @property
    def label(self) -> np.ndarray:
        return self.arrays["label"]

    def as_dict(self) -> dict[str, np.ndarray]:
        return self.arrays


class CachedLoader(Loader):
    """The batches of a :class:`Loader` over the same samples (order, shards, padding), from an
    :class:`ImageCache` instead of the files. The device finishes them: :mod:`jaxvgg.data.augment`."""

    def __init__(
        self,
        cache: ImageCache,
        pipeline: Pipeline,
        batch_size: int,
        train: bool,
        seed: int = 0,
        on_device: bool = True,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        super().__init__(cache.root, cache.samples, pipeline, batch_size, train, seed, 1, shard=shard)
        self.cache, self.on_device = cache, on_device

    def crops(self, epoch: int, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Each example's RandomResizedCrop box (top, left, h, w) and flip: the draws
        :meth:`Pipeline.__call__` makes, in its order, from the same generator."""
        h, w = self.cache.images.shape[1:3]
        boxes = np.empty((len(positions), 4), np.int32)
        flips = np.empty(len(positions), bool)
        for i, p in enumerate(positions):
            rng = self.rng(epoch, int(p))
            boxes[i] = random_resized_crop_box(w, h, rng)
            flips[i] = rng.random() < 0.5
        return {"box": boxes, "flip": flips}

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[CachedBatch]:
        for positions, indices in self.plan(epoch, start_batch):
            arrays = {"index": indices.astype(np.int32)}
            if not self.on_device:
                arrays["image"] = self.cache.images[indices]
            if self.pipeline.augment:
                arrays.update(self.crops(epoch, positions))
            arrays, weight = self.padded(arrays, indices)
            yield CachedBatch({**arrays, "weight": weight})

"""The tutorial's data path in torch: torchvision ImageFolder, transforms and a DataLoader,
restricted to the images a run's ``split.json`` lists."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler, Subset
from torchvision import datasets, transforms

from jaxvgg.data.folder import load_rgb
from jaxvgg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size


def eval_transform(image_size: int) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(resize_size(image_size)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def train_transform(image_size: int, augment: bool) -> transforms.Compose:
    if not augment:
        return eval_transform(image_size)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class EpochSampler(Sampler[int]):
    """A shuffle fixed by (seed, epoch), startable mid-epoch so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start :].tolist())

    def __len__(self) -> int:
        return self.n - self.start


def subset(root: str | os.PathLike, paths: list[str], transform) -> Subset:
    """``ImageFolder(root)`` limited to ``paths`` (relative, "<class>/<file>"), our RGB loader included."""
    wanted = set(paths)
    root = Path(root)
    folder = datasets.ImageFolder(
        root, transform=transform, loader=load_rgb, is_valid_file=lambda p: os.path.relpath(p, root) in wanted
    )
    return Subset(folder, list(range(len(folder))))


def make_loader(root, paths: list[str], transform, batch_size: int, train: bool, seed: int, workers: int) -> DataLoader:
    data = subset(root, paths, transform)
    sampler = EpochSampler(len(data), seed) if train else None
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        persistent_workers=workers > 0,
    )

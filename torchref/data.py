"""The tutorial's data path in torch: torchvision ImageFolder, transforms and a DataLoader,
restricted to the images a run's ``split.json`` lists."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets, transforms

from jaxvgg.core.folder import load_rgb
from jaxvgg.core.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size


def eval_transform(image_size: int, resize: str = "crop") -> transforms.Compose:
    """``crop``: torchvision's evaluation transform; ``squash``: the tutorial's ``Resize([size, size])``."""
    sizing = (
        [transforms.Resize([image_size, image_size])]
        if resize == "squash"
        else [transforms.Resize(resize_size(image_size)), transforms.CenterCrop(image_size)]
    )
    return transforms.Compose(
        [
            *sizing,
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def train_transform(image_size: int, augment: bool, resize: str = "crop") -> transforms.Compose:
    if not augment:
        return eval_transform(image_size, resize)
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class EpochSampler(DistributedSampler):
    """The training order: a shuffle fixed by (seed, epoch), whole global batches only, startable
    mid-epoch so a resumed run sees the same order.

    With ``num_replicas`` processes, each global batch of ``batch_size`` is split between them
    (DistributedSampler's interleaving), so together they see exactly the batches one process
    would; gradients averaged by DDP are then the same global-batch means.
    """

    def __init__(self, n: int, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.n, self.batch_size, self.start_batch = n, batch_size, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        used = self.n // self.batch_size * self.batch_size
        order = torch.randperm(self.n, generator=g)[self.start_batch * self.batch_size : used]
        return iter(order[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return (self.n // self.batch_size - self.start_batch) * self.batch_size // self.num_replicas


class WithIndex(Dataset):
    """(image, label, index) of ``data``: which sample each row of a batch is, so that a
    teacher's logits computed once can be looked up (``torchref.train.distillation_from_logits``)."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return (*self.data[index], index)


def subset(root: str | os.PathLike, paths: list[str], transform) -> Subset:
    """``ImageFolder(root)`` limited to ``paths`` (relative, "<class>/<file>"), our RGB loader included."""
    wanted = set(paths)
    root = Path(root)
    folder = datasets.ImageFolder(
        root, transform=transform, loader=load_rgb, is_valid_file=lambda p: os.path.relpath(p, root) in wanted
    )
    return Subset(folder, list(range(len(folder))))


def make_loader(
    root,
    paths: list[str],
    transform,
    batch_size: int,
    train: bool,
    seed: int,
    workers: int,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """``batch_size`` is the global batch; each of ``num_replicas`` training processes loads its share,
    as (images, labels, sample indices). Evaluation loaders are not split: every process evaluates
    the whole subset, as (images, labels). ``pin_memory`` (for CUDA) puts batches in page-locked
    memory, so the copy to the GPU is asynchronous."""
    data = subset(root, paths, transform)
    if train:
        data = WithIndex(data)
    sampler = EpochSampler(len(data), seed, batch_size, num_replicas, rank) if train else None
    return DataLoader(
        data,
        batch_size=batch_size // num_replicas if train else batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, what ``ToTensor`` + ``Normalize`` give (on ``images``' device)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() / 255 - mean) / std

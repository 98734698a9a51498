"""The tutorial's training step and test loop in PyTorch, driven by the same epoch loop as jaxvgg.

:func:`train_one_batch` is the tutorial's inner loop (zero_grad, forward, loss, backward, step)
and :func:`evaluate` its test loop; :class:`TorchTrainer` hands them to
:func:`jaxvgg.core.driver.train`, which runs the epochs for both frameworks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import torchref
from jaxvgg.core import driver
from jaxvgg.core.config import TrainConfig
from jaxvgg.core.errors import UserError
from jaxvgg.core.freeze import freeze_rule
from jaxvgg.core.lr_finder import LrSweep, find_lr
from jaxvgg.core.progress import progress_bar
from jaxvgg.core.run import (
    EpochSums,
    RunContext,
    class_weights,
    prepare_run,
    removed_if_unfinished,
    teacher_logits_note,
    teacher_model,
)
from jaxvgg.core.sparse import format_sparsity, sparsity
from jaxvgg.core.specs import size_options
from jaxvgg.core.weights import StateDict, WeightReader
from torchref.checkpoint import BEST, load_model, read_torch_weights, restore_last, save_best, save_last_state
from torchref.compress import add_pruning_slots, distillation_loss, numpy_state_dict, prune_model
from torchref.data import eval_transform, make_loader, train_transform
from torchref.device import pick_device
from torchref.distributed import Distributed, init_distributed
from torchref.precision import autocast, prepare, to_device
from torchref.transfer import freeze, load_starting_weights, train_mode

# Where the reference takes torch's fused Adam, AdamW and SGD: measured on CPU, and CUDA is where
# they began; MPS keeps the default kernels, never run here.
FUSED_DEVICES = ("cpu", "cuda")

# (logits, images, labels, sample indices) -> the loss to minimise; images are there for a
# teacher to see, sample indices for its logits computed once (no augmentation).
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def model_options(cfg: TrainConfig) -> dict[str, Any]:
    return size_options(cfg.model, cfg.image_size)


def make_optimizer(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    # The fused kernels update each weight in one pass instead of several: on a CPU, several times
    # faster for VGG-16's 134 M weights, the same update to an ulp (docs/performance.md).
    fused = {"fused": True} if params and all(p.device.type in FUSED_DEVICES for p in params) else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """The epoch scheduler; ``cosine_rebuilt`` gets a new one every epoch (see ``start_epoch``)."""
    if cfg.schedule in ("cosine", "cosine_rebuilt"):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _meta(ctx: RunContext, **progress: Any) -> dict[str, Any]:
    return {
        "framework": "torch",
        "model": ctx.cfg.model,
        "num_classes": len(ctx.classes),
        "classes": ctx.classes,
        "image_size": ctx.cfg.image_size,
        **progress,
    }


def train_one_batch(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    precision: str,
    index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step; returns (loss sum, correct, count), the first two still tensors."""
    optimizer.zero_grad()
    with autocast(x.device, precision):
        out = net(x)
        loss = loss_fn(out.float(), x, y, index)
    loss.backward()
    optimizer.step()
    return loss.detach() * len(y), (out.argmax(1) == y).sum(), len(y)


def cross_entropy_loss(weights: list[float] | None, device: torch.device) -> LossFn:
    """The tutorial's ``CrossEntropyLoss``, class-weighted when asked (``--class-weights``)."""
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights, device=device))
    return lambda out, _x, y, _index: criterion(out, y)


def distillation(teacher: nn.Module, temperature: float, alpha: float) -> LossFn:
    """The tutorial's distillation loss, with the frozen teacher's logits for the same images."""

    def loss(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, _index: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            teacher_out = teacher(x)
        return distillation_loss(out, teacher_out.float(), y, temperature, alpha)

    return loss


def distillation_from_logits(table: torch.Tensor, temperature: float, alpha: float) -> LossFn:
    """The same loss with the teacher's logits of every training image computed once (``table``,
    by sample index): without augmentation an image, and so its teacher logits, never change."""

    def loss(out: torch.Tensor, _x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        return distillation_loss(out, table[index.to(table.device)], y, temperature, alpha)

    return loss


def evaluate(
    model: nn.Module, loader, device, criterion, desc: str = "eval", precision: str = "fp32"
) -> dict[str, Any]:
    """The tutorial's test loop: loss, accuracy, labels, predictions and float32 logits over ``loader``."""
    model.eval()
    loss = correct = count = 0.0
    labels, preds, logits = [], [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        quiet = torch.distributed.is_initialized() and torch.distributed.get_rank() != 0
        for x, y in progress_bar(loader, desc=desc, leave=False, unit="batch", disable=quiet):
            x, y = to_device(x, device), y.to(device)
            with autocast(device, precision):  # evaluated as trained, like the JAX side
                out = model(x).float()
            loss += criterion(out, y).item() * len(y)
            pred = out.argmax(1)
            correct += (pred == y).sum().item()
            count += len(y)
            labels += y.tolist()
            preds += pred.tolist()
            logits.append(out.cpu().numpy())
    seconds = time.perf_counter() - t0
    return {
        "loss": loss / max(count, 1),
        "acc": correct / max(count, 1),
        "labels": labels,
        "preds": preds,
        "logits": np.concatenate(logits) if logits else np.zeros((0, 0), np.float32),
        "images_per_s": count / seconds,
    }


class TorchTrainer:
    """What :func:`jaxvgg.core.driver.train` needs, in PyTorch: the model, optimizer and loaders."""

    framework = "torch"

    def __init__(
        self,
        ctx: RunContext,
        ddp: Distributed,
        device: str | None,
        read_weights: WeightReader,
        lr_of_step: Callable[[int], float] | None = None,
    ) -> None:
        """``lr_of_step`` replaces the configured schedule (the learning-rate range test)."""
        cfg = ctx.cfg
        self.ctx, self.cfg, self.ddp = ctx, cfg, ddp
        dev = pick_device(device)
        if ddp.active and dev.type == "cuda":  # one GPU per process
            dev = torch.device("cuda", ddp.local_rank)
            torch.cuda.set_device(dev)
        self.dev, self.device = dev, str(dev)
        torch.manual_seed(cfg.seed)
        self.workers = 2 if cfg.workers is None else min(cfg.workers, 4)  # DataLoader processes; 0: in-process
        self.train_loader = make_loader(
            ctx.data.root,
            ctx.split.subsets["train"],
            train_transform(cfg.image_size, cfg.augment, cfg.resize),
            cfg.batch_size,
            True,
            cfg.seed,
            self.workers,
            ddp.world,
            ddp.rank,
            pin_memory=dev.type == "cuda",
        )
        self.batches_per_epoch = len(self.train_loader)
        model = torchref.create_model(cfg.model, len(ctx.classes), **model_options(cfg))
        source = cfg.pretrained or cfg.init_from
        if source and not cfg.resume:
            print(load_starting_weights(model, cfg.model, source, bool(cfg.pretrained), read_weights))
        if cfg.prune_amount and cfg.resume:
            add_pruning_slots(model)  # the checkpoint holds weight_orig + weight_mask
        elif cfg.prune_amount:
            prune_model(model, cfg.prune_amount, cfg.prune_scope)
            print(f"pruned {cfg.prune_amount:.0%} of the conv/linear weights ({cfg.prune_scope}):")
            print(format_sparsity(sparsity(numpy_state_dict(model))))
        teacher = load_teacher(cfg, len(ctx.classes), dev, read_weights) if cfg.teacher else None
        model = prepare(model.to(dev), dev)
        is_frozen = freeze_rule(cfg.model, cfg.freeze)
        freeze(model, is_frozen)  # before DDP, which registers the parameters that need gradients
        self.net = ddp.wrap(model, dev)  # what trains; `model` is what is saved and evaluated
        self.model = self.net.module if ddp.active else self.net
        if cfg.torch_compile:  # the plain module is still what is saved and evaluated
            self.net = torch.compile(self.net)
        self.frozen_bn = freeze(self.model, is_frozen)
        # Frozen parameters are not given to the optimizer, so it keeps no state for them.
        self.optimizer = make_optimizer(cfg, [p for p in self.model.parameters() if p.requires_grad])
        self.scheduler = make_scheduler(cfg, self.optimizer)
        # Evaluation reports the plain loss, as the JAX side does.
        self.criterion = nn.CrossEntropyLoss()
        weights = class_weights(ctx)  # says so when --teacher leaves them out
        if teacher is None:
            self.loss_fn = cross_entropy_loss(weights, dev)
        elif cfg.augment:  # the teacher sees each step's own crops
            self.loss_fn = distillation(teacher, cfg.temperature, cfg.alpha)
        else:
            self.loss_fn = distillation_from_logits(self._teacher_logits(teacher), cfg.temperature, cfg.alpha)
        self.step = 0
        self.lr_of_step = lr_of_step

    def _teacher_logits(self, teacher: nn.Module) -> torch.Tensor:
        """The teacher's logits of every training image, in sample order, computed once."""
        t0 = time.perf_counter()
        ev = evaluate(teacher, self._loader("train"), self.dev, self.criterion, "teacher", self.cfg.precision)
        print(teacher_logits_note(len(ev["labels"]), time.perf_counter() - t0))
        return torch.from_numpy(ev["logits"]).to(self.dev)

    def _loader(self, subset: str):
        cfg = self.cfg
        transform = eval_transform(cfg.image_size, cfg.resize)
        return make_loader(
            self.ctx.data.root,
            self.ctx.split.subsets[subset],
            transform,
            cfg.batch_size,
            False,
            cfg.seed,
            self.workers,
            pin_memory=self.dev.type == "cuda",
        )

    def placement(self) -> str:
        return (
            f"device {self.dev}"
            + (f", {self.ddp.world} processes (DDP)" if self.ddp.active else "")
            + (", torch.compile" if self.cfg.torch_compile else "")
        )

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        self.train_loader.sampler.set_epoch(epoch, start)
        for x, y, index in self.train_loader:
            yield to_device(x, self.dev), y.to(self.dev), index

    def start_epoch(self, epoch: int) -> float:
        train_mode(self.net, self.frozen_bn)
        if self.cfg.schedule == "cosine_rebuilt":  # as the tutorial's optimized loop does, bug included
            self.scheduler = make_scheduler(self.cfg, self.optimizer)
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: Any) -> Any:
        x, y, index = batch
        if self.lr_of_step is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_of_step(self.step)
        self.step += 1
        return train_one_batch(self.net, x, y, self.optimizer, self.loss_fn, self.cfg.precision, index)

    def fetch(self, metrics: list[Any]) -> list[tuple[float, float, float]]:
        # Summed over the processes, as JAX's sharded step gives them: every rank sees the same
        # losses, so all stop together on a NaN and the divergence check reads the global loss.
        flat = self.ddp.sum(*(float(v) for m in metrics for v in m)) if metrics else []
        return [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]

    def global_sums(self, sums: EpochSums) -> EpochSums:
        return sums  # fetch already summed them over the processes

    def end_epoch(self) -> None:
        self.scheduler.step()

    def evaluate(self, subset: str, desc: str) -> dict[str, Any]:
        return evaluate(self.model, self._loader(subset), self.dev, self.criterion, desc, self.cfg.precision)

    def steps_done(self) -> int:
        return self.step

    def save_last(self, progress: dict[str, Any]) -> None:
        """Rank 0 writes; every rank waits until it has."""
        if self.ddp.is_main:
            meta = _meta(self.ctx, **progress, step=self.step)
            save_last_state(self.ctx.checkpoint("last"), self.model, self.optimizer, self.scheduler, meta)
        self.ddp.barrier()

    def restore_last(self) -> dict[str, Any]:
        meta = restore_last(
            self.ctx.checkpoint("last"), self.model, self.optimizer, self.scheduler, self.cfg.model, self.dev
        )
        if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.scheduler.T_max = self.cfg.epochs  # a resume may change --epochs; JAX's schedule follows it too
        self.step = meta["step"]
        return meta

    def save_best(self, meta: dict[str, Any]) -> None:
        save_best(self.ctx.checkpoint("best"), self.model, _meta(self.ctx, **meta))

    def test_best(self, subsets: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        best, meta = load_model(self.ctx.out_dir, BEST, self.dev)
        precision = self.cfg.precision
        return {s: evaluate(best, self._loader(s), self.dev, self.criterion, s, precision) for s in subsets}, meta

    def best_state_dict(self) -> StateDict:
        return numpy_state_dict(load_model(self.ctx.out_dir, BEST, self.dev)[0])

    def parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.model.parameters()) - trainable


def fit(
    cfg: TrainConfig, device: str | None = None, read_weights: WeightReader = read_torch_weights
) -> dict[str, Any] | None:
    """Train as configured; ``read_weights`` reads ``--pretrained``/``--init-from``/``--teacher``
    (torch files by default; :func:`jaxvgg.tools.weights.read_weights` reads JAX runs too)."""
    ddp = init_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
    if cfg.batch_size % ddp.world:
        raise UserError(f"--batch-size {cfg.batch_size} does not split evenly over {ddp.world} processes")
    ctx = prepare_run(cfg, "torch", main=ddp.is_main, barrier=ddp.barrier)
    with removed_if_unfinished(ctx):
        if cfg.find_lr:
            sweep = LrSweep()
            return find_lr(ctx, TorchTrainer(ctx, ddp, device, read_weights, lr_of_step=sweep.lr), sweep)
        return driver.train(ctx, TorchTrainer(ctx, ddp, device, read_weights))


def load_teacher(cfg: TrainConfig, num_classes: int, device: torch.device, read_weights: WeightReader) -> nn.Module:
    """The teacher run's best model (JAX or PyTorch run folder), frozen, in eval mode."""
    name, options = teacher_model(cfg)
    teacher = torchref.create_model(name, num_classes, **options)
    load_starting_weights(teacher, name, cfg.teacher, False, read_weights)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()

"""The tutorial's training and test loops in PyTorch, writing the same run folder as jaxvgg."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import torchref
from jaxvgg.core.config import TrainConfig
from jaxvgg.core.errors import UserError
from jaxvgg.core.freeze import freeze_rule
from jaxvgg.core.run import (
    EpochEstimate,
    EpochSums,
    RunContext,
    announce_stop,
    check_divergence,
    check_loss,
    class_weights,
    deferred_interrupt,
    early_stop_reason,
    end_epoch,
    finish_run,
    prepare_run,
    removed_if_unfinished,
    teacher_model,
    write_sparse_best,
)
from jaxvgg.core.sparse import format_sparsity, sparsity
from jaxvgg.core.specs import get_spec
from jaxvgg.core.weights import WeightReader
from torchref.checkpoint import BEST, LAST, load_model, read_torch_weights, restore_last, save_best, save_last_state
from torchref.compress import add_pruning_slots, distillation_loss, numpy_state_dict, prune_model
from torchref.data import eval_transform, make_loader, train_transform
from torchref.device import pick_device
from torchref.distributed import Distributed, init_distributed
from torchref.precision import autocast, prepare, to_device
from torchref.transfer import freeze, load_starting_weights, train_mode


def model_options(cfg: TrainConfig) -> dict[str, Any]:
    return {"image_size": cfg.image_size} if get_spec(cfg.model).sized else {}


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.schedule == "cosine":
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


def evaluate(
    model: nn.Module, loader, device, criterion, desc: str = "eval", precision: str = "fp32"
) -> dict[str, Any]:
    model.eval()
    loss = correct = count = 0.0
    labels, preds = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        quiet = torch.distributed.is_initialized() and torch.distributed.get_rank() != 0
        for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=quiet):
            x, y = to_device(x, device), y.to(device)
            with autocast(device, precision):  # evaluated as trained, like the JAX side
                out = model(x).float()
            loss += criterion(out, y).item() * len(y)
            pred = out.argmax(1)
            correct += (pred == y).sum().item()
            count += len(y)
            labels += y.tolist()
            preds += pred.tolist()
    seconds = time.perf_counter() - t0
    return {
        "loss": loss / max(count, 1),
        "acc": correct / max(count, 1),
        "labels": labels,
        "preds": preds,
        "images_per_s": count / seconds,
    }


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
        return _train(ctx, ddp, device, read_weights)


def _train(ctx: RunContext, ddp: Distributed, device: str | None, read_weights: WeightReader) -> dict[str, Any] | None:
    cfg = ctx.cfg
    dev = pick_device(device)
    if ddp.active and dev.type == "cuda":  # one GPU per process
        dev = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(dev)
    torch.manual_seed(cfg.seed)
    workers = 2 if cfg.workers is None else min(cfg.workers, 4)  # DataLoader processes; 0 loads in-process
    root = ctx.data.root
    train = make_loader(
        root,
        ctx.split.subsets["train"],
        train_transform(cfg.image_size, cfg.augment),
        cfg.batch_size,
        True,
        cfg.seed,
        workers,
        ddp.world,
        ddp.rank,
    )
    batches_per_epoch = len(train)
    val = make_loader(
        root,
        ctx.split.subsets[ctx.val_subset],
        eval_transform(cfg.image_size),
        cfg.batch_size,
        False,
        cfg.seed,
        workers,
    )
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
    net = ddp.wrap(model, dev)  # what trains; `model` is what is saved and evaluated
    model = net.module if ddp.active else net
    frozen_bn = freeze(model, is_frozen)
    # Frozen parameters are not given to the optimizer, so it keeps no state for them.
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    scheduler = make_scheduler(cfg, optimizer)
    weights = class_weights(ctx)
    # Training weighs the classes as asked; evaluation reports the plain loss, as the JAX side does.
    train_criterion = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights, device=dev))
    criterion = nn.CrossEntropyLoss()
    start_epoch, start_batch, best_acc, bad_epochs, step, resume_sums = 0, 0, -1.0, 0, 0, {}
    if cfg.resume:
        meta = restore_last(ctx.out_dir / LAST, model, optimizer, scheduler, cfg.model, dev)
        if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            scheduler.T_max = cfg.epochs  # a resume may change --epochs; JAX's schedule follows it too
        if ctx.config_changed:
            ctx.save_config()
        start_epoch, start_batch, best_acc, bad_epochs, step = (
            meta["epoch"],
            meta["batch"],
            meta["best_acc"],
            meta["bad_epochs"],
            meta["step"],
        )
        resume_sums = meta.get("sums", {})
        ctx.history = [h for h in ctx.history if h["epoch"] <= start_epoch]
        print(f"resuming {ctx.out_dir} at epoch {start_epoch + 1}, batch {start_batch}")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    print(
        f"{cfg.model}: {n_params:,} trainable" + (f" + {n_frozen:,} frozen" if n_frozen else "") + " parameters, "
        f"{batches_per_epoch} batches of {cfg.batch_size} per epoch, "
        f"{len(ctx.split.subsets['train'])} train / {len(val.dataset)} {ctx.val_subset} images, device {dev}"
        + (f", {ddp.world} processes (DDP)" if ddp.active else "")
    )

    def save_last(epoch: int, batch: int, sums: EpochSums | None = None) -> None:
        """Rank 0 writes; every rank waits until it has."""
        if ddp.is_main:
            progress = dict(epoch=epoch, batch=batch, best_acc=best_acc, bad_epochs=bad_epochs, step=step)
            sums_dict = dataclasses.asdict(sums or EpochSums())
            save_last_state(ctx.out_dir / LAST, model, optimizer, scheduler, _meta(ctx, **progress, sums=sums_dict))
        ddp.barrier()

    estimate = EpochEstimate(batches_per_epoch, cfg.epochs - start_epoch)
    first_step_s, t_start, stopped = None, time.perf_counter(), "finished"
    for epoch in range(start_epoch, cfg.epochs):
        batch_idx = start_batch if epoch == start_epoch else 0
        train.sampler.set_epoch(epoch, batch_idx)
        lr = optimizer.param_groups[0]["lr"]
        train_mode(net, frozen_bn)
        t0 = time.perf_counter()
        sums = EpochSums(**resume_sums) if epoch == start_epoch and start_batch > 0 else EpochSums()
        bar = tqdm(
            train,
            total=batches_per_epoch,
            initial=batch_idx,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            dynamic_ncols=True,
            disable=not ddp.is_main,
        )
        try:  # Ctrl-C while training or validating saves the exact position
            for x, y in bar:
                x, y = to_device(x, dev), y.to(dev)
                optimizer.zero_grad()
                with autocast(dev, cfg.precision):
                    out = net(x)
                    if teacher is None:
                        loss = train_criterion(out.float(), y)
                    else:
                        with torch.no_grad():
                            teacher_out = teacher(x)
                        loss = distillation_loss(out.float(), teacher_out.float(), y, cfg.temperature, cfg.alpha)
                loss.backward()
                optimizer.step()
                step += 1
                value = loss.item()
                if first_step_s is None:
                    first_step_s = time.perf_counter() - t_start
                if message := estimate.step():
                    bar.write(message)
                check_loss(ctx, value, epoch, batch_idx)
                sums.add(value * len(y), (out.argmax(1) == y).sum().item(), len(y))
                batch_idx += 1
                bar.set_postfix(sums.postfix(time.perf_counter() - t0))
                if cfg.max_steps is not None and step >= cfg.max_steps and batch_idx < batches_per_epoch:
                    raise _StepLimit
            bar.close()
            train_s = time.perf_counter() - t0
            ev = evaluate(model, val, dev, criterion, desc=f"{ctx.val_subset} {epoch + 1}", precision=cfg.precision)
        except (KeyboardInterrupt, _StepLimit) as stop:
            bar.close()
            save_last(epoch, batch_idx, sums)
            announce_stop(ctx, LAST, interrupted=isinstance(stop, KeyboardInterrupt))
            if isinstance(stop, KeyboardInterrupt):
                raise
            return None
        scheduler.step()
        with deferred_interrupt(ctx, LAST):
            check_divergence(ctx, sums.loss / max(sums.count, 1), epoch)
            improved = ev["acc"] > best_acc
            if improved:
                best_acc, bad_epochs = ev["acc"], 0
                if ddp.is_main:
                    save_best(ctx.out_dir / BEST, model, _meta(ctx, epoch=epoch + 1, val_acc=best_acc))
            else:
                bad_epochs += 1
            # Every process evaluated the whole validation set; training statistics are summed over them.
            end_epoch(
                ctx, epoch, lr, EpochSums(*ddp.sum(sums.loss, sums.correct, sums.count)), ev, t0, train_s, improved
            )
            save_last(epoch + 1, 0)
        if reason := early_stop_reason(ctx, bad_epochs):
            stopped = reason
            break
        if cfg.max_steps is not None and step >= cfg.max_steps:
            stopped = f"stopped after --max-steps {cfg.max_steps}"
            break
    ddp.barrier()
    best, meta = load_model(ctx.out_dir, BEST, dev)
    test = make_loader(
        root, ctx.split.subsets["test"], eval_transform(cfg.image_size), cfg.batch_size, False, cfg.seed, workers
    )
    ev = evaluate(best, test, dev, criterion, desc="test", precision=cfg.precision)
    report = finish_run(
        ctx,
        ev,
        meta,
        stopped=stopped,
        framework="torch",
        device=str(dev),
        first_step_s=first_step_s,
        parameters=(n_params, n_frozen),
    )
    if cfg.prune_amount and ddp.is_main:
        write_sparse_best(ctx.out_dir, BEST, numpy_state_dict(best))
    return report


def load_teacher(cfg: TrainConfig, num_classes: int, device: torch.device, read_weights: WeightReader) -> nn.Module:
    """The teacher run's best model (JAX or PyTorch run folder), frozen, in eval mode."""
    name, options = teacher_model(cfg)
    teacher = torchref.create_model(name, num_classes, **options)
    load_starting_weights(teacher, name, cfg.teacher, False, read_weights)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()


class _StepLimit(Exception):
    pass

"""The epoch loop: train, validate, keep the best model, stop early, resume, survive Ctrl-C."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import jaxvgg
from jaxvgg.compress import prune
from jaxvgg.compress.distill import Distillation
from jaxvgg.convert import flax_to_torch, torch_to_flax
from jaxvgg.core.config import TrainConfig
from jaxvgg.core.errors import UserError
from jaxvgg.core.freeze import freeze_rule
from jaxvgg.core.meta import check_resume_meta
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
from jaxvgg.data import Loader, Pipeline
from jaxvgg.parallel import DataParallel, local_copy
from jaxvgg.train import checkpoint, steps
from jaxvgg.train.checkpoint import BEST, LAST, load_variables, read_jax_weights
from jaxvgg.train.freeze import freeze_optimizer, frozen_batchnorm_apply
from jaxvgg.train.optim import epoch_lr, make_optimizer, make_schedule
from jaxvgg.train.state import TrainState, create_train_state
from jaxvgg.transfer import param_labels, starting_variables


class _StepLimit(Exception):
    pass


def model_options(cfg: TrainConfig) -> dict[str, Any]:
    """``image_size`` for models that need it; bfloat16 compute for ``--precision bf16``."""
    options: dict[str, Any] = {"image_size": cfg.image_size} if get_spec(cfg.model).sized else {}
    if cfg.precision == "bf16":
        options["dtype"] = jnp.bfloat16
    return options


def build_state(
    cfg: TrainConfig,
    num_classes: int,
    steps_per_epoch: int,
    load_weights: bool = True,
    read_weights: WeightReader = read_jax_weights,
) -> TrainState:
    """A fresh state; with ``load_weights``, starting from ``--pretrained``/``--init-from`` weights
    (pruned by ``--prune-amount``). A resumed run passes ``load_weights=False`` and restores over it."""
    model = jaxvgg.create_model(cfg.model, num_classes, **model_options(cfg))
    variables = jaxvgg.init_variables(model, cfg.image_size, cfg.seed)
    source = cfg.pretrained or cfg.init_from
    if source and load_weights:
        variables, report = starting_variables(
            cfg.model, variables, source, bool(cfg.pretrained), read_weights, **model_options(cfg)
        )
        print(report)
    if cfg.prune_amount and load_weights:
        masks = prune.l1_masks(variables["params"], cfg.prune_amount, cfg.prune_scope)
        variables = {**variables, "params": prune.apply_masks(variables["params"], masks)}
        print(f"pruned {cfg.prune_amount:.0%} of the conv/linear weights ({cfg.prune_scope}):")
        print(format_sparsity(sparsity(flax_to_torch(cfg.model, variables))))
    is_frozen = freeze_rule(cfg.model, cfg.freeze)
    schedule = make_schedule(cfg.schedule, cfg.lr, cfg.epochs, steps_per_epoch, cfg.step_size, cfg.gamma)
    tx = freeze_optimizer(
        make_optimizer(cfg.optimizer, schedule, cfg.weight_decay, cfg.momentum), variables["params"], is_frozen
    )
    if cfg.prune_amount:
        tx = optax.chain(tx, prune.keep_zeros())
    apply_fn = frozen_batchnorm_apply(model.apply, is_frozen)
    state = create_train_state(model, variables, tx, cfg.seed, apply_fn)
    if cfg.teacher:
        teacher_model, teacher_variables = load_teacher(cfg, num_classes, read_weights)
        state = state.replace(
            teacher=teacher_variables,
            teacher_apply=teacher_model.apply,
            distillation=Distillation(cfg.temperature, cfg.alpha),
        )
    return state


def load_teacher(cfg: TrainConfig, num_classes: int, read_weights: WeightReader) -> tuple[Any, dict[str, Any]]:
    """The teacher run's model and best weights (a JAX or a PyTorch run folder)."""
    name, options = teacher_model(cfg)
    variables = torch_to_flax(name, read_weights(cfg.teacher), num_classes, **options)
    return jaxvgg.create_model(name, num_classes, **options), variables


def trainable_count(state: TrainState, cfg: TrainConfig) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    labels = jax.tree.leaves(param_labels(state.params, freeze_rule(cfg.model, cfg.freeze)))
    sizes = [int(np.prod(np.shape(p))) for p in jax.tree.leaves(state.params)]
    frozen = sum(n for n, label in zip(sizes, labels, strict=True) if label == "frozen")
    return sum(sizes) - frozen, frozen


def _state_tree(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }


def _meta(ctx: RunContext, **progress: Any) -> dict[str, Any]:
    cfg = ctx.cfg
    return {
        "framework": "jax",
        "model": cfg.model,
        "num_classes": len(ctx.classes),
        "classes": ctx.classes,
        "image_size": cfg.image_size,
        **progress,
    }


def save_state(path: Path, ctx: RunContext, state: TrainState, **progress: Any) -> None:
    """Process 0 writes; in a multi-host run every process waits until the file is there."""
    if ctx.main:
        checkpoint.save(path, local_copy(_state_tree(state)), _meta(ctx, **progress))
    ctx.barrier(f"saved {path.name}")


def load_state(path: Path, state: TrainState, model: str) -> tuple[TrainState, dict[str, Any]]:
    meta, raw = checkpoint.read(path)
    if meta.get("model") != model:
        raise UserError(f"{path}: checkpoint is for {meta.get('model')}, not {model}")
    check_resume_meta(meta, path)
    tree = checkpoint.restore(_state_tree(state), raw, path, model)
    return state.replace(**tree), meta


def evaluate(
    state: TrainState, loader: Loader, eval_step, desc: str = "eval", put: Callable = lambda batch: batch
) -> dict[str, Any]:
    """Loss, accuracy and predictions over ``loader``; ``put`` places a batch (e.g. shards it)."""
    loss = correct = count = 0.0
    labels, preds = [], []
    t0 = time.perf_counter()
    bar = tqdm(loader.epoch(0), total=len(loader), desc=desc, leave=False, unit="batch", disable=not _is_main())
    for batch in bar:
        m = local_copy(eval_step(state, put(batch.as_dict())))
        loss += float(m["loss_sum"])
        correct += float(m["correct"])
        count += float(m["count"])
        # The metrics cover the global batch; with several processes this one holds only its rows.
        keep = np.asarray(m["weight"]) > 0
        labels += np.asarray(m["label"])[keep].tolist()
        preds += np.asarray(m["logits"]).argmax(-1)[keep].tolist()
    return {
        "loss": loss / max(count, 1),
        "acc": correct / max(count, 1),
        "labels": labels,
        "preds": preds,
        "images_per_s": count / (time.perf_counter() - t0),
    }


def fit(cfg: TrainConfig, read_weights: WeightReader = read_jax_weights) -> dict[str, Any] | None:
    """Train as configured; returns the test-split report of the best model (None if stopped mid-epoch).

    ``read_weights`` reads ``--pretrained``/``--init-from``/``--teacher`` (JAX runs by default;
    :func:`jaxvgg.tools.weights.read_weights` reads ``.pth`` files too).
    """
    par = DataParallel.create(cfg.devices)
    par.check_batch_size(cfg.batch_size)
    ctx = prepare_run(cfg, "jax", main=par.is_main, barrier=par.barrier)
    with removed_if_unfinished(ctx):
        return _train(ctx, par, read_weights)


def _train(ctx: RunContext, par: DataParallel, read_weights: WeightReader) -> dict[str, Any] | None:
    cfg = ctx.cfg
    root = ctx.data.root
    shard = (jax.process_index(), jax.process_count())
    train = Loader(
        root,
        ctx.split.samples("train"),
        Pipeline(cfg.image_size, cfg.augment),
        cfg.batch_size,
        train=True,
        seed=cfg.seed,
        workers=cfg.workers,
        shard=shard,
    )
    val = Loader(
        root,
        ctx.split.samples(ctx.val_subset),
        Pipeline(cfg.image_size),
        cfg.batch_size,
        train=False,
        workers=cfg.workers,
        shard=shard,
    )
    state = build_state(cfg, len(ctx.classes), len(train), not cfg.resume, read_weights)
    start_epoch, start_batch, best_acc, bad_epochs, resume_sums = 0, 0, -1.0, 0, {}
    if cfg.resume:
        state, meta = load_state(ctx.out_dir / LAST, state, cfg.model)
        if ctx.config_changed:
            ctx.save_config()
        start_epoch, start_batch = meta["epoch"], meta["batch"]
        best_acc, bad_epochs, resume_sums = meta["best_acc"], meta["bad_epochs"], meta.get("sums", {})
        ctx.history = [h for h in ctx.history if h["epoch"] <= start_epoch]
        print(f"resuming {ctx.out_dir} at epoch {start_epoch + 1}, batch {start_batch}")
    state = par.replicate(state)
    weights = class_weights(ctx)
    step_fn = steps.train_step if weights is None else functools.partial(steps.train_step, class_weights=weights)
    train_step, eval_step = par.compile_steps(step_fn, steps.eval_step)
    n_train, n_frozen = trainable_count(state, cfg)
    print(
        f"{cfg.model}: {n_train:,} trainable" + (f" + {n_frozen:,} frozen" if n_frozen else "") + " parameters, "
        f"{len(train)} batches of {cfg.batch_size} per epoch, "
        f"{len(ctx.split.subsets['train'])} train / {len(val.samples)} {ctx.val_subset} images, "
        f"{par.size} {jax.devices()[0].platform} device(s)"
        + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
    )
    estimate = EpochEstimate(len(train), cfg.epochs - start_epoch)
    first_step_s = None
    t_start = time.perf_counter()
    stopped = "finished"
    for epoch in range(start_epoch, cfg.epochs):
        lr = epoch_lr(cfg.schedule, cfg.lr, epoch, cfg.epochs, cfg.step_size, cfg.gamma)
        t0 = time.perf_counter()
        resumed = epoch == start_epoch and start_batch > 0
        sums = EpochSums(**resume_sums) if resumed else EpochSums()
        batch_idx = start_batch if epoch == start_epoch else 0
        bar = tqdm(
            train.epoch(epoch, batch_idx),
            total=len(train),
            initial=batch_idx,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            dynamic_ncols=True,
            disable=not par.is_main,
        )
        try:  # Ctrl-C while training or validating saves the exact position
            for batch in bar:
                state, m = train_step(state, par.shard(batch.as_dict()))
                m = local_copy(m)
                batch_loss = float(m["loss_sum"])
                if first_step_s is None:
                    first_step_s = time.perf_counter() - t_start
                if message := estimate.step():
                    bar.write(message)
                check_loss(ctx, batch_loss, epoch, batch_idx)
                sums.add(batch_loss, float(m["correct"]), float(m["count"]))
                batch_idx += 1
                bar.set_postfix(sums.postfix(time.perf_counter() - t0))
                if cfg.max_steps is not None and int(state.step) >= cfg.max_steps and batch_idx < len(train):
                    raise _StepLimit
            bar.close()
            train_s = time.perf_counter() - t0
            ev = evaluate(state, val, eval_step, desc=f"{ctx.val_subset} {epoch + 1}", put=par.shard)
        except (KeyboardInterrupt, _StepLimit) as stop:
            bar.close()
            save_state(
                ctx.out_dir / LAST,
                ctx,
                state,
                epoch=epoch,
                batch=batch_idx,
                best_acc=best_acc,
                bad_epochs=bad_epochs,
                sums=dataclasses.asdict(sums),
            )
            announce_stop(ctx, LAST, interrupted=isinstance(stop, KeyboardInterrupt))
            if isinstance(stop, KeyboardInterrupt):
                raise
            return None
        with deferred_interrupt(ctx, LAST):
            check_divergence(ctx, sums.loss / max(sums.count, 1), epoch)
            improved = ev["acc"] > best_acc
            if improved:
                best_acc, bad_epochs = ev["acc"], 0
                if ctx.main:
                    checkpoint.save(
                        ctx.out_dir / BEST, local_copy(state.variables), _meta(ctx, epoch=epoch + 1, val_acc=best_acc)
                    )
            else:
                bad_epochs += 1
            end_epoch(ctx, epoch, lr, sums, ev, t0, train_s, improved)
            save_state(
                ctx.out_dir / LAST, ctx, state, epoch=epoch + 1, batch=0, best_acc=best_acc, bad_epochs=bad_epochs
            )
        if reason := early_stop_reason(ctx, bad_epochs):
            stopped = reason
            break
        if cfg.max_steps is not None and int(state.step) >= cfg.max_steps:
            stopped = f"stopped after --max-steps {cfg.max_steps}"
            break
    report = test_best(ctx, state, eval_step, stopped, first_step_s, par)
    if cfg.prune_amount and ctx.main:
        _, variables, _ = load_variables(ctx.out_dir)
        write_sparse_best(ctx.out_dir, BEST, flax_to_torch(cfg.model, variables))
    return report


def test_best(
    ctx: RunContext, state: TrainState, eval_step, stopped: str, first_step_s: float | None, par: DataParallel
) -> dict:
    cfg = ctx.cfg
    ctx.barrier("best checkpoint written")
    _, variables, meta = load_variables(ctx.out_dir)
    variables = par.replicate(variables)
    state = state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
    test = Loader(
        ctx.data.root,
        ctx.split.samples("test"),
        Pipeline(cfg.image_size),
        cfg.batch_size,
        train=False,
        workers=cfg.workers,
        shard=(jax.process_index(), jax.process_count()),
    )
    ev = evaluate(state, test, eval_step, desc="test", put=par.shard)
    report = finish_run(
        ctx,
        ev,
        meta,
        stopped=stopped,
        framework="jax",
        device=jax.devices()[0].platform,
        first_step_s=first_step_s,
        parameters=trainable_count(state, ctx.cfg),
    )
    return report


def _is_main() -> bool:
    return jax.process_index() == 0

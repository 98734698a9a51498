"""The epoch loop, written once for both frameworks.

A framework supplies a :class:`Trainer` (a few functions over its own state); the driver owns
everything else: resume position, progress bar, Ctrl-C and ``--max-steps``, the NaN/Inf and
divergence stops, validation, best and last checkpoints, early stopping, history and the final
report. So both frameworks stop, resume and report identically by construction (Keras 3's
backend trainers share one skeleton the same way).

Training metrics stay where the framework computed them (on the device, for JAX) and are read
back every ``cfg.log_every`` steps and at the end of each epoch: a per-step read would wait for
every step to finish before the next is dispatched. The first few steps are read at once, for
the time to the first step and the per-epoch estimate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from jaxvgg.core.metrics import classification_report
from jaxvgg.core.progress import progress_bar
from jaxvgg.core.run import (
    EpochEstimate,
    EpochSums,
    RunContext,
    announce_stop,
    check_divergence,
    check_loss,
    deferred_interrupt,
    early_stop_reason,
    end_epoch,
    finish_run,
    write_sparse_best,
)
from jaxvgg.core.weights import StateDict

ESTIMATE_STEPS = 4  # steps 2..5 are timed for the per-epoch estimate, so they are read back at once


class Trainer(Protocol):
    """What one framework gives the driver. Batches, metrics and state are the framework's own."""

    framework: str  # "jax" or "torch"
    device: str  # where it trains, for the report
    batches_per_epoch: int

    def placement(self) -> str:
        """Where it trains, for the banner: devices, processes, and anything else worth saying."""
        ...

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """The training batches of ``epoch`` from batch ``start`` on (the same order on a resume)."""
        ...

    def start_epoch(self, epoch: int) -> float:
        """Get ready to train ``epoch``; returns its learning rate."""
        ...

    def train_step(self, batch: Any) -> Any:
        """One optimizer step; returns the batch's metrics, not yet read back."""
        ...

    def fetch(self, metrics: list[Any]) -> list[tuple[float, float, float]]:
        """(loss sum, correct, count) on the host for each pending batch, in order."""
        ...

    def global_sums(self, sums: EpochSums) -> EpochSums:
        """The epoch's sums over all processes (identity where the metrics are global already)."""
        ...

    def end_epoch(self) -> None:
        """After validation: e.g. step an epoch-wise scheduler."""
        ...

    def evaluate(self, subset: str, desc: str) -> dict[str, Any]:
        """Loss, accuracy, labels, predictions and logits (N × classes) of the current model on ``subset``."""
        ...

    def steps_done(self) -> int: ...

    def save_last(self, progress: dict[str, Any]) -> None:
        """Everything a resume needs, plus ``progress`` in the file's meta (all processes call it)."""
        ...

    def restore_last(self) -> dict[str, Any]:
        """Pour ``last.*`` into the state; returns its meta (``epoch``, ``batch``, ``best_score``, ...)."""
        ...

    def save_best(self, meta: dict[str, Any]) -> None:
        """The current weights as ``best.*`` (called on the main process only)."""
        ...

    def test_best(self, subsets: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """({subset: evaluation}, checkpoint meta) of ``best.*``, read back once for all ``subsets``;
        each evaluation includes the logits, which calibrate the model."""
        ...

    def best_state_dict(self) -> StateDict:
        """``best.*`` as torch-named arrays (for a pruned run's compact file)."""
        ...

    def parameters(self) -> tuple[int, int]:
        """(trainable, frozen) parameter counts."""
        ...


@dataclasses.dataclass
class Position:
    """Where training stands: what ``last.*`` records besides the framework's state."""

    epoch: int = 0
    batch: int = 0
    best_score: float = -1.0  # of --select-by, on the validation split
    bad_epochs: int = 0
    sums: EpochSums = dataclasses.field(default_factory=EpochSums)

    def progress(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "best_score": self.best_score,
            "bad_epochs": self.bad_epochs,
            "sums": dataclasses.asdict(self.sums),
        }


class _StepLimit(Exception):
    pass


class _PendingMetrics:
    """The epoch's batches whose metrics have not been read back yet, and the bar they feed."""

    def __init__(self, ctx: RunContext, trainer: Trainer, position: Position, epoch: int, bar: Any) -> None:
        self.ctx, self.trainer, self.position, self.epoch, self.bar = ctx, trainer, position, epoch, bar
        self.pending: list[Any] = []
        self.t0 = time.perf_counter()

    def add(self, metrics: Any) -> None:
        self.pending.append(metrics)
        self.position.batch += 1

    def read_back(self) -> None:
        """Add the pending batches to the epoch's sums, checking each one's loss."""
        sums, first = self.position.sums, self.position.batch - len(self.pending)
        for i, (loss_sum, correct, count) in enumerate(self.trainer.fetch(self.pending)):
            check_loss(self.ctx, loss_sum / max(count, 1), self.epoch, first + i)
            sums.add(loss_sum, correct, count)
        self.bar.update(len(self.pending))
        self.pending.clear()
        if sums.count:
            self.bar.set_postfix(sums.postfix(time.perf_counter() - self.t0))


def banner(ctx: RunContext, trainer: Trainer) -> str:
    """The line before training: model, parameters, batches, images, where."""
    trainable, frozen = trainer.parameters()
    subsets, cfg = ctx.split.subsets, ctx.cfg
    return (
        f"{cfg.model}: {trainable:,} trainable" + (f" + {frozen:,} frozen" if frozen else "") + " parameters, "
        f"{trainer.batches_per_epoch} batches of {cfg.batch_size} per epoch, "
        f"{len(subsets['train'])} train / {len(subsets[ctx.val_subset])} {ctx.val_subset} images, "
        + trainer.placement()
    )


def resume_position(ctx: RunContext, trainer: Trainer) -> Position:
    """Restore ``last.*`` into the trainer and return the position it was saved at."""
    meta = trainer.restore_last()
    if ctx.config_changed:
        ctx.save_config()
    position = Position(meta["epoch"], meta["batch"], meta["best_score"], meta["bad_epochs"])
    if position.batch > 0:
        position.sums = EpochSums(**meta.get("sums", {}))
    ctx.history = [h for h in ctx.history if h["epoch"] <= position.epoch]
    print(f"resuming {ctx.out_dir} at epoch {position.epoch + 1}, batch {position.batch}")
    return position


def train(ctx: RunContext, trainer: Trainer) -> dict[str, Any] | None:
    """Train from the start or from ``last.*`` (``--resume``), then test the best model.

    Returns the test report, or None when stopped mid-epoch (``--max-steps``); Ctrl-C saves the
    position and re-raises.
    """
    cfg = ctx.cfg
    position = resume_position(ctx, trainer) if cfg.resume else Position()
    print(banner(ctx, trainer))
    first_step_s = None
    t_start = time.perf_counter()
    estimate = EpochEstimate(trainer.batches_per_epoch, cfg.epochs - position.epoch, ESTIMATE_STEPS)
    stopped = "finished"
    steps_seen = 0
    for epoch in range(position.epoch, cfg.epochs):
        lr = trainer.start_epoch(epoch)
        if epoch != position.epoch or position.batch == 0:
            position.epoch, position.batch, position.sums = epoch, 0, EpochSums()
        t0 = time.perf_counter()
        bar = progress_bar(
            total=trainer.batches_per_epoch,
            initial=position.batch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            dynamic_ncols=True,
            disable=not ctx.main,
        )
        metrics = _PendingMetrics(ctx, trainer, position, epoch, bar)
        try:  # Ctrl-C while training or validating saves the exact position
            for batch in trainer.batches(epoch, position.batch):
                metrics.add(trainer.train_step(batch))
                steps_seen += 1
                if steps_seen <= 1 + ESTIMATE_STEPS or len(metrics.pending) >= cfg.log_every:
                    metrics.read_back()
                if first_step_s is None:
                    first_step_s = time.perf_counter() - t_start
                if message := estimate.step():
                    bar.write(message)
                limit = cfg.max_steps is not None and trainer.steps_done() >= cfg.max_steps
                if limit and position.batch < trainer.batches_per_epoch:
                    raise _StepLimit
            metrics.read_back()
            bar.close()
            train_s = time.perf_counter() - t0
            ev = trainer.evaluate(ctx.val_subset, desc=f"{ctx.val_subset} {epoch + 1}")
        except (KeyboardInterrupt, _StepLimit) as stop:
            interrupted = isinstance(stop, KeyboardInterrupt)
            metrics.read_back()  # the saved sums cover every counted batch; a NaN among them stops here instead
            bar.close()
            trainer.save_last(position.progress())
            announce_stop(ctx, ctx.checkpoint("last").name, interrupted=interrupted)
            if interrupted:
                raise
            return None
        trainer.end_epoch()
        with deferred_interrupt(ctx, ctx.checkpoint("last").name):
            check_divergence(ctx, position.sums.loss / max(position.sums.count, 1), epoch)
            figures = classification_report(ev["labels"], ev["preds"], ctx.classes)
            ev["macro_f1"], score = figures["macro_f1"], figures[cfg.select_by]
            improved = score > position.best_score
            if improved:
                position.best_score, position.bad_epochs = score, 0
                if ctx.main:
                    trainer.save_best({"epoch": epoch + 1, "val_acc": ev["acc"], f"val_{cfg.select_by}": score})
            else:
                position.bad_epochs += 1
            end_epoch(ctx, epoch, lr, trainer.global_sums(position.sums), ev, t0, train_s, improved)
            position.epoch, position.batch, position.sums = epoch + 1, 0, EpochSums()
            if cfg.keep_last:
                trainer.save_last(position.progress())
        if reason := early_stop_reason(ctx, position.bad_epochs):
            stopped = reason
            break
        if cfg.max_steps is not None and trainer.steps_done() >= cfg.max_steps:
            stopped = f"stopped after --max-steps {cfg.max_steps}"
            break
    ctx.barrier("best checkpoint written")
    # The temperature and the unsure threshold are fitted on the split that chose the best model.
    evs, meta = trainer.test_best(list(dict.fromkeys(["test", ctx.val_subset])))
    ev, val_ev = evs["test"], evs[ctx.val_subset]
    report = finish_run(
        ctx,
        ev,
        meta,
        stopped=stopped,
        framework=trainer.framework,
        device=trainer.device,
        first_step_s=first_step_s,
        parameters=trainer.parameters(),
        val_ev=val_ev,
    )
    if cfg.prune_amount and ctx.main:
        write_sparse_best(ctx.out_dir, ctx.checkpoint("best").name, trainer.best_state_dict())
    return report

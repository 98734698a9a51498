"""What every training run does around the framework-specific loop; shared by jaxvgg and torchref.

A run folder holds ``config.json``, ``split.json``, ``history.json``, ``metrics.json``,
``curves.png``, ``confusion.png`` and the checkpoints, whichever framework trained it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jaxvgg.config import INVOCATION_SETTINGS, TrainConfig, load_run_config
from jaxvgg.data.folder import ImageFolderIndex, scan_image_folder
from jaxvgg.data.split import Split, load_split, make_split, save_split
from jaxvgg.errors import UserError
from jaxvgg.metrics import classification_report
from jaxvgg.plots import plot_confusion, plot_curves


@dataclasses.dataclass
class RunContext:
    cfg: TrainConfig
    out_dir: Path
    data: ImageFolderIndex
    split: Split
    history: list[dict[str, Any]]
    main: bool = True  # this process writes files (process 0 of a multi-host run)
    barrier: Callable[[str], None] = lambda name: None  # all processes wait here

    @property
    def classes(self) -> list[str]:
        return self.split.classes

    @property
    def val_subset(self) -> str:
        return "val" if self.split.subsets["val"] else "test"


def data_root(cfg: TrainConfig) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir)
    from jaxvgg.data.synthetic import ensure_dataset

    return ensure_dataset(cfg.dataset_seed, cfg.dataset_counts)


def prepare_run(
    cfg: TrainConfig, framework: str, main: bool = True, barrier: Callable[[str], None] = lambda name: None
) -> RunContext:
    """Resolve data and split, create (or reopen, with ``--resume``) the run folder.

    Only the ``main`` process writes; the others wait at ``barrier`` until it has.
    """
    history: list[dict[str, Any]] = []
    if cfg.resume:
        out_dir = Path(cfg.resume)
        saved = load_run_config(out_dir)
        if saved.model != cfg.model and cfg.model != TrainConfig.model:
            raise UserError(f"{out_dir}: run trained {saved.model}, not {cfg.model}")
        # The run continues as it was configured; only settings of this invocation change.
        cfg = dataclasses.replace(saved, resume=cfg.resume, **{k: getattr(cfg, k) for k in INVOCATION_SETTINGS})
        hist = out_dir / "history.json"
        history = json.loads(hist.read_text()) if hist.exists() else []
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = Path(cfg.out_dir or f"runs/{stamp}-{cfg.model}-{framework}")
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
    root = data_root(cfg)
    data = scan_image_folder(root, strict=cfg.strict)
    for path, reason in data.skipped:
        print(f"skipped {root / path}: {reason}", file=sys.stderr)
    split_path = cfg.split_file or (out_dir / "split.json" if cfg.resume else None)
    if split_path:
        split = load_split(split_path, data)
    else:
        split = make_split(data, cfg.split, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    n_train = len(split.subsets["train"])
    if n_train < cfg.batch_size:
        raise UserError(
            f"the training split has {n_train} images, fewer than --batch-size {cfg.batch_size}; "
            "use a smaller batch or more data"
        )
    if not split.subsets["test"]:
        raise UserError(f"{root}: the test split is empty; the data set is too small to split")
    if main:
        save_split(split, root, out_dir / "split.json")
        (out_dir / "config.json").write_text(
            json.dumps({**cfg.to_json(), "framework": framework, "classes": split.classes}, indent=2)
        )
    barrier("run folder ready")
    return RunContext(cfg, out_dir, data, split, history, main, barrier)


@dataclasses.dataclass
class EpochSums:
    """Running sums of one training epoch (exact averages whatever the batch sizes)."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, loss_sum: float, correct: float, count: float) -> None:
        self.loss += loss_sum
        self.correct += correct
        self.count += count

    def postfix(self, seconds: float) -> dict[str, str]:
        return {
            "loss": f"{self.loss / self.count:.4f}",
            "acc": f"{self.correct / self.count:.3f}",
            "img_s": f"{self.count / seconds:.0f}",
        }


def end_epoch(
    ctx: RunContext,
    epoch: int,
    lr: float,
    sums: EpochSums,
    ev: dict[str, Any],
    t0: float,
    train_s: float,
    improved: bool,
) -> dict[str, Any]:
    """Record the epoch in ``history.json`` and ``curves.png`` and print the tutorial's epoch line."""
    n = max(sums.count, 1)
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": sums.loss / n,
        "train_acc": sums.correct / n,
        "val_loss": ev["loss"],
        "val_acc": ev["acc"],
        "seconds": time.perf_counter() - t0,
        "train_images_per_s": sums.count / train_s,
    }
    ctx.history.append(row)
    if ctx.main:
        _write_json(ctx.out_dir / "history.json", ctx.history)
        plot_curves(ctx.history, ctx.out_dir / "curves.png", title=f"{ctx.cfg.model}")
    print(
        f"epoch {epoch + 1}/{ctx.cfg.epochs}  lr {lr:.2e}  train loss {row['train_loss']:.4f} acc "
        f"{row['train_acc']:.3f}  {ctx.val_subset} loss {ev['loss']:.4f} acc {ev['acc']:.3f}"
        f"{'  *best*' if improved else ''}  ({row['seconds']:.0f}s, {row['train_images_per_s']:.0f} img/s)"
    )
    return row


def early_stop_reason(ctx: RunContext, bad_epochs: int) -> str | None:
    if bad_epochs < ctx.cfg.patience:
        return None
    reason = f"early stopping: no better {ctx.val_subset} accuracy for {ctx.cfg.patience} epochs"
    print(reason)
    return reason


def announce_stop(ctx: RunContext, checkpoint_name: str, interrupted: bool) -> None:
    """What a stop in the middle of an epoch (Ctrl-C or --max-steps) tells the user."""
    saved = ctx.out_dir / checkpoint_name
    if interrupted:
        print(f"\ninterrupted: saved {saved}; continue with --resume {ctx.out_dir}")
    else:
        print(f"stopped after --max-steps {ctx.cfg.max_steps}, mid-epoch; continue with --resume {ctx.out_dir}")


@contextlib.contextmanager
def deferred_interrupt(ctx: RunContext, checkpoint_name: str) -> Iterator[None]:
    """Hold Ctrl-C while an epoch's results and checkpoints are written; act on it right after.

    Outside this window the loops catch KeyboardInterrupt themselves and save their position.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        announce_stop(ctx, checkpoint_name, interrupted=True)
        raise KeyboardInterrupt


def non_finite_message(ctx: RunContext, value: float, epoch: int, batch: int, checkpoint_name: str) -> str:
    return (
        f"the training loss became {value} at epoch {epoch + 1}, batch {batch + 1}; stopped. "
        f"The last good checkpoint is {ctx.out_dir / checkpoint_name} (try a lower --lr)"
    )


def finish_run(
    ctx: RunContext,
    ev: dict[str, Any],
    meta: dict[str, Any],
    *,
    stopped: str,
    framework: str,
    device: str,
    first_step_s: float | None,
    parameters: tuple[int, int],
) -> dict[str, Any]:
    """The best model's test report, the same for both frameworks: ``metrics.json``,
    ``confusion.png`` and the closing line. ``parameters`` is (trainable, frozen)."""
    report = {
        **classification_report(ev["labels"], ev["preds"], ctx.classes),
        "loss": ev["loss"],
        "best_epoch": meta["epoch"],
        "stopped": stopped,
        "framework": framework,
        "model": ctx.cfg.model,
        "device": device,
        "time_to_first_step_s": first_step_s,
        "eval_images_per_s": ev["images_per_s"],
        "peak_rss_mb": peak_rss_mb(),
        "parameters": sum(parameters),
        "trainable_parameters": parameters[0],
    }
    if not ctx.main:
        return report
    _write_json(ctx.out_dir / "metrics.json", report)
    plot_confusion(
        report["confusion_matrix"],
        ctx.classes,
        ctx.out_dir / "confusion.png",
        title=f"{ctx.cfg.model}: test accuracy {report['accuracy']:.1%}",
    )
    print(
        f"best model (epoch {meta['epoch']}): test accuracy {report['accuracy']:.1%}, macro-F1 "
        f"{report['macro_f1']:.3f}; outputs in {ctx.out_dir}"
    )
    return report


SPARSE_BEST = "best.sparse.msgpack"  # a pruned run's best weights in the compact form


def write_sparse_best(run_dir: Path, best_name: str, weights: Any, rows: list) -> Path:
    """Write a pruned run's best ``weights`` (any tree of arrays) compactly and report the sparsity
    ``rows`` (:class:`jaxvgg.compress.prune.LayerSparsity`) and both file sizes."""
    from jaxvgg.compress.prune import compact_bytes, format_sparsity

    path = run_dir / SPARSE_BEST
    path.write_bytes(compact_bytes(weights))
    print(format_sparsity(rows))
    dense = (run_dir / best_name).stat().st_size / 1e6
    print(f"{best_name}: {dense:.2f} MB; {SPARSE_BEST}: {path.stat().st_size / 1e6:.2f} MB (same weights)")
    return path


def teacher_model(cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The ``--teacher`` run's model name and model options, announced."""
    from jaxvgg.models.specs import get_spec

    teacher = load_run_config(cfg.teacher)
    print(f"teacher: {teacher.model} from {cfg.teacher} (T = {cfg.temperature}, alpha = {cfg.alpha})")
    return teacher.model, ({"image_size": teacher.image_size} if get_spec(teacher.model).sized else {})


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)

"""What every training run does around the framework-specific loop; shared by jaxvgg and torchref.

A run folder holds ``config.json``, ``split.json``, ``history.json``, ``metrics.json``,
``curves.png``, ``confusion.png``, ``calibration.json`` and the checkpoints (with
``--tensorboard``, event files too), whichever framework trained it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxvgg.core.atomic import write_bytes, write_json, write_text
from jaxvgg.core.calibration import CALIBRATION_FILE, fit_calibration, report_lines, save_calibration
from jaxvgg.core.config import (
    RESUMABLE_CHANGES,
    TrainConfig,
    already_resumed,
    changed_settings,
    load_run_config,
    resume_config,
    run_framework,
)
from jaxvgg.core.errors import UserError
from jaxvgg.core.folder import ImageFolderIndex, scan_image_folder
from jaxvgg.core.metrics import balanced_class_weights, classification_report
from jaxvgg.core.plots import plot_confusion, plot_curves
from jaxvgg.core.sparse import SPARSE_BEST, compact_bytes, format_sparsity, sparsity
from jaxvgg.core.specs import size_options
from jaxvgg.core.split import Split, load_split, make_split, save_split
from jaxvgg.core.synthetic import ensure_dataset
from jaxvgg.core.tensorboard import EVENT_FILES, EpochScalars, require_writer

# The files a run writes, by framework: an --out-dir holding any of them is somebody's run.
# JAX's last state is orbax's folder of step folders (jaxvgg.train.last_state).
CHECKPOINTS = {"jax": ("best.msgpack", "last"), "torch": ("best.pth", "last.pth")}
# An int8 run folder's (scripts/quantize.py): its model, and the float-against-int8 report.
INT8_CHECKPOINTS = {"jax": "best-int8.msgpack", "torch": "best-int8.pth"}
QUANTIZE_FILE = "quantize.json"
RUN_FILES = (
    "config.json",
    "split.json",
    "history.json",
    "metrics.csv",
    "metrics.json",
    "curves.png",
    "confusion.png",
    CALIBRATION_FILE,
    SPARSE_BEST,
    *CHECKPOINTS["jax"],
    *CHECKPOINTS["torch"],
    *INT8_CHECKPOINTS.values(),
    QUANTIZE_FILE,
)
SCRIPTS = {"jax": "scripts/train_jax.py", "torch": "scripts/train_torch.py"}


class TrainingStopped(UserError):
    """The loss became NaN/Inf or grew by orders of magnitude: training cannot go on."""


@dataclasses.dataclass
class RunContext:
    cfg: TrainConfig
    out_dir: Path
    data: ImageFolderIndex
    split: Split
    history: list[dict[str, Any]]
    main: bool = True  # this process writes files (process 0 of a multi-host run)
    barrier: Callable[[str], None] = lambda name: None  # all processes wait here
    framework: str = "jax"
    created: bool = False  # this run made out_dir (so a failure before any checkpoint removes it)
    config_changed: bool = False  # a resumed run whose --epochs/--patience changed: config.json to rewrite
    reference_loss: float | None = None  # the first training loss seen, for the divergence check
    scalars: EpochScalars | None = None  # --tensorboard: opened at the first epoch's end

    @property
    def classes(self) -> list[str]:
        return self.split.classes

    @property
    def val_subset(self) -> str:
        return "val" if self.split.subsets["val"] else "test"

    def checkpoint(self, which: str) -> Path:
        """``best`` or ``last``: this framework's checkpoint file in the run folder."""
        return self.out_dir / CHECKPOINTS[self.framework][("best", "last").index(which)]

    def save_config(self) -> None:
        if self.main:
            write_json(
                self.out_dir / "config.json",
                {**self.cfg.to_json(), "framework": self.framework, "classes": self.split.classes},
            )


def class_weights(ctx: RunContext) -> list[float] | None:
    """Per-class loss weights from the training split (``--class-weights balanced``), or None."""
    if ctx.cfg.class_weights == "none":
        return None
    if ctx.cfg.teacher:
        print("class weights: not used with --teacher (the distillation loss weighs no classes)")
        return None
    labels = [label for _, label in ctx.split.samples("train")]
    weights = balanced_class_weights(labels, len(ctx.classes))
    print("class weights: " + ", ".join(f"{c} {w:.3f}" for c, w in zip(ctx.classes, weights, strict=True)))
    return weights


def data_root(cfg: TrainConfig) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir)
    return ensure_dataset(cfg.dataset_seed, cfg.dataset_counts)


def check_new_run_folder(out_dir: Path, overwrite: bool) -> None:
    """A new run goes into a new or empty folder; ``--overwrite`` lets it replace a run's files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"--out-dir {out_dir}: the folder is not empty; continue that run with --resume {out_dir}, "
            "choose a new folder, or give --overwrite to replace its run files"
        )


def check_inputs_outside(cfg: TrainConfig, out_dir: Path) -> None:
    """``--overwrite`` must not delete the weights or split the run is about to read."""
    if not (cfg.overwrite and out_dir.is_dir()):
        return
    for flag in ("pretrained", "init_from", "teacher", "split_file"):
        source = getattr(cfg, flag)
        if source and Path(source).resolve().is_relative_to(out_dir.resolve()):
            raise UserError(
                f"--{flag.replace('_', '-')} {source}: inside --out-dir {out_dir}, whose run files "
                "--overwrite would delete; copy it elsewhere or choose another --out-dir"
            )


def has_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a ``last/`` folder holding a committed step (orbax names a step's
    folder by its number only once the step is complete; until then it has a temporary name)."""
    if path.is_dir():
        return any(p.is_dir() and p.name.isdigit() for p in path.iterdir())
    return path.is_file()


def _clear_run_files(out_dir: Path) -> None:
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for path in out_dir.glob(EVENT_FILES):  # an earlier run's TensorBoard scalars would mix with this one's
        path.unlink(missing_ok=True)


def _read_history(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "history.json"
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and isinstance(h.get("epoch"), int) for h in history
    ):
        raise UserError(f"{path}: expected a list of per-epoch records")
    return history


def _reopen_run(cfg: TrainConfig, framework: str) -> tuple[TrainConfig, Path, list[dict[str, Any]], bool]:
    """Everything a resumed run needs from its folder, checked before anything is written."""
    out_dir = Path(cfg.resume)
    found = run_framework(out_dir)
    if found != framework:
        raise UserError(f"--resume {out_dir}: a {found} run folder; continue it with {SCRIPTS[found]} --resume")
    saved = load_run_config(out_dir)
    if already_resumed(cfg, saved):  # resolved from the command line: what it asked for stands
        notes = [
            f"--{k} {getattr(cfg, k)} applies from now on (the run had {getattr(saved, k)})"
            for k in RESUMABLE_CHANGES
            if getattr(cfg, k) != getattr(saved, k)
        ]
    else:  # a caller in Python: the settings it changed from the defaults are its request
        cfg, notes = resume_config(out_dir, changed_settings(cfg))
    last = out_dir / CHECKPOINTS[framework][1]
    if not has_checkpoint(last):
        if (out_dir / "last.msgpack").is_file():
            raise UserError(
                f"--resume {out_dir}: its last.msgpack is from an earlier jaxvgg, which this version does not "
                "resume (it keeps the state in last/, with orbax); best.msgpack still loads: --init-from it"
            )
        raise UserError(f"--resume {out_dir}: no {last.name} to continue from")
    for note in notes:
        print(note)
    return cfg, out_dir, _read_history(out_dir), bool(notes)


def prepare_run(
    cfg: TrainConfig, framework: str, main: bool = True, barrier: Callable[[str], None] = lambda name: None
) -> RunContext:
    """Resolve data and split, create (or reopen, with ``--resume``) the run folder.

    Everything is checked before the first file is written, so a run refused here leaves no
    folder behind and a refused ``--resume`` changes nothing. Only the ``main`` process writes;
    the others wait at ``barrier`` until it has.
    """
    history: list[dict[str, Any]] = []
    config_changed = False
    if cfg.resume:
        cfg, out_dir, history, config_changed = _reopen_run(cfg, framework)
    elif cfg.out_dir is None:
        if cfg.num_processes > 1:
            raise UserError("a multi-process run needs --out-dir (the same folder on every process)")
        out_dir = reserve_run_folder(cfg.model, framework)
        try:
            return _prepare(cfg, framework, out_dir, history, config_changed, main, barrier, reserved=True)
        except BaseException:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # still empty: nothing was written into it
            raise
    else:
        out_dir = Path(cfg.out_dir)
        check_new_run_folder(out_dir, cfg.overwrite)
        check_inputs_outside(cfg, out_dir)
        barrier("out-dir checked")  # every process looks before process 0 writes into it
    return _prepare(cfg, framework, out_dir, history, config_changed, main, barrier)


def reserve_run_folder(model: str, framework: str, parent: Path = Path("runs")) -> Path:
    """A new, empty ``runs/<time>-<model>-<framework>[-N]``, created here so that two runs started
    in the same second never share one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = parent / (f"{stamp}-{model}-{framework}" + (f"-{n}" if n > 1 else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"{parent}: no free run folder name for {stamp}-{model}-{framework}")


def _prepare(
    cfg: TrainConfig,
    framework: str,
    out_dir: Path,
    history: list[dict[str, Any]],
    config_changed: bool,
    main: bool,
    barrier: Callable[[str], None],
    reserved: bool = False,
) -> RunContext:
    if cfg.tensorboard and main:  # only the main process writes them
        require_writer()
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
    ctx = RunContext(cfg, out_dir, data, split, history, main, barrier, framework, config_changed=config_changed)
    if main and not cfg.resume:
        ctx.created = reserved or not out_dir.exists()
        if cfg.overwrite and out_dir.is_dir():
            _clear_run_files(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_split(split, root, out_dir / "split.json")
        ctx.save_config()
    barrier("run folder ready")
    return ctx


@contextlib.contextmanager
def removed_if_unfinished(ctx: RunContext) -> Iterator[None]:
    """A run that fails before its first checkpoint leaves no folder behind (only one it created)."""
    try:
        yield
    except BaseException:
        if ctx.main and ctx.created and not any(has_checkpoint(ctx.checkpoint(w)) for w in ("best", "last")):
            _clear_run_files(ctx.out_dir)
            with contextlib.suppress(OSError):
                ctx.out_dir.rmdir()  # only if nothing else was put there
        raise


class EpochEstimate:
    """Times training steps 2 .. k+1 (the first one compiles) and says once what the epochs ahead
    will take, so that a user of a slow setting (the tutorial's 224 px on a CPU) knows at once."""

    def __init__(self, steps_per_epoch: int, epochs_left: int, k: int = 4):
        self.steps_per_epoch, self.epochs_left, self.k = steps_per_epoch, epochs_left, k
        self.seen, self.start = 0, 0.0

    def step(self) -> str | None:
        self.seen += 1
        if self.seen == 1:
            self.start = time.perf_counter()
        elif self.seen == 1 + self.k:
            epoch_s = (time.perf_counter() - self.start) / self.k * self.steps_per_epoch
            total = epoch_s * self.epochs_left
            return (
                f"estimated {epoch_s:.0f} s of training per epoch (from steps 2-{1 + self.k}); "
                f"{self.epochs_left} epoch(s) ≈ {total / 60:.1f} min, plus validation"
            )
        return None


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
    """Record the epoch in ``history.json``, ``metrics.csv``, ``curves.png`` (and TensorBoard's events)
    and print the tutorial's epoch line."""
    n = max(sums.count, 1)
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": sums.loss / n,
        "train_acc": sums.correct / n,
        "val_loss": ev["loss"],
        "val_acc": ev["acc"],
        "val_macro_f1": ev["macro_f1"],
        "val_split": ctx.val_subset,  # "test" when --val-fraction 0 (the tutorial's way)
        "seconds": time.perf_counter() - t0,
        "train_images_per_s": sums.count / train_s,
    }
    ctx.history.append(row)
    if ctx.main:
        write_json(ctx.out_dir / "history.json", ctx.history)
        write_text(ctx.out_dir / "metrics.csv", history_csv(ctx.history))
        plot_curves(ctx.history, ctx.out_dir / "curves.png", title=f"{ctx.cfg.model}", val_split=ctx.val_subset)
        if ctx.cfg.tensorboard:
            if ctx.scalars is None:
                ctx.scalars = EpochScalars(ctx.out_dir, row["epoch"], resumed=bool(ctx.cfg.resume))
            ctx.scalars.write(row)
    print(
        f"epoch {epoch + 1}/{ctx.cfg.epochs}  lr {lr:.2e}  train loss {row['train_loss']:.4f} acc "
        f"{row['train_acc']:.3f}  {ctx.val_subset} loss {ev['loss']:.4f} acc {ev['acc']:.3f}"
        f"{'  *best*' if improved else ''}  ({row['seconds']:.0f}s, {row['train_images_per_s']:.0f} img/s)"
    )
    return row


# timm's summary.csv columns where they apply (eval_top1 in percent, as timm writes it), then ours.
CSV_COLUMNS = ("epoch", "train_loss", "eval_loss", "eval_top1", "lr", "train_acc", "val_split", "seconds")


def history_csv(history: list[dict[str, Any]]) -> str:
    """``metrics.csv``: one row per epoch of ``history.json``, for spreadsheets and plotting tools."""
    lines = [",".join(CSV_COLUMNS)]
    for h in history:
        row = {**h, "eval_loss": h["val_loss"], "eval_top1": 100 * h["val_acc"]}
        lines.append(",".join(str(row[c]) for c in CSV_COLUMNS))
    return "\n".join(lines) + "\n"


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
        if ctx.cfg.keep_last == 0:  # the epoch's end saved no resumable state
            print(f"\ninterrupted after an epoch; --keep-last 0 saved no state to resume; best model in {ctx.out_dir}")
        else:
            announce_stop(ctx, checkpoint_name, interrupted=True)
        raise KeyboardInterrupt


def _last_good(ctx: RunContext) -> str:
    last = ctx.checkpoint("last")
    if last.exists():
        return f"the last good checkpoint is {last} (try a lower --lr in a new run)"
    return "no checkpoint was written yet (try a lower --lr)"


def check_loss(ctx: RunContext, value: float, epoch: int, batch: int) -> None:
    """Stop on a NaN/Inf training loss; remember the first loss for :func:`check_divergence`."""
    if not math.isfinite(value):
        raise TrainingStopped(
            f"the training loss became {value} at epoch {epoch + 1}, batch {batch + 1}; stopped; {_last_good(ctx)}"
        )
    if ctx.reference_loss is None:
        ctx.reference_loss = value


# An epoch whose mean training loss is this many times the run's first loss (or ln(classes), if
# larger) has diverged: Adam at --lr 1e6 reached 7.5e30 with a finite loss and would be "best".
DIVERGENCE_FACTOR = 100.0


def check_divergence(ctx: RunContext, epoch_loss: float, epoch: int) -> None:
    """Stop, before any best-model choice, when the epoch's training loss grew by orders of magnitude."""
    start = max(ctx.reference_loss or 0.0, math.log(max(len(ctx.classes), 2)))
    if epoch_loss > DIVERGENCE_FACTOR * start:
        raise TrainingStopped(
            f"the training loss grew from {start:.3g} to {epoch_loss:.3g} by epoch {epoch + 1}: training "
            f"diverged, stopped without calling this epoch best; {_last_good(ctx)}"
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
    val_ev: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The best model's test report, the same for both frameworks: ``metrics.json``,
    ``confusion.png``, ``calibration.json`` (from ``val_ev``, the best model on the split that
    validated, when given) and the closing lines. ``parameters`` is (trainable, frozen)."""
    if ctx.scalars is not None:  # every epoch is written: let the writer's thread go
        ctx.scalars.close()
        ctx.scalars = None
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
    write_json(ctx.out_dir / "metrics.json", report)
    plot_confusion(
        report["confusion_matrix"],
        ctx.classes,
        ctx.out_dir / "confusion.png",
        title=f"{ctx.cfg.model}: test accuracy {report['accuracy']:.1%}",
    )
    chosen = "on the validation split" if ctx.val_subset == "val" else "on the test split (--val-fraction 0)"
    print(
        f"best model (epoch {meta['epoch']}, chosen {chosen}): test accuracy {report['accuracy']:.1%}, "
        f"macro-F1 {report['macro_f1']:.3f}"
    )
    print("test recall per class: " + ", ".join(f"{c} {m['recall']:.3f}" for c, m in report["per_class"].items()))
    if val_ev is not None:
        record = fit_calibration(
            (val_ev["logits"], val_ev["labels"]), (ev["logits"], ev["labels"]), fitted_on=ctx.val_subset
        )
        save_calibration(ctx.out_dir, record)
        print("\n".join(report_lines(record)))
    print(f"outputs in {ctx.out_dir}")
    return report


def write_sparse_best(run_dir: Path, best_name: str, state_dict: Mapping[str, np.ndarray]) -> Path:
    """Write a pruned run's best weights (torch-named arrays) compactly; report the sparsity and both file sizes."""
    path = run_dir / SPARSE_BEST
    write_bytes(path, compact_bytes(state_dict))
    print(format_sparsity(sparsity(state_dict)))
    dense = (run_dir / best_name).stat().st_size / 1e6
    print(f"{best_name}: {dense:.2f} MB; {SPARSE_BEST}: {path.stat().st_size / 1e6:.2f} MB (same weights)")
    return path


def teacher_model(cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The ``--teacher`` run's model name and model options, announced."""
    teacher = load_run_config(cfg.teacher)
    print(f"teacher: {teacher.model} from {cfg.teacher} (T = {cfg.temperature}, alpha = {cfg.alpha})")
    return teacher.model, (size_options(teacher.model, teacher.image_size))


def teacher_logits_note(images: int, seconds: float) -> str:
    return (
        f"teacher: its logits of the {images:,} training images computed once ({seconds:.1f} s): without "
        "augmentation they are the same every epoch"
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

"""TensorBoard event files of a run's per-epoch scalars (``--tensorboard``), the same for both frameworks.

Both frameworks end an epoch in :func:`jaxvgg.core.run.end_epoch`, so this one writer serves JAX
and PyTorch runs alike, with the values ``history.json`` records. tensorboardX writes the files
(pure Python over protobuf: the ``tensorboard`` extra); it is imported only when a run asks for
it, so the core still needs neither it nor a framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxvgg.core.errors import UserError

EVENT_FILES = "events.out.tfevents.*"  # the names TensorBoard looks for in a folder
INSTALL = "pip install 'jaxvgg[tensorboard]' (or pip install tensorboardX)"
# history.json's per-epoch values and their TensorBoard tags; {val} is the split that chose the
# best model (val, or test with --val-fraction 0), as the row's val_split says.
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/{val}",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/{val}",
    "lr": "lr",
    "seconds": "epoch/seconds",
    "train_images_per_s": "epoch/train_images_per_s",
}


def require_writer() -> None:
    """Refuse a ``--tensorboard`` run at its start, not at its first epoch's end, without tensorboardX."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError as e:
        missing = e.name == "tensorboardX"
        reason = "which is not installed" if missing else f"which cannot be imported ({e})"
        raise UserError(f"--tensorboard needs tensorboardX, {reason}: {INSTALL}") from None


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """One ``history.json`` row as TensorBoard tags and values."""
    return {tag.format(val=row["val_split"]): float(row[key]) for key, tag in SCALARS.items()}


class EpochScalars:
    """An event file in the run folder (one per invocation); each epoch's scalars, at step = epoch,
    are on disk when the epoch's line is printed."""

    def __init__(self, run_dir: Path, first_epoch: int, resumed: bool) -> None:
        from tensorboardX import SummaryWriter

        # tensorboardX names the file by the second it opens it: the epoch keeps a quick resume's
        # file from replacing the one before. purge_step: a resumed run's epochs replace what the
        # earlier files hold from its first epoch on (TensorBoard drops them), as history.json is
        # cut back to the checkpoint.
        self._writer = SummaryWriter(
            logdir=str(run_dir),
            filename_suffix=f".from-epoch-{first_epoch}",
            purge_step=first_epoch if resumed else None,
        )

    def write(self, row: Mapping[str, Any]) -> None:
        for tag, value in epoch_scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=row["epoch"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

"""The learning-rate range test (``--find-lr``; fastai's and Lightning's "lr finder"), written once
for both frameworks.

A short run whose learning rate rises exponentially, step by step, from ``start`` to ``end``: the
loss first barely moves (too small a rate), then falls, then blows up (too large). The suggested
rate is where the smoothed loss falls fastest — before its minimum, where training is quick but
still stable. The run folder gets ``lr_find.json`` and ``lr_find.png``; nothing is trained for real.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxvgg.core.atomic import write_json
from jaxvgg.core.plots import plot_lr_find
from jaxvgg.core.run import RunContext

SMOOTHING = 0.98  # exponential moving average of the loss, debiased (fastai's and Lightning's beta)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum (Lightning's threshold)
SKIP_START = 10  # the first points of the smoothed curve still carry its start-up bias


@dataclasses.dataclass(frozen=True)
class LrSweep:
    """The rates tried: ``steps`` of them, log-spaced from ``start`` to ``end``."""

    start: float = 1e-7
    end: float = 1.0
    steps: int = 100

    def lr(self, step: Any) -> Any:
        """The rate of training step ``step`` (0-based); also takes a traced step (JAX's optax schedule)."""
        return self.start * (self.end / self.start) ** (step / (self.steps - 1))


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> list[float]:
    avg, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest(lrs: Sequence[float], smoothed: Sequence[float]) -> float | None:
    """The rate where the smoothed loss falls fastest against log(lr), up to its minimum; None when the
    curve is too short to say."""
    end = int(np.argmin(smoothed)) + 1
    if end - SKIP_START < 3:
        return None
    log_lr = np.log10(np.asarray(lrs[SKIP_START:end]))
    slope = np.gradient(np.asarray(smoothed[SKIP_START:end]), log_lr)
    return float(lrs[SKIP_START + int(np.argmin(slope))])


def find_lr(ctx: RunContext, trainer: Any, sweep: LrSweep) -> dict[str, Any]:
    """Run the sweep on ``trainer`` (a :class:`jaxvgg.core.driver.Trainer` built to train at
    ``sweep.lr(step)``) over as many epochs as it takes, then report and draw it."""
    print(
        f"learning-rate range test: {ctx.cfg.model} on {trainer.placement()}, {sweep.steps} steps, "
        f"lr {sweep.start:.0e} -> {sweep.end:.0e} (batch {ctx.cfg.batch_size})"
    )
    lrs: list[float] = []
    losses: list[float] = []
    stopped = f"all {sweep.steps} steps"
    epoch = 0
    while len(lrs) < sweep.steps and not stopped.startswith("stopped"):
        trainer.start_epoch(epoch)
        for batch in trainer.batches(epoch, 0):
            lr = float(sweep.lr(len(lrs)))
            ((loss_sum, _, count),) = trainer.fetch([trainer.train_step(batch)])
            lrs.append(lr)
            losses.append(loss_sum / max(count, 1))
            smoothed = smooth(losses)
            if not math.isfinite(losses[-1]) or smoothed[-1] > DIVERGED * min(smoothed):
                stopped = f"stopped at lr {lr:.2e}: the loss blew up"
                break
            if len(lrs) % 10 == 0:
                print(f"  step {len(lrs):3d}  lr {lr:.2e}  loss {losses[-1]:.4f}  smoothed {smoothed[-1]:.4f}")
            if len(lrs) == sweep.steps:
                break
        epoch += 1
    finite = [s if math.isfinite(s) else math.inf for s in smooth(losses)]
    result = {
        "model": ctx.cfg.model,
        "batch_size": ctx.cfg.batch_size,
        "start": sweep.start,
        "end": sweep.end,
        "lrs": lrs,
        "losses": losses,
        "smoothed": finite,
        "suggested_lr": suggest(lrs, finite),
        "stopped": stopped,
    }
    if ctx.main:
        write_json(ctx.out_dir / "lr_find.json", result)
        plot_lr_find(result, ctx.out_dir / "lr_find.png")
    lr = result["suggested_lr"]
    if lr:
        print(f"{stopped}; suggested --lr {lr:.1e} (the steepest fall of the smoothed loss)")
    else:
        print(f"{stopped}; no suggestion: the smoothed loss never fell")
    print(f"wrote {ctx.out_dir / 'lr_find.png'} and lr_find.json")
    return result

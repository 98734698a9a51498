"""The side-by-side report of two run folders (any two frameworks), torch-free."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from jaxvgg.core.atomic import write_text
from jaxvgg.core.config import load_run_config
from jaxvgg.core.errors import UserError
from jaxvgg.core.plots import plot_compare


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A finished run folder's settings, history and test metrics; a one-line error if one is missing."""
    run = Path(run_dir)
    load_run_config(run)  # a clear error for a folder that is not a run, or a damaged config.json
    out: dict[str, Any] = {"dir": str(run)}
    for name, kind in (("config", dict), ("history", list), ("metrics", dict)):
        path = run / f"{name}.json"
        if not path.is_file():
            raise UserError(f"{path}: missing; the run in {run} has not finished (train it first)")
        try:
            out[name] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(out[name], kind) or (name == "history" and not out[name]):
            raise UserError(f"{path}: not what a finished run writes")
    return out


def _steady_train_rate(history: list[dict]) -> float:
    """Median training images/s, leaving out the first epoch (compilation, warm-up) when there are more."""
    rates = [h["train_images_per_s"] for h in history]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def curve_distance(a: list[dict], b: list[dict]) -> dict[str, float]:
    common = min(len(a), len(b))
    out = {"epochs_compared": common}
    for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
        diffs = [abs(a[i][key] - b[i][key]) for i in range(common)]
        out[f"max_abs_diff_{key}"] = max(diffs) if diffs else float("nan")
        out[f"mean_abs_diff_{key}"] = statistics.mean(diffs) if diffs else float("nan")
    return out


def write_report(runs: dict[str, dict[str, Any]], out_dir: str | Path) -> str:
    """``compare.md`` and ``compare.png`` for runs keyed by a label (e.g. "JAX", "PyTorch")."""
    out_dir = Path(out_dir)
    names = list(runs)
    rows = [
        ("model", lambda r: r["config"]["model"]),
        ("device", lambda r: r["metrics"].get("device", "?")),
        ("parameters", lambda r: f"{r['metrics'].get('parameters', 0):,}"),
        ("epochs run (best)", lambda r: f"{len(r['history'])} ({r['metrics'].get('best_epoch')})"),
        ("test accuracy", lambda r: f"{r['metrics']['accuracy']:.2%}"),
        ("test macro-F1", lambda r: f"{r['metrics']['macro_f1']:.3f}"),
        ("train images/s (median epoch)", lambda r: f"{_steady_train_rate(r['history']):.1f}"),
        ("eval images/s (test split)", lambda r: f"{r['metrics'].get('eval_images_per_s', float('nan')):.1f}"),
        (
            "time to first finished step (s)",
            lambda r: f"{r['metrics'].get('time_to_first_step_s') or float('nan'):.2f}",
        ),
        ("peak memory (MB, process RSS)", lambda r: f"{r['metrics'].get('peak_rss_mb', float('nan')):.0f}"),
        ("run folder", lambda r: f"`{r['dir']}`"),
    ]
    lines = ["# JAX vs PyTorch", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(str(get(runs[n])) for n in names) + " |" for label, get in rows]
    if len(names) == 2:
        a, b = (runs[n] for n in names)
        ratio = _steady_train_rate(a["history"]) / _steady_train_rate(b["history"])
        d = curve_distance(a["history"], b["history"])
        lines += [
            "",
            f"Training throughput ratio {names[0]}/{names[1]}: **{ratio:.2f}×**.",
            "",
            f"How far the curves are apart over {d['epochs_compared']} epochs (max / mean absolute difference):",
            "",
        ]
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            lines.append(f"- {key}: {d[f'max_abs_diff_{key}']:.4f} / {d[f'mean_abs_diff_{key}']:.4f}")
        lines += [
            "",
            "Both runs used the same images (one `split.json`), settings and seed; their initial weights and",
            "batch order come from each framework's own random generators, so curves agree in trend, not",
            "bit for bit (the parity tests pin down the exact equalities).",
        ]
    lines += ["", "![curves](compare.png)", ""]
    text = "\n".join(lines)
    write_text(out_dir / "compare.md", text)
    plot_compare({n: r["history"] for n, r in runs.items()}, out_dir / "compare.png")
    return text

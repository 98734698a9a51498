"""Every GPU figure in one run of a few minutes: the device's ceiling, VGG-16 in both frameworks,
the loader, and the tutorial preset.

    python scripts/gpu_check.py --out DIR          # on the GPU machine (PYTHONPATH=. is enough)
    python scripts/gpu_check.py --out DIR --smoke  # the same code paths on a CPU at tiny sizes

Each section has a time budget; one that runs out writes what it has and the next one starts.
Writes DIR/gpu.md (a table for the README) and DIR/gpu.json. Sections:

1. ceiling: a bf16 matmul's TFLOP/s on the device (8192^3; 256^3 with --smoke);
2. vgg16: 224-px train and eval steps, bf16 and fp32, batch 64/128/256, JAX and PyTorch
   (images/s, MFU against the measured ceiling and against the datasheet's 989 TFLOP/s, peak
   device memory, JAX/torch ratio; a training image is 3 x 15.5 GMAC = 92.8 GFLOP);
3. loader: the training loader's images/s at 224 px: PIL threads with 1, 2 and every core, and the
   cached route (decoded once; crop, resize and flip on the device, cache on the device or in host memory);
4. tutorial: ``--preset tutorial`` on the built-in dataset for a few epochs (seconds per epoch,
   accuracy) and the projected time of its 40 epochs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxvgg.core.atomic import write_json, write_text
from jaxvgg.core.cli import main_guard

DATASHEET_BF16_TFLOPS = 989.4  # NVIDIA H100/H200 SXM, dense


class Budget:
    """Seconds left for one section."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def section(results: dict, name: str, budget_s: float, fn: Callable[[Budget], dict]) -> None:
    """Run one section; an error or an exhausted budget is recorded, and the next section starts."""
    t0 = time.perf_counter()
    print(f"== {name} (budget {budget_s:.0f} s)", flush=True)
    try:
        results[name] = fn(Budget(budget_s))
    except Exception as e:  # one broken section must not cost the others their figures
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)}
    results[name]["seconds"] = time.perf_counter() - t0
    print(json.dumps({k: v for k, v in results[name].items() if k != "traceback"}, default=str)[:2000], flush=True)


def ceiling(smoke: bool) -> Callable[[Budget], dict]:
    def run(budget: Budget) -> dict:
        import jax
        import jax.numpy as jnp

        n = 256 if smoke else 8192
        a = jnp.ones((n, n), jnp.bfloat16)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        reps, t0 = 0, time.perf_counter()
        while reps < 3 or (time.perf_counter() - t0 < 2.0 and budget.left() > 0):
            out = matmul(a)
            reps += 1
        out.block_until_ready()
        seconds = (time.perf_counter() - t0) / reps
        return {"device": jax.devices()[0].device_kind, "n": n, "bf16_tflops": 2 * n**3 / seconds / 1e12}

    return run


def reset_peak(framework: str) -> None:
    """torch's peak counter restarts per case; JAX's cannot, so its figure is the process's peak so far."""
    if framework == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def device_peak_bytes(framework: str) -> int | None:
    if framework == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def vgg16(smoke: bool, results: dict) -> Callable[[Budget], dict]:
    def run(budget: Budget) -> dict:
        from jaxvgg.summary import model_macs
        from jaxvgg.tools.commands.bench import bench_jax, bench_torch

        # --smoke: the same calls with the two-conv student at 32 px and one tiny batch.
        size, batches = (32, (2,)) if smoke else (224, (64, 128, 256))
        model, steps = ("student_cnn", 1) if smoke else ("vgg16", 10)
        gflop = 6 * model_macs(model, size) / 1e9  # forward + two backward products, 2 FLOP per MAC
        measured = results.get("ceiling", {}).get("bf16_tflops")
        rows = []
        for precision in ("bf16", "fp32"):
            for batch in batches:
                for framework, bench in (("jax", bench_jax), ("torch", bench_torch)):
                    case = {"framework": framework, "precision": precision, "batch": batch}
                    if budget.left() <= 0:
                        rows.append({**case, "skipped": "budget"})
                        continue
                    reset_peak(framework)
                    try:
                        r = bench(model, size, batch, steps, precision)
                    except Exception as e:  # e.g. out of device memory at the largest batch
                        rows.append({**case, "error": str(e)[:300]})
                        continue
                    train_ips = batch / r["train_step_s"]
                    tflops = train_ips * gflop / 1e3
                    rows.append(
                        {
                            **case,
                            "train_images_per_s": train_ips,
                            "eval_images_per_s": batch / r["eval_step_s"],
                            "train_tflops": tflops,
                            "mfu_measured": tflops / measured if measured else None,
                            "mfu_datasheet": tflops / DATASHEET_BF16_TFLOPS,
                            "peak_device_mb": (device_peak_bytes(framework) or 0) / 2**20,
                            "first_step_s": r["first_step_s"],
                            "conv_route": r.get("conv_route"),
                        }
                    )
        return {"model": model, "image_size": size, "gflop_per_training_image": gflop, "rows": rows}

    return run


def loader(smoke: bool) -> Callable[[Budget], dict]:
    def run(budget: Budget) -> dict:
        from jaxvgg.core.synthetic import ensure_dataset
        from jaxvgg.data import scan_image_folder
        from jaxvgg.tools.commands.bench import loader_rates

        counts = (16, 16, 16) if smoke else (400, 400, 152)
        data = scan_image_folder(ensure_dataset(counts=counts))
        size, batches = (32, 2) if smoke else (224, 16)
        rates = loader_rates(data.root, data.samples, size, 32 if not smoke else 8, batches, budget.left())
        return {"image_size": size, **rates}

    return run


def tutorial(smoke: bool, out_dir: Path) -> Callable[[Budget], dict]:
    def run(budget: Budget) -> dict:
        from jaxvgg.core.config import PRESETS, TrainConfig
        from jaxvgg.train.loop import fit

        preset = dict(PRESETS["tutorial"])
        epochs = 1 if smoke else 3
        settings = {**preset, "epochs": epochs, "out_dir": str(out_dir / "tutorial-run"), "overwrite": True}
        if smoke:
            settings.update(model="student_cnn", image_size=32, batch_size=8, dataset_counts=(16, 16, 16))
        t0 = time.perf_counter()
        report = fit(TrainConfig(**settings))
        wall = time.perf_counter() - t0
        history = json.loads((out_dir / "tutorial-run" / "history.json").read_text())
        epoch_s = [h["seconds"] for h in history]
        steady = min(epoch_s)
        return {
            "epochs_run": len(history),
            "seconds_per_epoch": epoch_s,
            "wall_s": wall,
            "test_accuracy": report["accuracy"] if report else None,
            "projected_40_epochs_min": (wall - sum(epoch_s) + 40 * steady) / 60,
            "image_size": settings.get("image_size", preset.get("image_size")),
        }

    return run


def markdown(results: dict, when: str) -> str:
    ceiling_row = results.get("ceiling", {})
    lines = [
        f"GPU check, {when}: {ceiling_row.get('device', '?')}; bf16 matmul {ceiling_row.get('bf16_tflops', 0):.0f} "
        f"TFLOP/s measured (datasheet {DATASHEET_BF16_TFLOPS:.0f}).",
        "",
        "| framework | precision | batch | train img/s | eval img/s | MFU (measured / datasheet) | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.get("vgg16", {}).get("rows", []):
        if "train_images_per_s" not in r:
            lines.append(
                f"| {r['framework']} | {r['precision']} | {r['batch']} | {r.get('error') or r.get('skipped')} | | | |"
            )
            continue
        mfu = f"{(r['mfu_measured'] or 0):.0%} / {r['mfu_datasheet']:.0%}"
        lines.append(
            f"| {r['framework']} | {r['precision']} | {r['batch']} | {r['train_images_per_s']:,.0f} | "
            f"{r['eval_images_per_s']:,.0f} | {mfu} | {r['peak_device_mb']:,.0f} |"
        )
    load = results.get("loader", {})
    rates = ", ".join(
        f"{k.removeprefix('images_per_s_').replace('_', ' ')} {v:,.0f}"
        for k, v in load.items()
        if k.startswith("images_per_s")
    )
    lines += ["", f"loader at {load.get('image_size', '?')} px, images/s: {rates}"]
    tut = results.get("tutorial", {})
    if "seconds_per_epoch" in tut:
        lines.append(
            f"--preset tutorial: {', '.join(f'{s:.1f}' for s in tut['seconds_per_epoch'])} s per epoch, "
            f"test accuracy {tut['test_accuracy']:.1%} after {tut['epochs_run']} epochs; "
            f"40 epochs projected {tut['projected_40_epochs_min']:.1f} min"
        )
    return "\n".join(lines) + "\n"


@main_guard
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu.md and gpu.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the code paths")
    args = p.parse_args()
    # JAX takes 75% of a GPU's memory at start by default, which would leave torch's cases too little.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scale = 0.1 if args.smoke else 1.0
    results: dict[str, Any] = {"smoke": args.smoke, "host": platform.node(), "cpus": os.cpu_count()}
    section(results, "ceiling", 20 * scale, ceiling(args.smoke))
    section(results, "vgg16", 180 * scale + (60 if args.smoke else 0), vgg16(args.smoke, results))
    section(results, "loader", 30 * scale, loader(args.smoke))
    section(results, "tutorial", 150 * scale + (60 if args.smoke else 0), tutorial(args.smoke, out))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_json(out / "gpu.json", results)
    write_text(out / "gpu.md", markdown(results, when))
    print(markdown(results, when))
    print(f"wrote {out / 'gpu.md'}, {out / 'gpu.json'}")


if __name__ == "__main__":
    main()

"""Measure the tutorial's ways of making VGG-16 light, in JAX and in PyTorch, and tabulate them.

    python scripts/lighten.py [--data-dir DIR] [--image-size 32] [--epochs 7] [--out runs/lighten]

Trains (or re-uses, when a run folder under --out already has its metrics.json) the base model
(--base, default vgg16_bn) and its light variants, each with BatchNorm when the base has it (_bn):
vgg16_slim and vgg16_gap put a lighter head on the base's trained features and fine-tune;
vgg16_dsconv, whose convolutions differ, trains from scratch. Prunes the base by 30% and
fine-tunes it at a tenth of its rate; quantizes it to int8; distils it into student_cnn (--variants picks rows).
Every run uses the first run's split. Then measures each variant in each framework and writes
lighten.md, lighten.json and lighten.png into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from jaxvgg.compile_cache import enable_compilation_cache
from jaxvgg.core.cli import main_guard
from jaxvgg.core.errors import UserError
from jaxvgg.core.hostmem import keep_freed_memory
from jaxvgg.core.machine import describe_cpu

TRAINERS = {"jax": "train_jax.py", "torch": "train_torch.py"}
FRAMEWORK_NAMES = {"jax": "JAX", "torch": "PyTorch"}
CALIBRATION_IMAGES = 64  # the int8 row's, drawn with the run's seed as quantize.py draws them
VARIANTS = ("base", "slim", "gap", "dsconv", "pruned", "int8", "distilled")


def train(framework: str, run_dir: Path, flags: list[str]) -> Path:
    if (run_dir / "metrics.json").exists():
        print(f"== re-using {run_dir}", flush=True)
        return run_dir
    print(f"== {TRAINERS[framework]} {' '.join(flags)} --out-dir {run_dir}", flush=True)
    # lighten owns its run folders: one left unfinished by an earlier call is trained again.
    module = "jaxvgg.tools.commands." + TRAINERS[framework].removesuffix(".py")
    cmd = [sys.executable, "-m", module, *flags, "--out-dir", str(run_dir), "--overwrite"]
    # A process per run: torch's DataLoader forks its workers, which a process running JAX's threads must not.
    t0 = time.perf_counter()
    code = subprocess.call(cmd)
    if code != 0:
        raise UserError(f"{TRAINERS[framework]} failed with exit status {code}; see its output above")
    print(f"== {run_dir.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir


def light_model(variant: str, base: str) -> str:
    """The light variant of ``base``: with BatchNorm when the base has it, so the rows differ in one thing."""
    from jaxvgg.core.specs import get_spec

    return f"{variant}_bn" if get_spec(base).batch_norm else variant


def variants_for(framework: str, out: Path, common: list[str], args: argparse.Namespace) -> list:
    from jaxvgg.core.specs import get_spec
    from jaxvgg.tools.lighten import Variant

    def run(name: str, *flags: str) -> str:
        return str(train(framework, out / f"{framework}-{name}", [*common, *flags]))

    b = args.base
    base = run(b, "--model", b)
    ft = ["--epochs", str(args.finetune_epochs)]
    base_lr = args.lr or get_spec(b).default_lr
    # A tenth of the base's rate: at the full rate one epoch of fine-tuning knocked the pruned base
    # down from 87.4% to 74.8% (PyTorch, docs/compression.md).
    prune = ["--init-from", base, "--prune-amount", str(args.prune_amount), *ft, "--lr", str(base_lr / 10)]

    def light(variant: str, label: str) -> Variant:
        name = light_model(variant, b)
        return Variant(f"{name} ({label})", name, run(name, "--model", name, "--epochs", str(args.dsconv_epochs)))

    def light_head(variant: str, label: str) -> Variant:
        """The base's conv features under a new, lighter head, fine-tuned at the base's rate."""
        name = light_model(variant, b)
        flags = ["--model", name, "--pretrained", base, *ft, "--lr", str(base_lr)]
        return Variant(f"{name} ({label}; base's features, fine-tuned)", name, run(name, *flags))

    # Each entry trains (lazily) only when selected.
    table = {
        "base": lambda: Variant(b, b, base),
        "slim": lambda: light_head("vgg16_slim", "FC 1024-256"),
        "gap": lambda: light_head("vgg16_gap", "global average pool"),
        "dsconv": lambda: light("vgg16_dsconv", "depthwise-separable"),
        "pruned": lambda: Variant(
            f"{b} pruned {args.prune_amount:.0%} + fine-tuned",
            b,
            run(f"{b}_pruned", "--model", b, *prune),
            "pruned",
        ),
        "int8": lambda: Variant(f"{b} int8 (post-training)", b, base, "int8"),
        "distilled": lambda: Variant(
            f"student_cnn distilled from {b}",
            "student_cnn",
            run("student_distilled", "--model", "student_cnn", "--teacher", base, "--epochs", str(args.distill_epochs)),
        ),
    }
    return [table[name]() for name in VARIANTS if name in args.variants]


@main_guard
def main() -> None:
    keep_freed_memory()  # see jaxvgg/core/hostmem.py: freed buffers are reused, not faulted in again
    enable_compilation_cache()  # a second run loads its compiled steps
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/lighten")
    p.add_argument("--data-dir", help="ImageFolder root (default: a subset of the built-in dataset)")
    p.add_argument(
        "--dataset-counts", type=int, nargs=3, default=[500, 500, 150], metavar="N", help="built-in dataset size"
    )
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=7, help="epochs of the base, trained from scratch")
    p.add_argument(
        "--dsconv-epochs",
        type=int,
        default=8,
        help="epochs of the depthwise-separable model, from scratch (its convolutions cannot borrow the base's)",
    )
    p.add_argument(
        "--distill-epochs",
        type=int,
        default=5,
        help="epochs of student_cnn learning from the base (its logits of the training images computed once)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=1,
        help="epochs of fine-tuning from the base: the slim and GAP heads on its features, the pruned base",
    )
    p.add_argument("--lr", type=float, help="one learning rate for every model (default: each model's own)")
    p.add_argument("--prune-amount", type=float, default=0.3)
    p.add_argument("--framework", choices=["both", "jax", "torch"], default="both")
    p.add_argument("--base", default="vgg16_bn", help="the model that is pruned, quantized and distilled")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="rows to build")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per latency figure (median)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # --keep-last 0: these runs are never resumed, so no resumable state is written each epoch
    common = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--keep-last", "0"]
    common += ["--epochs", str(args.epochs)] + (["--lr", str(args.lr)] if args.lr else [])
    common += ["--data-dir", args.data_dir] if args.data_dir else ["--dataset-counts", *map(str, args.dataset_counts)]
    frameworks = ["jax", "torch"] if args.framework == "both" else [args.framework]

    variants = {}
    for fw in frameworks:
        flags = list(common)
        first = out / f"{frameworks[0]}-{args.base}" / "split.json"
        if fw != frameworks[0] or first.exists():
            flags += ["--split-file", str(first)]
        variants[fw] = variants_for(fw, out, flags, args)
    train_s = time.perf_counter() - t0

    from jaxvgg.summary import model_macs
    from jaxvgg.tools.lighten import format_table, jax_row, load_images, plot

    base_run = str(out / f"{frameworks[0]}-{args.base}")
    test = load_images(base_run, "test")
    calibration, _, _ = load_images(base_run, "train", calibration=CALIBRATION_IMAGES)
    rows = []
    for fw in frameworks:
        measure = jax_row
        if fw == "torch":
            from jaxvgg.tools.lighten_torch import torch_row as measure
        for v in variants[fw]:
            print(f"== measuring {v.name} ({FRAMEWORK_NAMES[fw]})", flush=True)
            rows.append(measure(v, test, calibration, model_macs(v.model, args.image_size), out, args.repeats))
    table = format_table(rows)
    total_s = time.perf_counter() - t0
    header = (
        f"# Making VGG-16 light: measured\n\n"
        f"{len(test[1])} test images at {args.image_size} px; base trained {args.epochs} epochs, "
        f"dsconv {args.dsconv_epochs}, from scratch, student_cnn distilled from it {args.distill_epochs} "
        f"(batch {args.batch_size}, Adam lr {args.lr or 'per model'}); "
        f"the slim and GAP heads on the base's features fine-tuned {args.finetune_epochs} epoch(s) at the base's "
        f"rate, the pruned base (L1 per layer) at a tenth of it; int8: per-channel weights, activations calibrated "
        f"on {CALIBRATION_IMAGES} training images drawn across the classes.\n"
        f"Machine: {describe_cpu()}; training {train_s / 60:.1f} min, "
        f"total {total_s / 60:.1f} min.\nCommand: `python scripts/lighten.py {' '.join(sys.argv[1:])}`\n\n"
    )
    (out / "lighten.md").write_text(header + table + "\n")
    (out / "lighten.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    plot(rows, out / "lighten.png")
    print(table)
    print(f"wrote {out / 'lighten.md'}, {out / 'lighten.png'} in {total_s / 60:.1f} min")


if __name__ == "__main__":
    main()

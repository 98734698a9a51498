"""Train the same model on the same images with the same settings in JAX and in PyTorch, and report.

    python scripts/compare.py [--out runs/compare] [any train_jax.py flag ...]
    python scripts/compare.py --jax-run runs/A --torch-run runs/B     # only the report, from existing runs

Writes compare.md and compare.png into --out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from jaxvgg.core.cli import main_guard
from jaxvgg.core.errors import UserError
from jaxvgg.tools.compare import load_run, write_report


def train(script: str, flags: list[str], out: Path) -> Path:
    print(f"== {script} {' '.join(flags)} --out-dir {out}", flush=True)
    # compare owns its --out folder: a second call with the same --out trains both runs again.
    module = "jaxvgg.tools.commands." + script.removesuffix(".py")
    code = subprocess.call([sys.executable, "-m", module, *flags, "--out-dir", str(out), "--overwrite"])
    if code != 0:
        raise UserError(f"{script} failed with exit status {code}; see its output above")
    return out


@main_guard
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="report folder (default runs/<time>-compare)")
    p.add_argument("--jax-run", help="re-use this JAX run folder instead of training")
    p.add_argument("--torch-run", help="re-use this PyTorch run folder instead of training")
    p.add_argument("--skip", choices=["jax", "torch"], help="leave one framework out")
    args, flags = p.parse_known_args()
    if "--out-dir" in flags or "--split-file" in flags:
        raise UserError("compare.py sets --out-dir and --split-file itself; use --out")
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-compare")
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    if args.skip != "jax":
        jax_dir = Path(args.jax_run) if args.jax_run else train("train_jax.py", flags, out / "jax")
        runs["JAX"] = load_run(jax_dir)
    if args.skip != "torch":
        split = ["--split-file", str(Path(runs["JAX"]["dir"]) / "split.json")] if "JAX" in runs else []
        torch_dir = Path(args.torch_run) if args.torch_run else train("train_torch.py", [*flags, *split], out / "torch")
        runs["PyTorch"] = load_run(torch_dir)
    try:
        print(write_report(runs, out))
    except (FileNotFoundError, KeyError) as e:
        raise UserError(f"a run folder is incomplete: {e}") from e
    print(f"report: {out / 'compare.md'}, {out / 'compare.png'}")


if __name__ == "__main__":
    main()

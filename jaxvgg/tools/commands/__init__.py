"""The ``jaxvgg`` command: one subcommand per script (``jaxvgg train``, ``python -m jaxvgg train``).

``scripts/*.py`` are shims over these modules, so the README's commands and the installed
command run the same code.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module in this package, what it does)
COMMANDS = {
    "train": ("train_jax", "train a model in JAX (the main job)"),
    "train-torch": ("train_torch", "train a model in PyTorch, the tutorial's loop"),
    "predict": ("predict", "classify images with a trained run (JAX or PyTorch)"),
    "evaluate": ("evaluate", "re-evaluate a run's best model on its test split or a folder"),
    "compare": ("compare", "train in both frameworks on one split and report"),
    "summary": ("summary", "print a torchsummary-style table of any model"),
    "export": ("export", "write a run's best model as a plain .pth, ONNX or Flax msgpack"),
    "lighten": ("lighten", "the tutorial's light-model table, both frameworks"),
    "quantize": ("quantize", "an int8 run folder of a run, either framework"),
    "distill": ("distill", "knowledge distillation into a small student"),
    "bench": ("bench", "time train and eval steps, JAX against PyTorch"),
    "make-dataset": ("make_dataset", "draw the built-in potato-leaf dataset into a folder"),
    "gpu-check": ("gpu_check", "every GPU figure in a few minutes (--smoke on a CPU)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: jaxvgg COMMAND [flags]   (jaxvgg COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, *rest = argv
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"jaxvgg.tools.commands.{COMMANDS[name][0]}")
    sys.argv = [f"jaxvgg {name}", *rest]
    module.main()

"""Knowledge distillation: train a student on a teacher run's softened outputs and the labels.

python scripts/distill.py --teacher RUN_DIR [--student student_cnn] [--temperature 4] [--alpha 0.7]
                          [--framework jax|torch] [any train_jax.py flag ...]

Writes a normal run folder (see train_jax.py); the teacher may be a JAX or a PyTorch run.
"""

from __future__ import annotations

import argparse

from jaxvgg.compile_cache import enable_compilation_cache
from jaxvgg.core.cli import main_guard
from jaxvgg.core.config import add_arguments, config_from_args
from jaxvgg.core.errors import UserError
from jaxvgg.core.hostmem import keep_freed_memory
from jaxvgg.tools.weights import read_weights


@main_guard
def main() -> None:
    keep_freed_memory()  # see jaxvgg/core/hostmem.py: freed buffers are reused, not faulted in again
    enable_compilation_cache()  # a second run loads its compiled steps
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", help="the student model (default: --model, i.e. student_cnn)")
    parser.add_argument("--framework", choices=["jax", "torch"], default="jax")
    add_arguments(parser)
    args = parser.parse_args()
    if not args.teacher:
        raise UserError("--teacher RUN_DIR is required: a trained run folder")
    if args.student:
        args.model = args.student
    cfg = config_from_args(args)
    if args.framework == "jax":
        from jaxvgg.train.loop import fit

        fit(cfg, read_weights)
    else:
        from torchref.train import fit as torch_fit

        torch_fit(cfg, read_weights=read_weights)


if __name__ == "__main__":
    main()

"""Train a model in PyTorch: the tutorial's loop, with the same flags and outputs as train_jax.py.

python scripts/train_torch.py                          # built-in dataset
python scripts/train_torch.py --split-file runs/<jax run>/split.json   # exactly the JAX run's images
"""

from __future__ import annotations

import argparse

from jaxvgg.core.cli import main_guard
from jaxvgg.core.config import add_arguments, config_from_args
from jaxvgg.core.hostmem import keep_freed_memory
from jaxvgg.tools.weights import read_weights


@main_guard
def main() -> None:
    keep_freed_memory()  # see jaxvgg/core/hostmem.py: freed buffers are reused, not faulted in again
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = add_arguments(parser)
    groups["devices"].add_argument("--device", help="force cpu, cuda or mps (default: MPS, then CUDA, then CPU)")
    args = parser.parse_args()
    cfg = config_from_args(args)
    from torchref.train import fit

    fit(cfg, args.device, read_weights)  # --pretrained/--init-from/--teacher: runs of either framework


if __name__ == "__main__":
    main()

"""Train a model in JAX: the main job.

python scripts/train_jax.py                       # built-in dataset, a few minutes on a laptop CPU
python scripts/train_jax.py --preset tutorial --data-dir PotatoPlants/
python scripts/train_jax.py --coordinator HOST:PORT --num-processes N --process-id I ...   # one per host
"""

from __future__ import annotations

import argparse

from jaxvgg.compile_cache import enable_compilation_cache
from jaxvgg.core.cli import main_guard
from jaxvgg.core.config import add_arguments, config_from_args
from jaxvgg.core.hostmem import keep_freed_memory
from jaxvgg.tools.weights import read_weights


@main_guard
def main() -> None:
    keep_freed_memory()  # see jaxvgg/core/hostmem.py: freed buffers are reused, not faulted in again
    enable_compilation_cache()  # a second run loads its compiled steps
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args()
    from jaxvgg.parallel import initialize

    # Before anything touches a JAX backend, which validating the flags may do.
    initialize(args.coordinator, args.num_processes or 1, args.process_id or 0)
    cfg = config_from_args(args)
    from jaxvgg.train.loop import fit

    fit(cfg, read_weights)  # --pretrained/--init-from/--teacher: .pth files and runs of either framework
    if not cfg.data_dir and not cfg.find_lr and cfg.model != "vgg16_manual":
        print(
            "\nThe tutorial's full VGG-16 run on your own PlantVillage potato images:\n"
            "  python scripts/train_jax.py --preset tutorial --data-dir PotatoPlants/"
        )


if __name__ == "__main__":
    main()

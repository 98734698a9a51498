"""Train a model in JAX: the main job.

python scripts/train_jax.py                       # built-in dataset, a few minutes on a laptop CPU
python scripts/train_jax.py --preset tutorial --data-dir PotatoPlants/
"""

from __future__ import annotations

import argparse

from jaxvgg.cli import main_guard
from jaxvgg.config import add_arguments, config_from_args


@main_guard
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args())
    from jaxvgg.train.loop import fit

    fit(cfg)
    if not cfg.data_dir and cfg.model != "vgg16_manual":
        print(
            "\nThe tutorial's full VGG-16 run on your own PlantVillage potato images:\n"
            "  python scripts/train_jax.py --preset tutorial --data-dir PotatoPlants/"
        )


if __name__ == "__main__":
    main()

"""Train a model in JAX: the main job.

A shim: the command is :mod:`jaxvgg.tools.commands.train_jax` (also ``jaxvgg train ...``).
"""

from jaxvgg.tools.commands.train_jax import main

if __name__ == "__main__":
    main()

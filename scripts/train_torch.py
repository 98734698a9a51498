"""Train a model in PyTorch: the tutorial's loop, with the same flags and outputs as train_jax.py.

A shim: the command is :mod:`jaxvgg.tools.commands.train_torch` (also ``jaxvgg train-torch ...``).
"""

from jaxvgg.tools.commands.train_torch import main

if __name__ == "__main__":
    main()

"""Time the train step and the eval step of JAX and PyTorch on the same model, batch and data.

A shim: the command is :mod:`jaxvgg.tools.commands.bench` (also ``jaxvgg bench ...``).
"""

from jaxvgg.tools.commands.bench import main

if __name__ == "__main__":
    main()

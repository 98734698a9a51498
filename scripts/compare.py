"""Train the same model on the same images with the same settings in JAX and in PyTorch, and report.

A shim: the command is :mod:`jaxvgg.tools.commands.compare` (also ``jaxvgg compare ...``).
"""

from jaxvgg.tools.commands.compare import main

if __name__ == "__main__":
    main()

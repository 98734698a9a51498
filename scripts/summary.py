"""Print a torchsummary-style table of any model, in JAX or PyTorch.

A shim: the command is :mod:`jaxvgg.tools.commands.summary` (also ``jaxvgg summary ...``).
"""

from jaxvgg.tools.commands.summary import main

if __name__ == "__main__":
    main()

"""Measure the tutorial's ways of making VGG-16 light, in JAX and in PyTorch, and tabulate them.

A shim: the command is :mod:`jaxvgg.tools.commands.lighten` (also ``jaxvgg lighten ...``).
"""

from jaxvgg.tools.commands.lighten import main

if __name__ == "__main__":
    main()

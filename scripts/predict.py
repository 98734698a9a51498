"""Classify one image, or every image in a folder, with a trained run (JAX or PyTorch).

A shim: the command is :mod:`jaxvgg.tools.commands.predict` (also ``jaxvgg predict ...``).
"""

from jaxvgg.tools.commands.predict import main

if __name__ == "__main__":
    main()

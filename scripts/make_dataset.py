"""Draw the built-in potato-leaf dataset (ImageFolder layout, 256x256 JPEGs).

A shim: the command is :mod:`jaxvgg.tools.commands.make_dataset` (also ``jaxvgg make-dataset ...``).
"""

from jaxvgg.tools.commands.make_dataset import main

if __name__ == "__main__":
    main()

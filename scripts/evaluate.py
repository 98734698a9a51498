"""Re-evaluate a run's best model on its test split (or on another ImageFolder).

A shim: the command is :mod:`jaxvgg.tools.commands.evaluate` (also ``jaxvgg evaluate ...``).
"""

from jaxvgg.tools.commands.evaluate import main

if __name__ == "__main__":
    main()

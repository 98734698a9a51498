"""Knowledge distillation: train a student on a teacher run's softened outputs and the labels.

A shim: the command is :mod:`jaxvgg.tools.commands.distill` (also ``jaxvgg distill ...``).
"""

from jaxvgg.tools.commands.distill import main

if __name__ == "__main__":
    main()

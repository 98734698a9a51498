"""Every GPU figure in one run of a few minutes (--smoke: the same code paths on a CPU).

A shim: the command is :mod:`jaxvgg.tools.commands.gpu_check` (also ``jaxvgg gpu-check ...``).
"""

from jaxvgg.tools.commands.gpu_check import main

if __name__ == "__main__":
    main()

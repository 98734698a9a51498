"""Post-training int8 quantization of a run into a new run folder (either framework).

A shim: the command is :mod:`jaxvgg.tools.commands.quantize` (also ``jaxvgg quantize ...``).
"""

from jaxvgg.tools.commands.quantize import main

if __name__ == "__main__":
    main()

"""Export a run's best model: a plain state_dict (.pth), ONNX, or Flax variables (.msgpack).

A shim: the command is :mod:`jaxvgg.tools.commands.export` (also ``jaxvgg export ...``).
"""

from jaxvgg.tools.commands.export import main

if __name__ == "__main__":
    main()

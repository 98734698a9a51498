"""``python -m jaxvgg COMMAND``: the same as the ``jaxvgg`` command."""

from jaxvgg.tools.commands import main

main()

"""Errors meant for the user: scripts print them as one line, without a traceback."""


class UserError(Exception):
    """Bad input the user can fix (a path, a flag, a file): the message says which and why."""


class WeightMismatchError(UserError, ValueError):
    """A state_dict or checkpoint whose names or shapes do not fit the model."""

"""Exceptions that the command-line tools turn into a one-line message and a non-zero exit."""


class KwsError(Exception):
    """Base class of every user-facing error of the project."""


class InputError(KwsError, ValueError):
    """Bad user input: a wav file, an array's shape/dtype/values, a command-line argument."""


class ModelError(KwsError, ValueError):
    """A missing, corrupt or inconsistent model file."""

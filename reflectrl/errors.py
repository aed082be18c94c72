"""Errors that the CLI reports as one line (``reflectrl: error: ...``) with a non-zero exit."""


class ReflectRLError(RuntimeError):
    """A problem with the user's input or files, described in one line."""

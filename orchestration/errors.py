"""The one exception type users see: a single clear line, never a traceback."""


class ProgressError(Exception):
    """A problem the user can act on; its message is printed as one line."""

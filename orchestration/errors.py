"""The one exception type users see: a single clear line, never a traceback."""


class ProgressError(Exception):
    """A problem the user can act on; its message is printed as one line."""


class ConnectionLost(ProgressError):
    """The connection to the database broke during a run (a server restart, a
    terminated session, the network): what was not finished is still queued."""

"""The one exception type that the command-line tools turn into a one-line message."""


class MdiffError(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint) that they can fix.

    The command-line entry points print ``<prog>: error: <message>`` on stderr and exit 2
    instead of a traceback; library callers catch it like any other exception.
    """

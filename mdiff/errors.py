"""The one exception type that the command-line tools turn into a one-line message."""


class MdiffError(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint) that they can fix.

    The command-line entry points print ``<prog>: error: <message>`` on stderr and exit 2
    instead of a traceback; library callers catch it like any other exception.
    """


def compiled_kernels():
    """The Cython extension ``mdiff._metrics``, or MdiffError saying how to get it: it is
    missing when mdiff is imported from a source folder that was never built (e.g. ``python
    -m mdiff`` run from a clone after ``pip install .``, where the folder shadows the installed
    package)."""
    try:
        from . import _metrics
    except ImportError:
        import os

        here = os.path.dirname(os.path.abspath(__file__))
        raise MdiffError(f"mdiff's compiled kernels (mdiff._metrics) are missing in {here}: "
                         "build them there with pip install -e . (needs a C compiler), or run "
                         "from another folder so that the installed mdiff is used") from None
    return _metrics

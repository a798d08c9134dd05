"""One exception type for every user-facing problem of the PyTorch side (bad input, missing file,
wrong shape). A ``runtime.errors.RramError``: the CLI turns it into a one-line ``rram: error: ...``
message and exit status 2, with no traceback.
"""
from runtime.errors import RramError


class UserError(RramError):
    """A problem with what the user gave us; the message must name the problem in one line."""

"""One exception type for every user-facing problem (bad input, missing file, wrong shape).

The CLI turns it into a one-line ``rram: error: ...`` message and exit status 2, with no traceback.
"""


class UserError(Exception):
    """A problem with what the user gave us; the message must name the problem in one line."""

"""The one exception type the passes raise for user-facing problems.

``rram`` prints it as one line (``rram: error: ...``) with exit status 2; no output file is written.
"""
from runtime.errors import RramError


class PassError(RramError):
    """Bad input (not ONNX, fails the checker, unknown pass or rate) or a failed verification."""

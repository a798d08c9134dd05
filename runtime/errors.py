"""The project's error types. Every user-facing problem derives from ``RramError``, which ``rram``
prints as one line (``rram: error: ...``) with exit status 2, no traceback and no partial output.
It lives here, in the lowest layer, so that ``runtime``, ``passes`` and ``toolchain`` can all
derive from it without importing upwards."""


class RramError(Exception):
    """A problem with what the user gave us; the message names it in one line."""


class RuntimeInputError(RramError):
    """Bad input to the runtime, the crossbar mapping or the quantizer."""


class QuantizeError(RuntimeInputError):
    """Bad input to the quantizer or a refused artifact folder."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """A library's exception text as one short line, for a ``RramError`` message."""
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")

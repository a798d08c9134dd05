"""``rram``: the toolchain's command line. Each subcommand lives in ``toolchain/commands/<name>.py``
with ``add_parser(subparsers)`` and ``run(args) -> int``.

Every user-facing problem (UserError, or a passes/runtime input error) is printed as one line,
``rram: error: ...``, with exit status 2 and no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

COMMANDS = ["eval", "train", "recalibrate", "export", "passes", "quantize", "validate", "merge",
            "plot", "pipeline"]


def user_error_types() -> tuple[type[BaseException], ...]:
    """UserError plus the input-error types of the passes and runtime packages, when present."""
    types: list[type[BaseException]] = [UserError]
    for mod, name in (("passes.errors", "PassError"), ("runtime.errors", "RuntimeInputError")):
        try:
            types.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block), like every other error."""

    def error(self, message: str):
        self.exit(2, f"rram: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rram", description="Deploy DNNs to RRAM crossbars with fault-aware (drop-connect) training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"toolchain.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument already reported in one line
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except user_error_types() as e:
        print(f"rram: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. permission denied, disk full: still one line, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"rram: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rram: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``rram``: the toolchain's command line. Each subcommand lives in ``toolchain/commands/<name>.py``
with ``add_parser(subparsers)`` and ``run(args) -> int``.

Every user-facing problem (a ``runtime.errors.RramError``: UserError, PassError, RuntimeInputError)
is printed as one line, ``rram: error: ...``, with exit status 2 and no traceback. ``run(argv)``
does the same work and raises instead (``toolchain.api`` builds on it).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from runtime.errors import RramError

COMMANDS = ["eval", "train", "recalibrate", "export", "passes", "quantize", "validate", "merge",
            "plot", "sensitivity", "calibrate", "place", "pipeline"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block), like every other error, that
    points to the help of the subcommand given: argparse reports an unknown option of
    ``rram quantize`` from the top-level parser, which would otherwise say `rram --help`."""

    command: str | None = None  # set on the top-level parser: the subcommand the argument list names

    def help_hint(self) -> str:
        return f"see `rram {self.command} --help`" if self.command else f"see `{self.prog} --help`"

    def error(self, message: str):
        self.exit(2, f"rram: error: {message} ({self.help_hint()})\n")


class RaisingParser(OneLineParser):
    """For ``run``: a bad argument is a UserError (``--help`` and ``--version`` still exit)."""

    def error(self, message: str):
        from .errors import UserError

        raise UserError(f"{message} ({self.help_hint()})")


class DefaultsFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the text already says it, or there is
    none to say (a flag that is off, an option with no default value)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if "default" in text.lower() or d is None or d is False or d is argparse.SUPPRESS or d == []:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return f"{text} (default: %(default)s)"


def build_parser(parser_class: type[argparse.ArgumentParser] = OneLineParser,
                 only: str | None = None) -> argparse.ArgumentParser:
    """The ``rram`` parser; with ``only`` (a command name), just that subcommand: importing every
    command module pulls in torch (about 3 s), which ``validate``, ``merge`` or ``plot`` do not
    need, and a campaign's whole-process time is a measured figure (docs/runtime.md). ``only=""``:
    no subcommand at all (``rram --version``, ``rram -V``: nothing heavy imported)."""
    parser = parser_class(
        prog="rram", description="Deploy DNNs to RRAM crossbars with fault-aware (drop-connect) training.")
    if isinstance(parser, OneLineParser) and only in COMMANDS:
        parser.command = only
    parser.add_argument("-V", "--version", action="version", version=f"rram {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = sub.add_parser
    # every subcommand's --help shows each option's default
    sub.add_parser = lambda *a, **k: add(*a, **{"formatter_class": DefaultsFormatter, **k})
    for name in ([only] if only in COMMANDS else [] if only == "" else COMMANDS):
        importlib.import_module(f"toolchain.commands.{name}").add_parser(sub)
    return parser


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as package_version

    try:
        return package_version("rram-toolchain")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown (not installed)"


def run(argv: list[str]) -> int:
    """``rram ARGV`` in this process, raising instead of printing: a bad argument or bad input is
    a ``RramError`` (``UserError`` for arguments), a failed read or write an ``OSError``. Returns
    the command's exit status (0 on success; ``rram pipeline`` may return another)."""
    argv = [str(a) for a in argv]
    args = build_parser(RaisingParser, only=_command_of(argv)).parse_args(argv)
    return int(args.func(args) or 0)


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ARGV names first (``rram`` has no global option that takes a value); ""
    for ``rram --version`` / ``rram -V`` without one (no command module to import)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None and {"-V", "--version"} & set(argv) and not {"-h", "--help"} & set(argv):
        return ""
    return command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(only=_command_of(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument already reported in one line
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except RramError as e:
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

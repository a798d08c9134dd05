"""`rram validate`, `merge` and `plot` never import torch (about 3 s of every campaign's
whole-process time, a figure the benchmarks report), and the parser that imports only the named
subcommand parses exactly as the full one."""
import subprocess
import sys
from pathlib import Path

import pytest

import toolchain.cli as cli
from toolchain.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["validate", "merge", "plot"])
def test_numpy_only_commands_do_not_import_torch(name):
    code = ("import sys\nfrom toolchain.cli import main\n"
            f"assert main([{name!r}, '--help']) == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_torch_command_still_imports_what_it_needs():
    code = ("import sys\nfrom toolchain.cli import main\nassert main(['train', '--help']) == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


def parser_built_for(monkeypatch, capsys, argv: list[str]) -> str | None:
    """The command whose parser alone ``rram ARGV`` (``toolchain.cli.main``) builds; None for the
    full parser."""
    real, built = build_parser, []
    with monkeypatch.context() as m:
        m.setattr(cli, "build_parser", lambda *a, **k: built.append(k.get("only")) or real(*a, **k))
        cli.main(argv)
    capsys.readouterr()
    assert len(built) == 1
    return built[0]


def test_the_one_command_parser_parses_as_the_full_one(tmp_path, monkeypatch, capsys):
    argv = ["validate", str(tmp_path / "art"), "--sa1", "0.1,0.2", "--runs", "7", "--calibrate", "64",
            "--out", str(tmp_path / "r.json")]
    assert parser_built_for(monkeypatch, capsys, argv) == "validate"  # (no such artifact: an error)
    assert vars(build_parser(only="validate").parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_global_flags_are_skipped_and_unknown_names_get_every_command(monkeypatch, capsys):
    assert parser_built_for(monkeypatch, capsys, ["--version"]) == ""  # no command module at all
    assert parser_built_for(monkeypatch, capsys, ["--help"]) is None
    assert parser_built_for(monkeypatch, capsys, ["-h", "plot"]) == "plot"
    parser = build_parser(only="no-such-command")  # argparse then names the valid choices
    action = next(a for a in parser._actions if a.dest == "command")
    assert set(action.choices) == set(COMMANDS)

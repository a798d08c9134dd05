"""`rram validate`, `merge` and `plot` never import torch (about 3 s of every campaign's
whole-process time, a figure the benchmarks report), and the parser that imports only the named
subcommand parses exactly as the full one."""
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain.cli import COMMANDS, _command_of, build_parser

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


def test_the_one_command_parser_parses_as_the_full_one(tmp_path):
    argv = ["validate", str(tmp_path / "art"), "--sa1", "0.1,0.2", "--runs", "7", "--calibrate", "64",
            "--out", str(tmp_path / "r.json")]
    assert _command_of(argv) == "validate"
    assert vars(build_parser(only="validate").parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_command_of_skips_global_flags_and_unknown_names_get_every_command():
    assert _command_of(["--version"]) is None
    assert _command_of(["-h", "plot"]) == "plot"
    parser = build_parser(only="no-such-command")  # argparse then names the valid choices
    action = next(a for a in parser._actions if a.dest == "command")
    assert set(action.choices) == set(COMMANDS)

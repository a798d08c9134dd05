"""One vocabulary across subcommands (issues 13 and 35): one option name per concept and one
meaning per option name, defaults in every --help, --sa1 a list everywhere, every output named
--out, old spellings only as hidden aliases, rram -V / --version (fast: nothing heavy imported),
and a bad argument pointing to the subcommand's own --help. Each drift issue 35 found is one test
here: a rename undone makes it fail."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]

# the concept -> its one name; the old spellings that must stay hidden (aliases for one release)
HIDDEN = {"--rate", "--rate-stats", "--stats-rate", "--rates", "--checkpoint", "--init",
          # issue 35: --batch beside --batch-size; --calibration-images beside --calibrate (validate);
          # --precision fp32/bf16 (train) beside fp32/int8 (validate)
          "--batch", "--calibration-images"}
BN_RATE_COMMANDS = {"eval", "export", "passes", "recalibrate", "validate", "sensitivity", "calibrate"}
# every command that writes a file or folder names it with --out (eval prints; pipeline's config says)
OUTPUT_COMMANDS = set(COMMANDS) - {"eval", "pipeline"}
# one meaning per name: the words each command's help of that option must hold
MEANINGS = {
    "--images": "spread evenly",            # evaluation images, spread evenly over the split
    "--calibrate": "per-chip calibration",  # N training images a chip is calibrated on
    "--precision": "int8",                  # the deployed model's numerics (fp32/int8)
}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def visible_options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_every_command_is_registered():
    assert set(subparsers()) == set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_one_name_per_concept_and_defaults_in_help(name):
    p = subparsers()[name]
    options = visible_options(p)
    assert not HIDDEN & set(options), f"rram {name} shows an old spelling: {HIDDEN & set(options)}"
    if name in BN_RATE_COMMANDS:
        assert "--bn-rate" in options, f"rram {name}: the BN-statistics rate is --bn-rate"
    text = p.format_help()
    for a in p._actions:
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
            continue
        assert a.help, f"rram {name} {a.option_strings or a.dest}: no help text"
        d = a.default
        if a.option_strings and d is not None and d is not False and d != []:
            assert "default" in a.help.lower() or f"(default: {d})" in " ".join(text.split()), \
                f"rram {name} {a.option_strings}: its default {d!r} is not shown"


def test_one_meaning_per_option_name():
    """An option name shared by subcommands takes the same values everywhere (--precision was
    fp32/bf16 in train, fp32/int8 in validate), says the same thing where issue 35 found it saying
    three (--images: a random subset, an evenly spread subset, a verification count), and no
    visible name is a shortened form of another (--batch beside --batch-size)."""
    seen: dict[str, list[tuple[str, argparse.Action]]] = {}
    for name, p in subparsers().items():
        for flag, a in visible_options(p).items():
            seen.setdefault(flag, []).append((name, a))
    for flag, uses in seen.items():
        choices = {tuple(a.choices) if a.choices else None for _, a in uses}
        assert len(choices) == 1, f"{flag} takes different values by command: " + \
            ", ".join(f"rram {n}: {a.choices}" for n, a in uses)
        if flag in MEANINGS:
            for n, a in uses:
                assert MEANINGS[flag] in a.help, f"rram {n} {flag} means something else: {a.help!r}"
    for short in seen:
        longer = sorted(f for f in seen if f.startswith(short + "-"))
        assert not longer, f"{short} beside {longer}: one name per concept"


@pytest.mark.parametrize("name", sorted(OUTPUT_COMMANDS))
def test_every_output_is_named_out(name):
    p = subparsers()[name]
    assert "--out" in visible_options(p), f"rram {name}: its output is --out"
    positionals = {a.dest for a in p._actions if not a.option_strings and a.help != argparse.SUPPRESS}
    assert not positionals & {"out", "output", "outdir"}, f"rram {name} shows a positional output"


@pytest.mark.parametrize("argv, dest, out", [
    (["quantize", "x.onnx", "--out", "art"], "outdir", "art"),    # issue 35: "unrecognized arguments: --out"
    (["passes", "a.onnx", "--out", "b.onnx"], "output", "b.onnx"),
])
def test_passes_and_quantize_take_out(argv, dest, out):
    ns = build_parser().parse_args(argv)
    assert ns.out == out and getattr(ns, dest) is None


def test_the_old_positional_output_still_works_and_two_outputs_are_refused(tmp_path, capsys):
    ns = build_parser().parse_args(["quantize", "x.onnx", "art"])  # README's older scripts
    assert (ns.outdir, ns.out) == ("art", None)
    src = tmp_path / "a.onnx"
    src.write_bytes(b"")
    assert main(["quantize", str(src), "art1", "--out", "art2"]) == 2
    assert "give --out only" in capsys.readouterr().err
    assert main(["passes", str(src)]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "art1").exists() and not (tmp_path / "art2").exists()


@pytest.mark.parametrize("name", ["eval", "validate", "sensitivity"])
def test_sa1_takes_a_list_everywhere(name):
    p = subparsers()[name]
    args = p.parse_args(["x", "--sa1", "0,0.1,0.2"] + (["--out", "o"] if name != "eval" else []))
    assert args.sa1 == "0,0.1,0.2"


TRAIN = ["train", "--model", "resnet20", "--drop-rate", "0.1", "--epochs", "1", "--out", "o"]


@pytest.mark.parametrize("argv, dest, value", [
    (["export", "c", "--rate", "0.1", "--out", "o"], "bn_rate", 0.1),
    (["eval", "c", "--rate-stats", "0.1"], "bn_rate", 0.1),
    (["validate", "a", "--stats-rate", "0.2", "--sa1", "0", "--out", "o"], "bn_rate", "0.2"),
    (["recalibrate", "c", "--rates", "0,0.1", "--out", "o"], "bn_rate", "0,0.1"),
    (["eval", "--checkpoint", "c"], "checkpoint", "c"),
    (TRAIN + ["--init", "c"], "init", "c"),
    # issue 35's renames: the old spelling parses into the new one's place
    (["passes", "a", "--out", "b", "--batch", "3"], "batch", 3),
    (["passes", "a", "--out", "b", "--images", "8"], "images", 8),
    (TRAIN + ["--precision", "bf16"], "precision", "bf16"),
    (TRAIN + ["--images", "64"], "images", 64),
    (["recalibrate", "c", "--bn-rate", "0", "--out", "o", "--images", "64"], "images", 64),
    (["validate", "a", "--out", "o", "--calibration-images", "50"], "calibration_images", 50),
    (["calibrate", "a", "--fault-map", "f", "--out", "o", "--calibration-images", "50"], "calibration_images", 50),
    (["validate", "a", "--out", "o", "--int8-images", "50"], "calibration_images", 50),  # before the converters
])
def test_old_spellings_still_parse(argv, dest, value):
    ns = build_parser().parse_args(argv)
    assert getattr(ns, dest) == value


@pytest.mark.parametrize("argv, dest, value", [
    (["passes", "a", "--out", "b", "--batch-size", "3"], "batch", 3),
    (["passes", "a", "--out", "b", "--real-images", "8"], "images", 8),
    (TRAIN + ["--train-precision", "bf16"], "precision", "bf16"),
    (TRAIN + ["--train-images", "64"], "images", 64),
    (["recalibrate", "c", "--bn-rate", "0", "--out", "o", "--train-images", "64"], "images", 64),
    (["validate", "a", "--out", "o", "--range-images", "50"], "calibration_images", 50),
])
def test_new_spellings_parse(argv, dest, value):
    ns = build_parser().parse_args(argv)
    assert getattr(ns, dest) == value


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys):
    assert main([flag]) == 0
    assert capsys.readouterr().out.startswith("rram ")


def test_version_imports_nothing_heavy():
    """`rram --version` took 3 s: it built every subcommand's parser, importing torch. Now it
    imports no command module at all (checked by what it imports, not by timing)."""
    code = ("import sys\nfrom toolchain.cli import main\nassert main(['--version']) == 0\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy', 'toolchain.commands.train') "
            "if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", COMMANDS)
def test_a_bad_argument_points_to_the_commands_own_help(name, capsys):
    """`rram quantize x.onnx --bogus` said "(see `rram --help`)": argparse reports unknown options
    from the top-level parser."""
    assert main([name, "x", "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"(see `rram {name} --help`)" in err, err

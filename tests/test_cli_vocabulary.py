"""One vocabulary across subcommands (issue 13): one option name per concept, defaults in every
--help, --sa1 a list everywhere, old spellings only as hidden aliases, rram --version."""
import argparse

import pytest

from toolchain.cli import COMMANDS, build_parser, main

# the concept -> its one name; the old spellings that must stay hidden (aliases for one release)
HIDDEN = {"--rate", "--rate-stats", "--stats-rate", "--rates", "--checkpoint", "--init"}
BN_RATE_COMMANDS = {"eval", "export", "passes", "recalibrate", "validate", "sensitivity", "calibrate"}


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


@pytest.mark.parametrize("name", ["eval", "validate", "sensitivity"])
def test_sa1_takes_a_list_everywhere(name):
    p = subparsers()[name]
    args = p.parse_args(["x", "--sa1", "0,0.1,0.2"] + (["--out", "o"] if name != "eval" else []))
    assert args.sa1 == "0,0.1,0.2"


@pytest.mark.parametrize("argv, dest, value", [
    (["export", "c", "--rate", "0.1", "--out", "o"], "bn_rate", 0.1),
    (["eval", "c", "--rate-stats", "0.1"], "bn_rate", 0.1),
    (["validate", "a", "--stats-rate", "0.2", "--sa1", "0", "--out", "o"], "bn_rate", "0.2"),
    (["recalibrate", "c", "--rates", "0,0.1", "--out", "o"], "bn_rate", "0,0.1"),
    (["eval", "--checkpoint", "c"], "checkpoint", "c"),
    (["train", "--init", "c", "--model", "resnet20", "--drop-rate", "0.1", "--epochs", "1", "--out", "o"],
     "init", "c"),
])
def test_old_spellings_still_parse(argv, dest, value):
    ns = build_parser().parse_args(argv)
    assert getattr(ns, dest) == value


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("rram ")

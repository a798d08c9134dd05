"""The whole config checked before the first step runs: every step's ``rram`` argument lists
(``actions.commands``) parsed by the subcommand's own parser, then given the checks the subcommand
applies to its arguments before it works (rates, pass names, the calibration image count). A value
a later step would refuse (``validate.seed = 4294967296``, an unknown pass or preset, SA1 + SA0 > 1)
fails at once, in one line, with nothing run."""
from __future__ import annotations

from runtime.errors import RramError

from ..errors import UserError
from .actions import commands
from .plan import Pipeline


def preflight(pipe: Pipeline) -> None:
    from ..cli import RaisingParser, build_parser

    parsers = {}
    for step in pipe.steps:
        for argv in commands(pipe, step):
            name = argv[0]
            if name not in parsers:
                parsers[name] = build_parser(RaisingParser, only=name)
            try:
                args = parsers[name].parse_args(argv)
                _CHECKS.get(name, lambda a: None)(args)
            except RramError as e:
                raise UserError(f"{pipe.cfg.path}: {step.name}: {e}") from None
    _check_calibration_images(pipe)


def _check_validate(args) -> None:
    from runtime.faults import check_rates

    from ..commands.common import float_list

    for p in float_list(args.sa1, "--sa1"):
        check_rates(p, args.sa0)


def _check_passes(args) -> None:
    from passes.catalog import resolve

    resolve(args.passes)


_CHECKS = {"validate": _check_validate, "passes": _check_passes}


def _check_calibration_images(pipe: Pipeline) -> None:
    """validate.calibrate: at most the images of the training split (rram validate's own check,
    made when it loads them)."""
    n = pipe.v["validate"]["calibrate"]
    if n is None:
        return
    from ..commands.common import calibration_pool
    from ..data import load_split

    total = len(load_split(pipe.cfg.data, "train", progress=False))
    try:
        calibration_pool(total, n, 0)
    except RramError as e:
        raise UserError(f"{pipe.cfg.path}: validate.calibrate: {e}") from None

"""The device non-ideality options of ``rram validate`` (issue 37: programming variation, read
noise, DAC/ADC resolution; docs/runtime.md, "Device non-idealities"), parsed into the runtime's
``variation.Nonideal``, whose checks give the one-line errors."""
from __future__ import annotations

import argparse

from ..errors import UserError


def _number(text: str) -> float:
    """A number; its range is the runtime's check (``runtime.variation.Nonideal``: one line)."""
    try:
        return float(text) + 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def add_nonideal_args(p: argparse.ArgumentParser) -> None:
    """Non-idealities beside the stuck cells (runtime/variation.py, docs/runtime.md)."""
    from runtime.variation import NONIDEAL_PRESETS, PROGRAMMING_MODELS

    p.add_argument("--nonideal", default=None, metavar="PRESET",
                   help=f"device non-idealities beside the stuck cells, from a preset ({', '.join(NONIDEAL_PRESETS)}; "
                        f"wan2022: the RRAM of Wan et al., Nature 2022); the options below override its fields "
                        f"(default: none)")
    p.add_argument("--variation", type=_number, default=None, metavar="SIGMA",
                   help="programming variation: each cell's conductance off its target by a seeded error per chip, "
                        "clipped to the device's range (stuck cells keep their level; a --fault-map chip is drawn "
                        "once, from --seed); additive: sd as a fraction of the conductance range (default: 0, none)")
    p.add_argument("--programming-model", dest="variation_model", choices=PROGRAMMING_MODELS, default=None,
                   help="additive: G + SIGMA (Gmax-Gmin) Z; lognormal: G exp(SIGMA Z); wan2022: the measured "
                        "conductance-dependent sd times SIGMA (default: additive)")
    p.add_argument("--read-noise", type=_number, default=None, metavar="SIGMA",
                   help="read noise: every cell read with a fresh additive error of sd SIGMA (fraction of the "
                        "conductance range) per batch of images (default: 0, none)")
    add_converter_args(p, dac="each mapped layer's inputs, 1-16 bits, range calibrated per layer on --range-images",
                       adc="each row tile's column outputs (partial sums converted, then added digitally)")


def add_converter_args(p: argparse.ArgumentParser, *, dac: str, adc: str) -> None:
    """--dac-bits, --adc-bits, --adc-range: one definition for validate/sensitivity and for the
    PyTorch reference in eval; DAC and ADC say where each converter sits."""
    from runtime.variation import ADC_RANGES

    p.add_argument("--dac-bits", type=_integer, default=None, metavar="BITS",
                   help=f"DAC resolution on {dac} (default: unbounded)")
    p.add_argument("--adc-bits", type=_integer, default=None, metavar="BITS",
                   help=f"ADC resolution on {adc}, 1-16 bits (default: unbounded)")
    p.add_argument("--adc-range", choices=ADC_RANGES, default=None,
                   help="the ADC's range per column: the largest partial sum on --range-images, or the column's "
                        "full scale (default: calibrated-per-column)")


def nonideal_given(args) -> str | None:
    """The first non-ideality option given on the command line (None: none)."""
    for flag in ("nonideal", "variation", "variation_model", "read_noise", "dac_bits", "adc_bits", "adc_range"):
        if getattr(args, flag, None) is not None:
            return "--programming-model" if flag == "variation_model" else "--" + flag.replace("_", "-")
    return None


def nonideal_from_args(args):
    """The ``runtime.variation.Nonideal`` the options describe (None when none is given); bad
    values are one line (``UserError``)."""
    from runtime.errors import RuntimeInputError
    from runtime.variation import Nonideal, nonideal_preset

    if nonideal_given(args) is None:
        return None
    try:
        base = nonideal_preset(args.nonideal) if args.nonideal is not None else Nonideal(name="custom")
        return base.with_options(programming_sigma=args.variation, programming_model=args.variation_model,
                                 read_sigma=args.read_noise, dac_bits=args.dac_bits, adc_bits=args.adc_bits,
                                 adc_range=args.adc_range)
    except RuntimeInputError as e:
        raise UserError(str(e)) from None


# rram calibrate computes one measured chip's periphery: a simulated draw on top of it would write
# periphery parameters for a chip that does not exist (docs/runtime.md; rram validate --fault-map
# simulates them on the measured chip, but refuses them with its --chip-calibration file)
MEASURED_CHIP = ("rram calibrate measures a real chip, whose programming errors and read noise are physical and "
                 "in what it measures: a simulated draw on top would calibrate a chip that does not exist "
                 "(simulate them with rram validate --calibrate --variation ...)")


def add_refused_nonideal_args(p: argparse.ArgumentParser) -> None:
    """The non-ideality options, hidden, so that ``refuse_nonideal`` says why they do not apply."""
    for flag in ("--nonideal", "--variation", "--programming-model", "--read-noise", "--dac-bits", "--adc-bits",
                 "--adc-range"):
        p.add_argument(flag, dest="variation_model" if flag == "--programming-model" else None, default=None,
                       help=argparse.SUPPRESS)


def refuse_nonideal(args, why: str) -> None:
    flag = nonideal_given(args)
    if flag is not None:
        raise UserError(f"{flag}: {why}")

"""``rram eval``: top-1 accuracy of a checkpoint on the CIFAR-10 test split."""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from runtime.results import summarize

from ..calibrate import calibrate_bn, restored_bn
from ..checkpoints import adopt_image_size, load_checkpoint
from ..data import EVAL_SPLITS, check_for_model, load_split, normalize, to_float_nchw
from ..dropconnect import ReferenceChips, check_rate, rate_key, sa1_faults
from ..errors import UserError
from ..evaluate import accuracy
from ..placement import PlacedReferenceChips, layer_layouts
from ..recalibrate import apply_bn_stats
from .common import (
    INT8_CALIBRATION_DEFAULT,
    add_data_args,
    add_model_args,
    calibration_images,
    emit,
    float_list,
    hidden_alias,
    int8_calibration_indices,
    normalization_from_args,
    positive_int,
    rate,
    seed,
)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="top-1 accuracy of a checkpoint on the test split")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=EVAL_SPLITS, default="test",
                   help="which split to evaluate (val: the 1 in 10 training images held out for choices; "
                        "docs/RESULTS.md)")
    p.add_argument("--images", type=positive_int, default=None, help="evaluate N images spread evenly over the split "
                        "(the ones rram validate --images N takes)")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per forward pass")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--sa1", default=None, metavar="P[,P...]",
                   help="reference fault evaluation: zero each Conv/Linear weight with probability P, "
                        "a new simulated chip per run; comma-separated rates (default: fault-free)")
    p.add_argument("--runs", type=positive_int, default=None, help="simulated chips (with --sa1; default 1)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the simulated chips, 0 <= seed < 2**32")
    p.add_argument("--bn-rate", type=rate, default=None, metavar="P",
                   help="use the BN statistics recalibrated for fault rate P (default: the checkpoint's own)")
    hidden_alias(p, "--rate-stats", "bn_rate", type=rate)
    p.add_argument("--calibrate", type=positive_int, default=None, metavar="N",
                   help="per-chip calibration (with --sa1): re-estimate every BN's statistics on each faulty "
                        "chip from N training images chosen by --seed, then evaluate (default: off)")
    p.add_argument("--place", action="store_true",
                   help="fault-aware placement (with --sa1): place each chip with its own faults (the tile rows each "
                        "weight row goes to, spare rows included, and each column's orientation) before evaluating "
                        "it, as rram validate --place; the PyTorch reference of a `paper` chip (docs/runtime.md)")
    add_variation_args(p)
    add_converter_args(p)
    p.set_defaults(func=run)


def placement_layouts(model, split):
    """The reference placement's layer layouts (toolchain.placement), BN folds from the model's
    statistics now: one forward pass of a zero image of the split's shape finds them."""
    h, w, c = split.images.shape[1:]
    return layer_layouts(model, torch.zeros(1, c, h, w))


def add_variation_args(p) -> None:
    """The reference of rram validate's programming variation (toolchain/variation.py)."""
    from runtime.variation import PROGRAMMING_MODELS

    p.add_argument("--variation", type=float, default=None, metavar="SIGMA",
                   help="with --sa1: each cell of a differential pair per weight also programmed with an error "
                        "(additive: sd SIGMA of the conductance range), clipped to the range; SA1 per cell "
                        "(default: 0, none)")
    p.add_argument("--programming-model", dest="variation_model", choices=PROGRAMMING_MODELS, default="additive",
                   help="as rram validate's (default: additive)")
    p.add_argument("--read-noise", type=float, default=None, metavar="SIGMA",
                   help="with --sa1: every cell of both planes read with a fresh error of sd SIGMA of the "
                        "conductance range at each forward pass (batch) (default: 0, none)")


def add_converter_args(p) -> None:
    """The reference of rram validate's DAC/ADC resolution (toolchain/converters.py)."""
    from . import nonideal_args

    nonideal_args.add_converter_args(
        p, dac="each Conv/Linear input, 1-16 bits, range per layer from --range-images",
        adc="each row tile's column outputs of a `paper` chip (128-row tiles; partial sums converted, then added)")
    p.add_argument("--range-images", dest="calibration_images", type=positive_int, default=None, metavar="N",
                   help=f"N training images that set the DAC/ADC ranges, on the fault-free model (default: "
                        f"{INT8_CALIBRATION_DEFAULT}, or the whole split when it is smaller)")


def converter_reference(args, model, normalization):
    """The DAC/ADC reference the options describe, its ranges measured (None without converters)."""
    if args.dac_bits is None and args.adc_bits is None:
        return None
    from ..converters import ConverterReference

    train = load_split(args.data, "train", cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       download=args.download)
    images = train.images[int8_calibration_indices(len(train), args.calibration_images)]
    ref = ConverterReference(model, args.dac_bits, args.adc_bits, args.adc_range or "calibrated-per-column")
    ref.measure(normalize(to_float_nchw(torch.from_numpy(images)), normalization))
    return ref


def check_converter_args(args) -> None:
    """One line for bad converter settings (the runtime's checks) and what they cannot go with."""
    converters = args.dac_bits is not None or args.adc_bits is not None
    if not converters:
        for flag, given in (("--adc-range", args.adc_range), ("--range-images", args.calibration_images)):
            if given is not None:
                raise UserError(f"{flag} sets the converters' ranges: give --dac-bits or --adc-bits too")
        return
    from runtime.errors import RuntimeInputError
    from runtime.variation import Nonideal

    try:
        Nonideal(dac_bits=args.dac_bits, adc_bits=args.adc_bits,
                 adc_range=args.adc_range or "calibrated-per-column")
    except RuntimeInputError as e:
        raise UserError(str(e)) from None
    if args.adc_range is not None and args.adc_bits is None:
        raise UserError("--adc-range is the ADC's range: give --adc-bits too")
    if args.calibrate is not None:
        raise UserError("--dac-bits/--adc-bits with --calibrate is not built (as in rram validate): give one of them")


def run(args) -> int:
    args.checkpoint = getattr(args, "checkpoint", None)  # absent: see add_model_args
    if args.checkpoint is None:
        raise UserError("give the checkpoint to evaluate: rram eval CKPT (a path or a known name)")
    rates = None
    if args.sa1 is not None:  # bad input fails before any work
        rates = [check_rate(p, "SA1 rate", inclusive=True) for p in float_list(args.sa1, "--sa1")]
    elif args.runs is not None:
        raise UserError("--runs counts simulated chips: give --sa1 too")
    if args.read_noise and args.calibrate is not None:
        raise UserError("--read-noise with --calibrate is not built in the reference (rram validate calibrates "
                        "without read noise): give one of them")
    check_converter_args(args)
    if args.calibrate is not None and args.sa1 is None:
        raise UserError("--calibrate re-estimates BN statistics on each simulated chip: give --sa1 too")
    if args.place and args.sa1 is None:
        raise UserError("--place places each simulated chip with its own faults: give --sa1 too")
    noisy = args.variation is not None or args.read_noise is not None
    if noisy:
        if args.sa1 is None:
            flag = "--variation" if args.variation is not None else "--read-noise"
            raise UserError(f"{flag} simulates chips: give --sa1 too (--sa1 0 for it alone)")
        from runtime.errors import RuntimeInputError
        from runtime.variation import Nonideal

        try:  # the runtime's checks (negative, NaN): one line
            Nonideal(programming_sigma=args.variation or 0.0, programming_model=args.variation_model,
                     read_sigma=args.read_noise or 0.0)
        except RuntimeInputError as e:
            raise UserError(str(e)) from None
    if noisy and args.place:
        raise UserError("--place with --variation/--read-noise is not built in the reference (rram validate "
                        "places on the faults alone): give one of them")
    args.runs = args.runs or 1
    ckpt = load_checkpoint(args.checkpoint, model=args.model, width=args.width, shortcut=args.shortcut,
                           normalization=normalization_from_args(args), download=args.download)
    model = ckpt.build()  # a mismatched checkpoint fails before any image is decoded
    if args.bn_rate is not None:
        key = rate_key(check_rate(args.bn_rate, "--bn-rate"))
        if key not in ckpt.bn_stats:
            have = ", ".join(sorted(ckpt.bn_stats, key=float)) or "none"
            raise UserError(f"checkpoint has no BN statistics for rate {key} (it has: {have}); "
                            f"run rram recalibrate first")
        apply_bn_stats(model, ckpt.bn_stats[key])
    split = load_split(args.data, args.split, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       download=args.download).subset(args.images)
    adopt_image_size(ckpt, split.images.shape[1:3])
    check_for_model(split, ckpt.spec.num_classes, f"the model ({ckpt.spec.describe()})",
                    image_size=ckpt.spec.image_size)
    converters = converter_reference(args, model, ckpt.normalization)  # ranges on the fault-free model
    through = converters.applied if converters is not None else contextlib.nullcontext
    calib = calibration_images(args)
    if calib is not None:
        calib = normalize(to_float_nchw(torch.from_numpy(calib)), ckpt.normalization)
    t0 = time.perf_counter()
    if args.sa1 is None:
        with through():
            acc = accuracy(model, split, ckpt.normalization, batch_size=args.batch_size)
        extra, text = {}, f"top-1 {100 * acc:.2f}%"
    else:
        per_rate, lines = [], []
        layouts = placement_layouts(model, split) if args.place else None  # before any calibration
        for p in rates:
            accs, errors = [], {"weight_error_fixed": [], "weight_error_placed": []}
            chips = (ReferenceChips(model, p, args.seed) if layouts is None
                     else PlacedReferenceChips(layouts, p, args.seed))
            if noisy:
                from ..variation import VariedReferenceChips, chip_context

                chips = VariedReferenceChips(model, p, args.variation or 0.0, args.variation_model, args.seed)
            for run_i in range(args.runs):
                if noisy:
                    chip = chip_context(chips, run_i, args.read_noise)
                else:
                    masks = chips.sample(run_i)
                    if layouts is not None:  # a placed chip: its masks and its weight errors
                        masks, info = masks.masks, masks.info
                        for k in errors:
                            errors[k].append(info[k])
                    chip = sa1_faults(model, masks)
                with chip, restored_bn(model), through():
                    if calib is not None:
                        calibrate_bn(model, calib)
                    accs.append(accuracy(model, split, ckpt.normalization, batch_size=args.batch_size,
                                         desc=f"SA1 {p:g}{' placed' if layouts else ''} chip {run_i + 1}/{args.runs}"))
            s = summarize(accs)  # the statistics rram validate reports
            per_rate.append({"sa1": p, "mean": s["mean"], "std": s["std"], "min": s["min"], "max": s["max"],
                             "ci95": s["ci95"], "accuracies": accs, **(errors if layouts is not None else {})})
            calibrated = "" if calib is None else f" calibrated on {args.calibrate} images each"
            placed = "" if layouts is None else ", placed"
            std = "n/a" if s["std"] is None else f"{100 * s['std']:.2f}"  # one chip: no spread
            lost = "" if layouts is None else (
                f"; weight error {100 * np.mean(errors['weight_error_fixed']):.2f}% fixed, "
                f"{100 * np.mean(errors['weight_error_placed']):.2f}% placed")
            lines.append(f"SA1 {p:g}{placed}, {args.runs} chips{calibrated}: mean {100 * s['mean']:.2f}% "
                         f"std {std} min {100 * s['min']:.2f}% max {100 * s['max']:.2f}%{lost}")
        acc = per_rate[0]["mean"] if len(per_rate) == 1 else None
        if noisy:
            lines = [f"{line} (variation {args.variation or 0:g} {args.variation_model}, read noise "
                     f"{args.read_noise or 0:g})" for line in lines]
        extra = {"runs": args.runs, "seed": args.seed, "calibrate": args.calibrate, "place": args.place,
                 "rates": per_rate,
                 **({} if not noisy else {"variation": args.variation or 0.0, "variation_model": args.variation_model,
                                          "read_noise": args.read_noise or 0.0}),
                 **(per_rate[0] if len(per_rate) == 1 else {})}  # one rate: its figures at the top too
        text = "\n".join(lines) if len(lines) > 1 else lines[0]
    seconds = time.perf_counter() - t0
    if converters is not None:
        extra["converters"] = converters.to_dict()
        text = "\n".join(f"{line} ({converters.describe()})" for line in text.split("\n"))
    result = {"model": ckpt.spec.to_dict(), "checkpoint": ckpt.source, "split": args.split,
              "images": len(split), "accuracy": acc, "seconds": round(seconds, 3),
              "threads": torch.get_num_threads(),
              "bn_rate": None if args.bn_rate is None else rate_key(args.bn_rate), **extra,
              "provenance": _provenance(ckpt.source)}
    stats = "" if args.bn_rate is None else f", BN stats for p'={args.bn_rate:g}"
    emit(result, args.json, f"{ckpt.spec.describe()} on {args.split} ({len(split)} images{stats}): "
                            f"{text}")
    return 0


def _provenance(source: str) -> dict:
    """What a results file records of its making (runtime/provenance.py), for a checkpoint file."""
    from pathlib import Path

    from runtime.fileio import file_sha256
    from runtime.metadata import CHECKPOINT_SHA256_KEY
    from runtime.provenance import provenance

    path = Path(source) if source else None
    return provenance({".": {CHECKPOINT_SHA256_KEY: file_sha256(path)} if path and path.is_file() else {}})

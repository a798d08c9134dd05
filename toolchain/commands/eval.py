"""``rram eval``: top-1 accuracy of a checkpoint on the CIFAR-10 test split."""
from __future__ import annotations

import time

import torch

from runtime.results import summarize

from ..calibrate import calibrate_bn, restored_bn
from ..checkpoints import adopt_image_size, load_checkpoint
from ..data import check_for_model, load_split, normalize, to_float_nchw
from ..dropconnect import ReferenceChips, check_rate, rate_key, sa1_faults
from ..errors import UserError
from ..evaluate import accuracy
from ..recalibrate import apply_bn_stats
from .common import (
    add_data_args,
    add_model_args,
    calibration_images,
    emit,
    float_list,
    hidden_alias,
    normalization_from_args,
    positive_int,
    rate,
    seed,
)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="top-1 accuracy of a checkpoint on the test split")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split to evaluate")
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
    add_variation_args(p)
    p.set_defaults(func=run)


def add_variation_args(p) -> None:
    """The reference of rram validate's programming variation (toolchain/variation.py)."""
    from runtime.variation import PROGRAMMING_MODELS

    p.add_argument("--variation", type=float, default=None, metavar="SIGMA",
                   help="with --sa1: each cell of a differential pair per weight also programmed with an error "
                        "(additive: sd SIGMA of the conductance range), clipped to the range; SA1 per cell "
                        "(default: 0, none)")
    p.add_argument("--variation-model", choices=PROGRAMMING_MODELS, default="additive",
                   help="as rram validate's (default: additive)")
    p.add_argument("--read-noise", type=float, default=None, metavar="SIGMA",
                   help="with --sa1: every cell of both planes read with a fresh error of sd SIGMA of the "
                        "conductance range at each forward pass (batch) (default: 0, none)")


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
    if args.calibrate is not None and args.sa1 is None:
        raise UserError("--calibrate re-estimates BN statistics on each simulated chip: give --sa1 too")
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
    calib = calibration_images(args)
    if calib is not None:
        calib = normalize(to_float_nchw(torch.from_numpy(calib)), ckpt.normalization)
    t0 = time.perf_counter()
    if args.sa1 is None:
        acc = accuracy(model, split, ckpt.normalization, batch_size=args.batch_size)
        extra, text = {}, f"top-1 {100 * acc:.2f}%"
    else:
        per_rate, lines = [], []
        for p in rates:
            accs, chips = [], ReferenceChips(model, p, args.seed)
            if noisy:
                from ..variation import VariedReferenceChips, chip_context

                chips = VariedReferenceChips(model, p, args.variation or 0.0, args.variation_model, args.seed)
            for run_i in range(args.runs):
                chip = chip_context(chips, run_i, args.read_noise) if noisy else sa1_faults(model, chips.sample(run_i))
                with chip, restored_bn(model):
                    if calib is not None:
                        calibrate_bn(model, calib)
                    accs.append(accuracy(model, split, ckpt.normalization, batch_size=args.batch_size,
                                         desc=f"SA1 {p:g} chip {run_i + 1}/{args.runs}"))
            s = summarize(accs)  # the statistics rram validate reports
            per_rate.append({"sa1": p, "mean": s["mean"], "std": s["std"], "min": s["min"], "max": s["max"],
                             "ci95": s["ci95"], "accuracies": accs})
            calibrated = "" if calib is None else f" calibrated on {args.calibrate} images each"
            std = "n/a" if s["std"] is None else f"{100 * s['std']:.2f}"  # one chip: no spread
            lines.append(f"SA1 {p:g}, {args.runs} chips{calibrated}: mean {100 * s['mean']:.2f}% "
                         f"std {std} min {100 * s['min']:.2f}% max {100 * s['max']:.2f}%")
        acc = per_rate[0]["mean"] if len(per_rate) == 1 else None
        if noisy:
            lines = [f"{line} (variation {args.variation or 0:g} {args.variation_model}, read noise "
                     f"{args.read_noise or 0:g})" for line in lines]
        extra = {"runs": args.runs, "seed": args.seed, "calibrate": args.calibrate, "rates": per_rate,
                 **({} if not noisy else {"variation": args.variation or 0.0, "variation_model": args.variation_model,
                                          "read_noise": args.read_noise or 0.0}),
                 **(per_rate[0] if len(per_rate) == 1 else {})}  # one rate: its figures at the top too
        text = "\n".join(lines) if len(lines) > 1 else lines[0]
    seconds = time.perf_counter() - t0
    result = {"model": ckpt.spec.to_dict(), "checkpoint": ckpt.source, "split": args.split,
              "images": len(split), "accuracy": acc, "seconds": round(seconds, 3),
              "threads": torch.get_num_threads(),
              "bn_rate": None if args.bn_rate is None else rate_key(args.bn_rate), **extra}
    stats = "" if args.bn_rate is None else f", BN stats for p'={args.bn_rate:g}"
    emit(result, args.json, f"{ckpt.spec.describe()} on {args.split} ({len(split)} images{stats}): "
                            f"{text}")
    return 0

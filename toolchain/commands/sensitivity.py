"""``rram sensitivity``: per-layer sensitivity to stuck cells (faults in one mapped layer at a time)."""
from __future__ import annotations

from runtime.campaign.plan import SENSITIVITY_RUNS

from ..data import EVAL_SPLITS, load_split, subset_indices
from ..errors import UserError
from .common import (
    add_artifact_normalization_args,
    add_bn_rate_arg,
    add_calibration_targets_arg,
    add_data_args,
    add_ray_arg,
    artifact_with_normalization,
    calibration_images,
    check_calibration_targets,
    check_ray,
    float_list,
    new_output_file,
    parse_stats_rate,
    positive_int,
    rate,
    seed,
)
from .nonideal_args import add_nonideal_args, nonideal_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("sensitivity", help="per-layer accuracy drop with faults in one mapped layer at a time")
    p.add_argument("artifact", help="folder written by `rram quantize` (or one subfolder per BN rate)")
    add_data_args(p)
    p.add_argument("--sa1", required=True, metavar="P[,P...]",
                   help="SA1 (stuck at G_min) cell rates in the layer, comma-separated")
    p.add_argument("--sa0", type=rate, default=0.0, help="SA0 (stuck at G_max) cell rate (default: 0)")
    p.add_argument("--runs", type=positive_int, default=SENSITIVITY_RUNS,
                   help=f"simulated chips per layer (default: {SENSITIVITY_RUNS})")
    p.add_argument("--seed", type=seed, default=0, help="seed of the chips, 0 <= seed < 2**32 (default: 0)")
    p.add_argument("--split", choices=EVAL_SPLITS, default="test",
                   help="which split's images to evaluate (val: the 1 in 10 training images held out for choices, "
                        "such as the layer to protect; docs/RESULTS.md)")
    p.add_argument("--images", type=positive_int, default=None,
                   help="use N images spread evenly over the split (default: all)")
    add_bn_rate_arg(p, old="--stats-rate")
    p.add_argument("--calibrate", type=positive_int, default=None, metavar="N",
                   help="per-chip calibration: calibrate each chip's periphery on N training images first "
                        "(default: off)")
    add_calibration_targets_arg(p)
    add_artifact_normalization_args(p)
    p.add_argument("--place", action="store_true",
                   help="place each chip with its own faults first (fault-aware placement, as rram validate --place)")
    add_nonideal_args(p)  # variation and read noise on every chip (DAC/ADC: refused, one line)
    p.add_argument("--out", required=True, help="sensitivity report JSON (rewritten after each layer)")
    add_ray_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:

    from runtime.artifact import Artifact
    from runtime.campaign.plan import check_sa1_rates
    from runtime.sensitivity import sensitivity

    sa1 = float_list(args.sa1, "--sa1")
    check_sa1_rates(sa1, args.sa0)  # before the slow loading: the runtime checks them again
    stats_rate = parse_stats_rate(args.bn_rate)
    nonideal = nonideal_from_args(args)
    if nonideal is not None:
        from runtime.errors import RuntimeInputError

        try:  # the runtime checks again: before the slow loading, one line
            nonideal.check_applies("fp32")
        except RuntimeInputError as e:
            raise UserError(str(e)) from None
        if nonideal.converters:
            raise UserError("DAC/ADC resolution (--dac-bits, --adc-bits) in rram sensitivity is not built yet: use "
                            "rram validate --protect to compare layers behind converters")
    check_ray(args)
    check_calibration_targets(args)
    new_output_file(args.out)  # the runtime checks again under the lock
    artifact = artifact_with_normalization(Artifact.load(args.artifact), args)
    split = load_split(args.data, args.split, cache_dir=args.cache_dir, use_cache=not args.no_cache)
    idx = subset_indices(len(split), args.images)
    calibrate = calibration_images(args)
    doc = sensitivity(artifact, split.images[idx], split.labels[idx], sa1=sa1, sa0=args.sa0, runs=args.runs,
                      seed=args.seed, stats_rate=stats_rate, out=args.out, calibrate=calibrate,
                      info={"artifact": str(args.artifact), "data": str(args.data), "split": args.split},
                      ray=args.ray, place=args.place, calibration_targets=args.calibration_targets,
                      nonideal=nonideal)
    for entry in doc["rates"]:
        alone = "" if "nonideal_alone" not in entry else \
            f"; the same chips without a stuck cell {100 * entry['nonideal_alone']['mean']:.2f}%"
        print(f"SA1 {entry['sa1']:g} in one layer at a time, {args.runs} chips each "
              f"(fault-free {100 * entry['clean']:.2f}%{alone}):")
        width = max(len(e["name"]) for e in entry["layers"])
        for e in entry["layers"]:
            ci = "ci95 n/a (1 chip)" if e["drop_ci95"] is None else \
                "ci95 [{:6.2f}, {:6.2f}]".format(*(100 * v for v in e["drop_ci95"]))
            print(f"  {e['name']:<{width}}  drop {100 * e['drop']:6.2f} points  {ci}  "
                  f"{100 * e['cell_share']:5.1f}% of cells")
    return 0

"""``rram calibrate``: the digital periphery parameters of one measured chip (per-chip calibration).

Writes ``OUT/chip-calibration.json``: per calibrated layer (its output tensor) and channel, the
scale and offset a deployment programs into that chip's periphery; `rram validate --fault-map
CHIP --chip-calibration FILE` validates the chip with them (docs/runtime.md)."""
from __future__ import annotations

from .common import (
    add_artifact_normalization_args,
    add_bn_rate_arg,
    add_calibration_targets_arg,
    add_data_args,
    add_range_images_arg,
    artifact_with_normalization,
    calibration_images,
    int8_calibration_indices,
    new_output_file,
    parse_stats_rate,
    positive_int,
    seed,
)
from .nonideal_args import MEASURED_CHIP, add_refused_nonideal_args, refuse_nonideal

FILE_NAME = "chip-calibration.json"


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="per-chip periphery parameters (scale/offset) of a measured chip")
    p.add_argument("artifact", help="folder written by `rram quantize` (or one subfolder per BN rate)")
    p.add_argument("--fault-map", required=True, help="the chip's measured fault map (.npz)")
    add_data_args(p)
    p.add_argument("--calibrate", type=positive_int, default=256, metavar="N",
                   help="per-chip calibration: N training images run through the chip (default: 256)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed that chooses the calibration images, 0 <= seed < 2**32 (default: 0)")
    add_bn_rate_arg(p, old="--stats-rate")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="the numerics the chip is measured in: int8 as `rram validate --precision int8` "
                        "deploys it (activation ranges from --range-images training images)")
    add_range_images_arg(p)
    p.add_argument("--placement", default=None, metavar="FILE",
                   help="the chip's placement (`rram place`): calibrate the placed chip (default: the fixed mapping)")
    add_calibration_targets_arg(p)
    add_artifact_normalization_args(p)
    p.add_argument("--out", required=True, help=f"output folder (gets {FILE_NAME})")
    add_refused_nonideal_args(p)  # a measured chip: refused with the reason (docs/runtime.md)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from runtime.artifact import Artifact
    from runtime.campaign import calibrate_fault_map
    from runtime.fileio import atomic_write_json

    refuse_nonideal(args, MEASURED_CHIP)
    out = new_output_file(Path(args.out) / FILE_NAME)
    stats_rate = parse_stats_rate(args.bn_rate)
    artifact = artifact_with_normalization(Artifact.load(args.artifact), args)
    engine_kw = {"precision": args.precision}
    if args.precision == "int8":  # the activation ranges `rram validate --precision int8` sets
        from ..data import load_split

        train = load_split(args.data, "train", cache_dir=args.cache_dir, use_cache=not args.no_cache)
        engine_kw["calibration"] = train.images[int8_calibration_indices(len(train), args.calibration_images)]
    doc = calibrate_fault_map(artifact, args.fault_map, calibration_images(args), stats_rate=stats_rate,
                              engine_kw=engine_kw, placement=args.placement,
                              calibration_targets=args.calibration_targets)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, doc)
    print(f"wrote {out}: {len(doc['layers'])} calibrated layers, {args.calibrate} calibration images")
    return 0

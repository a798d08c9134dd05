"""``rram place``: fault-aware placement of one measured chip (docs/runtime.md, "Fault-aware
placement"). Writes ``OUT/placement.npz`` (docs/crossbar-format.md, "Placement file"): per tile,
the physical row each logical row goes to, and each column's orientation; `rram validate
--fault-map CHIP --placement FILE` and `rram calibrate --placement FILE` use it."""
from __future__ import annotations

from .common import add_bn_rate_arg, new_output_file, parse_stats_rate


def add_parser(sub) -> None:
    from runtime.placement_file import FILE_NAME

    p = sub.add_parser("place", help="fault-aware placement of a measured chip (which physical row carries "
                                     "which weight row, each column's orientation)")
    p.add_argument("artifact", help="folder written by `rram quantize` (or one subfolder per BN rate)")
    p.add_argument("--fault-map", required=True,
                   help="the chip's measured fault map (.npz): of the used cells, or of full tiles with the "
                        "spare rows (docs/crossbar-format.md)")
    add_bn_rate_arg(p, old="--stats-rate")
    p.add_argument("--out", required=True, help=f"output folder (gets {FILE_NAME})")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from runtime.artifact import Artifact
    from runtime.placement_file import FILE_NAME, place_fault_map

    out = new_output_file(Path(args.out) / FILE_NAME)
    done = place_fault_map(Artifact.load(args.artifact), args.fault_map, out, parse_stats_rate(args.bn_rate))
    spares = "with the spare rows" if done["spares"] else \
        "without spare rows (the fault map covers the used cells only)"
    print(f"wrote {out}: weight error {100 * done['weight_error_fixed']:.2f}% with the fixed mapping, "
          f"{100 * done['weight_error_placed']:.2f}% placed ({spares})")
    return 0

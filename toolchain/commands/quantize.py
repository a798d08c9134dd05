"""``rram quantize``: map a model's weights onto crossbar cells and write the deployable artifact
(QDQ model.onnx, crossbars.json/.npz conductance map, report.json). The work is in ``runtime.quantize``;
the device description and its presets in ``runtime.crossbar``."""
from __future__ import annotations

import json
import sys

from runtime.crossbar import ENCODINGS, PRESETS, SCALE_GRANULARITIES, preset
from runtime.quantize import (
    MAPPABLE_OPS,
    LayerSelection,
    format_report,
    json_safe,
    quantize_to_folder,
)

from ..errors import UserError
from .common import add_out_arg, output_of, split_list


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="map weights to crossbar conductance levels; write a deployable folder",
                       description="Quantise Conv/Gemm/MatMul weights onto RRAM crossbar tiles. Writes "
                       "--out OUTDIR: OUTDIR/model.onnx (QDQ), OUTDIR/crossbars.json + crossbars.npz (conductance map, "
                       "docs/crossbar-format.md) and OUTDIR/report.json.")
    p.add_argument("input", metavar="IN.onnx", help="ONNX model (e.g. after the passes)")
    add_out_arg(p, "output folder (must not exist unless --force)", metavar="OUTDIR", positional="outdir")
    p.add_argument("--preset", choices=list(PRESETS), default="paper",
                   help="device preset (default: paper = differential pair, 7-bit cells, int8 weights)")
    p.add_argument("--bits-per-cell", type=int, default=None, help="bits per cell (levels = 2^bits, 1..8)")
    p.add_argument("--cells-per-weight", type=int, default=None, help="bit slices per weight")
    p.add_argument("--tile", default=None, metavar="RxC", help="tile size, rows x columns (default 128x128)")
    p.add_argument("--encoding", choices=ENCODINGS, default=None, help="sign encoding")
    p.add_argument("--g-min", type=float, default=None, help="HRS conductance in siemens")
    p.add_argument("--g-max", type=float, default=None, help="LRS conductance in siemens")
    p.add_argument("--scale-granularity", choices=SCALE_GRANULARITIES, default=None,
                   help="one scale per output column (default), per tile column group, or per layer")
    p.add_argument("--clip-percentile", type=float, default=None,
                   help="clip |w| at this percentile of each scale group (default: no clipping)")
    p.add_argument("--ops", default=None, help=f"comma-separated op types to map (default: {','.join(MAPPABLE_OPS)})")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="map only nodes/weights whose name matches this shell pattern (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave nodes/weights matching this shell pattern digital (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="replace OUTDIR if it is a previous artifact (never a folder holding the input or other files)")
    p.add_argument("--embed-normalization", action="store_true",
                   help="put the input normalisation into the graph first (the embed-normalization pass): the "
                        "artifact then takes images in [0, 1] and compilers need no metadata")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def parse_tile(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        rows, cols = (int(x) for x in parts)
    except ValueError:
        raise UserError(f"--tile must look like 128x128, got {text!r}") from None
    return rows, cols


def device_from_args(args):
    base = preset(args.preset)
    rows, cols = parse_tile(args.tile) if args.tile else (None, None)
    overrides = {"tile_rows": rows, "tile_cols": cols, "bits_per_cell": args.bits_per_cell,
                 "cells_per_weight": args.cells_per_weight, "encoding": args.encoding,
                 "g_min": args.g_min, "g_max": args.g_max, "scale_granularity": args.scale_granularity,
                 "clip_percentile": args.clip_percentile}
    if any(v is not None for v in overrides.values()):
        overrides["name"] = f"{base.name}+custom"
    return base.with_options(**overrides)


def run(args) -> int:
    args.outdir = output_of(args, "outdir", "quantize")
    device = device_from_args(args)
    ops = tuple(split_list(args.ops, "--ops")) if args.ops else MAPPABLE_OPS
    selection = LayerSelection(ops, tuple(args.include), tuple(args.exclude))
    source = args.input
    if args.embed_normalization:  # the embed-normalization pass first, verified like every pass
        import passes
        from runtime.artifact.folder import check_output_folder

        check_output_folder(args.outdir, args.force, [args.input])  # the input is never replaced
        source = passes.run(args.input, ["embed-normalization"]).model
    report = quantize_to_folder(source, args.outdir, device, selection=selection, force=args.force)
    if args.json:
        json.dump(json_safe(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
        print(f"wrote {args.outdir}/ (model.onnx, crossbars.json, crossbars.npz, report.json) "
              f"in {report['total_seconds']:.2f} s")
    return 0

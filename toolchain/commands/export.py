"""``rram export``: a checkpoint with one rate's (or every rate's) BN statistics -> ONNX."""
from __future__ import annotations

from runtime.fileio import check_output_path

from ..checkpoints import load_checkpoint
from ..dropconnect import check_rate, rate_key
from ..export import export_onnx
from .common import MODEL_HELP, add_normalization_args, emit, hidden_alias, normalization_from_args, rate, seed


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export to ONNX with per-rate BN statistics")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint path or known name")
    p.add_argument("--model", default=None, metavar="NAME", help=MODEL_HELP + " of a foreign checkpoint")
    p.add_argument("--bn-rate", type=rate, default=None, metavar="P",
                   help="BN statistics of this fault rate go into the BN nodes (default: the checkpoint's own)")
    hidden_alias(p, "--rate", "bn_rate", type=rate)
    p.add_argument("--all-rates", action="store_true",
                   help="also embed every stored rate's statistics as NAME@rate=r initializers")
    p.add_argument("--out", required=True, help="output .onnx file (written atomically)")
    add_normalization_args(p)
    p.add_argument("--seed", type=seed, default=0, help="seed of the random check input, 0 <= seed < 2**32")
    p.add_argument("--download", action="store_true", help="allow downloading named checkpoints")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    rate = None if args.bn_rate is None else rate_key(check_rate(args.bn_rate, "--bn-rate"))
    check_output_path(args.out, inputs=[args.checkpoint])
    ckpt = load_checkpoint(args.checkpoint, model=args.model, download=args.download,
                           normalization=normalization_from_args(args))
    result = export_onnx(ckpt, args.out, rate=rate, all_rates=args.all_rates, seed=args.seed)
    emit(result, args.json, f"{ckpt.spec.describe()} -> {result['out']} (opset {result['opset']}, "
                            f"BN rate {result['bn_rate']}, rates {', '.join(result['bn_stats_rates'])}, "
                            f"max |onnx - torch| {result['max_abs_diff']:.2e})")
    return 0

"""``rram passes``: run ONNX graph passes (1x1->3x3 padding, BN folding, cleanup) with numeric
verification; see docs/passes.md."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..errors import UserError
from .common import add_data_args, add_out_arg, hidden_alias, normalization_from_args, output_of, positive_int, seed


def _input_shape(text: str):
    name, sep, dims = text.rpartition("=")
    try:
        shape = [int(d) for d in dims.split(",")]
    except ValueError:
        shape = None
    if not sep or not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=d1,d2,... with positive dims, got {text!r}")
    return name, shape


def _tolerance(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v >= 0) or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def add_parser(sub) -> None:
    p = sub.add_parser("passes", help="rewrite an ONNX model (pad 1x1 convs, fold BN, clean up), verified",
                       description="Run graph passes on IN.onnx and write --out OUT.onnx atomically. "
                                   "IN is never modified; the same input and passes give identical bytes.")
    p.add_argument("input", nargs="?", metavar="IN.onnx", help="the model to rewrite (never modified)")
    add_out_arg(p, "the rewritten model (written atomically)", metavar="OUT.onnx", positional="output")
    p.add_argument("--passes", default="standard",
                   help="comma-separated pass names, in order ('standard' = "
                        "eliminate-identity,fold-constants,fold-bn,pad-1x1-to-3x3,eliminate-dead)")
    p.add_argument("--list", action="store_true", help="list the available passes and exit")
    p.add_argument("--verify", choices=["each", "end", "off"], default="end",
                   help="compare with the original in onnxruntime after each pass, at the end, or never")
    p.add_argument("--tolerance", type=_tolerance, default=None,
                   help="max allowed |diff| / max|output| per output (default 1e-3, see passes/verify.py)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random verification inputs, 0 <= seed < 2**32")
    p.add_argument("--batch-size", dest="batch", type=positive_int, default=2,
                   help="batch size of the random verification inputs, for a symbolic batch dimension")
    hidden_alias(p, "--batch", "batch", type=positive_int)
    p.add_argument("--input-shape", type=_input_shape, action="append", default=[], metavar="NAME=D1,D2,..",
                   help="shape of a graph input with symbolic dimensions (repeatable)")
    p.add_argument("--bn-rate", default=None,
                   help="use this rate's BN statistics (models from `rram export` with per-rate statistics)")
    add_data_args(p)
    for action in p._actions:  # here --data is opt-in: the passes serve models of any dataset
        if action.dest == "data":
            action.help = ("also verify on CIFAR-10 test images from this root (ImageFolder "
                           "train/test or cifar-10-batches-py); off by default")
    p.add_argument("--real-images", dest="images", type=positive_int, default=None, metavar="N",
                   help="with --data: verify on this many test images too (default 16)")
    hidden_alias(p, "--images", "images", type=positive_int)
    p.add_argument("--mean", default=None,
                   help="input mean r,g,b of images in [0, 1], recorded in OUT (rram.normalization) for a model "
                        "that records none (an ONNX model exported elsewhere): validate, calibrate and sensitivity "
                        "then need no --mean/--std; with --data, the verification images are normalised with it")
    p.add_argument("--std", default=None, help="input std r,g,b of images in [0, 1] (as --mean)")
    p.add_argument("--pad-1x1", action="store_true",
                   help="let standard pad 1x1 convolutions to 3x3 (default: only models trained padded, as rram "
                        "export records it; padding multiplies those layers' cells by 9, reported either way)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)


def _image_feeds(args):
    """A function building feed dicts of real test images, shaped for the model's first input and
    normalised with --mean/--std, else the model's ``rram.normalization`` metadata (written by
    ``rram export``), or only scaled to [0, 1] when the model's normalisation is embedded
    (``rram.normalization_embedded``, the embed-normalization pass); else it refuses rather than guess."""
    from runtime.metadata import (
        NORMALIZATION_EMBEDDED_KEY,
        NORMALIZATION_KEY,
        Normalization,
        normalize_images,
        read_metadata,
    )

    from ..data import load_split

    given = normalization_from_args(args)
    split = load_split(args.data, "test", cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       download=args.download).subset(args.images or 16)

    def feeds(model):
        meta = read_metadata(model)
        norm = given if given is not None else Normalization.from_metadata(meta, "the model")
        # a model whose normalisation is embedded (embed-normalization) takes images in [0, 1]
        if norm is None and NORMALIZATION_EMBEDDED_KEY not in meta:
            raise UserError(f"the model records no input normalisation (metadata {NORMALIZATION_KEY}): "
                            "give --mean and --std to verify on real images")
        x = normalize_images(split.images, norm)
        inits = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise UserError(f"--data needs a model with one input, this one has {len(inputs)}")
        vi = inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if len(dims) != 4 or any(d not in (None, want) for d, want in zip(dims[1:], x.shape[1:])):
            raise UserError(f"--data gives images of shape N x {x.shape[1]} x {x.shape[2]} x {x.shape[3]} "
                            f"but model input {vi.name!r} has shape {dims}")
        step = dims[0] or len(x)
        return [{vi.name: np.ascontiguousarray(x[i:i + step])}
                for i in range(0, len(x) - step + 1, step)]
    return feeds


def padding_line(padding: dict) -> str:
    """What padding the 1x1 convolutions costs, applied or not (passes.pad_1x1.padding_cost)."""
    def cells(n: int) -> str:
        return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"

    c, cp = padding["cells"], padding["cells_padded"]
    cost = (f"{padding['convs_1x1']} 1x1 convolution(s); padded to 3x3 the mapped cells go from {cells(c)} to "
            f"{cells(cp)} (x{cp / max(c, 1):.2f}, paper preset)")
    if padding["applied"]:
        return f"1x1 padding applied ({padding['why']}): {cost}"
    return f"1x1 padding not applied ({padding['why']}; --pad-1x1 applies it): {cost}"


def run(args) -> int:
    import passes as P

    if args.list:
        for name, text in P.list_passes().items():
            print(f"{name:<20} {text}")
        print(f"{'standard':<20} = {','.join(P.STANDARD)}")
        return 0
    if not args.input:
        raise UserError("give IN.onnx and --out OUT.onnx, or --list (see `rram passes --help`)")
    args.output = output_of(args, "output", "passes")
    if not args.data and args.images is not None:
        raise UserError("--real-images chooses the real images of --data: give --data too")
    res = P.run_file(args.input, args.output, args.passes, verify=args.verify,
                     tolerance=P.DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance,
                     seed=args.seed, batch=args.batch, input_shapes=dict(args.input_shape),
                     inputs=_image_feeds(args) if args.data else None, bn_rate=args.bn_rate,
                     normalization=normalization_from_args(args), pad_1x1=True if args.pad_1x1 else None)
    for w in res.warnings:
        print(f"rram: warning: {w}", file=sys.stderr)
    v = res.verification
    result = {"input": args.input, "output": args.output, "passes": res.passes, "bn_rate": res.bn_rate,
              "before": res.before, "after": res.after, "stats": res.stats, "warnings": res.warnings,
              "pass_seconds": {k: round(t, 4) for k, t in res.pass_seconds.items()},
              "export_seconds": round(res.export_seconds, 3), "verify_seconds": round(res.verify_seconds, 3),
              "verification": v, "padding": res.padding, "written": [str(p) for p in res.written]}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from passes.summary import format_summary
    print(format_summary(res.before, res.after))
    if res.padding.get("convs_1x1"):
        print(padding_line(res.padding))
    print(f"passes {','.join(res.passes)}: {res.seconds:.3f} s"
          + (f", BN statistics of rate {res.bn_rate}" if res.bn_rate else ""))
    if v:
        print(f"verified ({args.verify}) on {v['input_sets']} input set(s): max relative difference "
              f"{v['max_rel_diff']:.2g} <= {v['tolerance']:g} ({res.verify_seconds:.2f} s)")
    else:
        print("not verified (--verify off)")
    print(f"wrote {args.output}")
    return 0

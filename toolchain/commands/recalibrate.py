"""``rram recalibrate``: BN re-alignment (UpdateVar) for each expected chip fault rate p'."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from runtime.fileio import check_output_path

from ..checkpoints import adopt_image_size, load_checkpoint, save_checkpoint
from ..data import check_for_model, load_split, random_subset, without_validation
from ..dropconnect import check_rate, rate_key
from ..errors import UserError
from ..recalibrate import recalibrate_bn
from ..training import resolve_device
from .common import (
    MODEL_HELP,
    add_data_args,
    add_normalization_args,
    emit,
    float_list,
    hidden_alias,
    no_new_folders_on_failure,
    normalization_from_args,
    positive_int,
    seed,
)

RECALIBRATED = "recalibrated.pt"  # what `rram recalibrate --out DIR` writes in DIR


def output_file(out: str | Path) -> Path:
    """The checkpoint ``--out`` names: ``out`` itself when it ends in ``.pt``, else ``out/recalibrated.pt``."""
    out = Path(out)
    return out if out.suffix == ".pt" else out / RECALIBRATED


def parse_rates(text: str) -> list[float]:
    rates = float_list(text, "--bn-rate")
    for r in rates:
        check_rate(r, "recalibration rate")
    return list(dict.fromkeys(rates))


def add_parser(sub) -> None:
    p = sub.add_parser("recalibrate", help="re-estimate BN statistics per expected fault rate")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint path or known name")
    p.add_argument("--model", default=None, metavar="NAME", help=MODEL_HELP + " of a foreign checkpoint")
    p.add_argument("--bn-rate", default=None, metavar="P[,P...]",  # required (checked in run: an alias exists)
                   help="fault rates to re-estimate BN statistics for, comma-separated, e.g. 0,0.1,0.2,0.3")
    hidden_alias(p, "--rates", "bn_rate")
    p.add_argument("--out", required=True, metavar="DIR",
                   help=f"output folder (writes {RECALIBRATED}), or a .pt file path")
    p.add_argument("--batches", type=positive_int, default=None,
                   help="use only N batches of the training set (default: all of it)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--train-images", dest="images", type=positive_int, default=None, metavar="N",
                   help="a random subset of N training images")
    hidden_alias(p, "--images", "images", type=positive_int)
    p.add_argument("--hold-out-val", action=argparse.BooleanOptionalAction, default=None,
                   help="leave the validation images out of the BN statistics (default: when the checkpoint "
                        "trained with --hold-out-val, so that choices made on those images stay honest; "
                        "--no-hold-out-val reproduces a recalibration made before this default)")
    add_normalization_args(p)
    p.add_argument("--seed", type=seed, default=0, help="seed of the drop-connect masks and order, 0 <= seed < 2**32")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    add_data_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.bn_rate is None:
        raise UserError("give the fault rates to re-estimate BN statistics for: --bn-rate 0,0.1,0.2,0.3")
    rates = parse_rates(args.bn_rate)
    if args.batch_size < 2:
        raise UserError("--batch-size must be at least 2 (train-mode BatchNorm)")
    out_file = output_file(args.out)
    check_output_path(out_file)  # before the long forward passes
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, model=args.model, download=args.download,
                           normalization=normalization_from_args(args))
    model = ckpt.build().to(device)  # a mismatched checkpoint (or a failing factory) before the data
    # A model trained without the validation images must not see them here either: BN statistics
    # estimated on them would make its accuracy there (docs/RESULTS.md's choices) optimistic.
    hold_out_val = args.hold_out_val
    if hold_out_val is None:
        hold_out_val = bool((ckpt.meta.get("config") or {}).get("hold_out_val"))
    split = load_split(args.data, "train", cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       download=args.download)
    split = random_subset(without_validation(split) if hold_out_val else split, args.images, args.seed)
    adopt_image_size(ckpt, split.images.shape[1:3])
    check_for_model(split, ckpt.spec.num_classes, f"the model ({ckpt.spec.describe()})",
                    image_size=ckpt.spec.image_size)
    t0 = time.perf_counter()
    for r in rates:
        ckpt.bn_stats[rate_key(r)] = recalibrate_bn(model, split, ckpt.normalization, r,
                                                    batch_size=args.batch_size, batches=args.batches,
                                                    seed=args.seed, device=device)
    ckpt.meta = dict(ckpt.meta)
    ckpt.meta.pop("train_state", None)
    ckpt.meta["recalibration"] = {"rates": [rate_key(r) for r in rates], "batches": args.batches,
                                  "batch_size": args.batch_size, "images": len(split), "hold_out_val": hold_out_val,
                                  "seed": args.seed, "source": ckpt.source}
    with no_new_folders_on_failure(out_file.parent):  # a failed write leaves no empty --out
        save_checkpoint(ckpt, out_file)
    result = {"checkpoint": str(out_file), "rates": sorted(ckpt.bn_stats, key=float),
              "seconds": round(time.perf_counter() - t0, 2)}
    emit(result, args.json, f"BN statistics for rates {', '.join(result['rates'])} -> {out_file}")
    return 0

"""``rram train``: fault-aware training (drop-connect) from scratch or fine-tuning (--init).

Run under ``torchrun --nproc_per_node N -m toolchain train ...`` for DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.fileio import check_output_path

from ..data import check_class_folders, image_size_of
from ..errors import UserError
from ..models import ModelSpec, model_for_data
from ..training import LR_FINE_TUNING, LR_FROM_SCRATCH, PRECISIONS, TrainConfig, train
from .common import (
    MODEL_HELP,
    add_data_args,
    add_normalization_args,
    hidden_alias,
    no_new_folders_on_failure,
    normalization_from_args,
    positive_float,
    positive_int,
    rate,
    seed,
)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fault-aware training with drop-connect (also fine-tuning)")
    p.add_argument("--model", required=True, metavar="NAME", help=MODEL_HELP)
    p.add_argument("--width", type=positive_float, default=None,
                   help="width multiplier (widening; built-in models, default 1); a whole multiple of the "
                        "--init checkpoint's widens it function-preserving")
    p.add_argument("--pad-1x1", action="store_true", help="pad 1x1 convolutions to 3x3")
    p.add_argument("--shortcut", choices=["A", "B"], default=None, help="resnet20 shortcut option (default A)")
    p.add_argument("init", nargs="?", default=argparse.SUPPRESS, metavar="CKPT",
                   help="fine-tune this checkpoint (ours, or e.g. resnet20-akamaster / its .th file); "
                        "none: train from scratch")
    hidden_alias(p, "--init", "init")
    p.add_argument("--drop-rate", type=rate, required=True, metavar="P",
                   help="drop-connect probability in [0, 1); 0 = plain training")
    p.add_argument("--epochs", type=int, required=True, help="epochs to train (cosine schedule over them)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (checkpoints, log.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue a run of the same options in --out, replace a run of other options, "
                        "or start one (what `make demo` uses)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="global batch size")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"peak learning rate (default {LR_FROM_SCRATCH:g}, or {LR_FINE_TUNING:g} with --init)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    p.add_argument("--seed", type=seed, default=0, help="seed of every random draw, 0 <= seed < 2**32")
    p.add_argument("--train-images", dest="images", type=positive_int, default=None, metavar="N",
                   help="train on a random subset of N training images (tests)")
    hidden_alias(p, "--images", "images", type=positive_int)  # before --images meant evaluation images
    p.add_argument("--eval-images", type=positive_int, default=None,
                   help="test (or validation) accuracy after each epoch on a random subset of N images "
                        "(default: all; with --resume, the number the run began with)")
    p.add_argument("--hold-out-val", action="store_true",
                   help="train on the training split less its validation images (1 in 10, fixed; docs/RESULTS.md) "
                        "and measure each epoch on those: for a model whose choices are made on --split val "
                        "(default: off, all training images, each epoch on the test split)")
    _add_weight_noise_args(p)
    p.add_argument("--no-drop-first", action="store_true", help="no drop-connect on the first layer")
    p.add_argument("--no-drop-last", action="store_true", help="no drop-connect on the last layer")
    add_normalization_args(p)
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda")
    p.add_argument("--train-precision", dest="precision", choices=PRECISIONS, default="fp32",
                   help="the training arithmetic: fp32, or bf16: bfloat16 autocast for the forward pass, "
                        "float32 weights (1.4-2.4x faster per step on CPUs with AMX or AVX512-BF16 and on bf16 GPUs; "
                        "docs/training.md); the deployed model's --precision (fp32/int8) is rram validate's")
    hidden_alias(p, "--precision", "precision", choices=PRECISIONS)
    p.add_argument("--json", action="store_true", help="print the epoch log as JSON at the end")
    add_data_args(p)
    p.set_defaults(func=run)


def _add_weight_noise_args(p) -> None:
    """Training for the chip's programming variation (toolchain/variation.py ``WeightNoise``)."""
    from runtime.variation import PROGRAMMING_MODELS

    p.add_argument("--variation", type=float, default=0.0, metavar="SIGMA",
                   help="programming variation to train for: each weight's effective value perturbed as the chip's "
                        "programming would perturb it (a differential pair per weight, additive: sd SIGMA of the "
                        "conductance range, clipped; as rram validate --variation), a fresh draw every training "
                        "step, on the drop-connect layers (default: 0, none)")
    p.add_argument("--programming-model", dest="variation_model", choices=PROGRAMMING_MODELS, default="additive",
                   help="as rram validate's (default: additive)")


def run(args) -> int:
    spec = ModelSpec(args.model, args.width or 1.0, args.shortcut or "A", args.pad_1x1)
    if spec.is_factory and (args.width is not None or args.shortcut is not None):
        raise UserError(f"--width and --shortcut are for the built-in models; {args.model} builds its own "
                        f"architecture")
    # the model's input size is what the data holds; a factory model's classes are its outputs
    spec = model_for_data(spec, image_size_of(args.data))
    cfg = TrainConfig(
        spec=spec,
        drop_rate=args.drop_rate, epochs=args.epochs, out=args.out, data=args.data, init=getattr(args, "init", None),
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, seed=args.seed, images=args.images,
        eval_images=args.eval_images, include_first=not args.no_drop_first,
        include_last=not args.no_drop_last, resume=args.resume, auto_resume=args.auto_resume, device=args.device,
        precision=args.precision, hold_out_val=args.hold_out_val,
        variation=args.variation, programming_model=args.variation_model,
        cache_dir=args.cache_dir, use_cache=not args.no_cache, init_normalization=normalization_from_args(args))
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    check_output_path(out / "log.json")
    # wrong class folders would fail mid-epoch (IndexError) or train on shifted labels
    check_class_folders(cfg.data, cfg.spec.num_classes, f"the model ({cfg.spec.describe()})")
    with no_new_folders_on_failure(out):  # a failed first epoch (full disk) leaves no empty --out
        log = train(cfg)
    if args.json and log["main"]:  # under torchrun, rank 0 speaks
        json.dump({k: v for k, v in log.items() if k != "main"}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0

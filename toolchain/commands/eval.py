"""``rram eval``: top-1 accuracy of a checkpoint on the CIFAR-10 test split."""
from __future__ import annotations

import time

import torch

from ..checkpoints import load_checkpoint
from ..data import load_split
from ..evaluate import accuracy
from .common import add_data_args, add_model_args, emit, normalization_from_args, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="top-1 accuracy of a checkpoint on the test split")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--images", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    ckpt = load_checkpoint(args.checkpoint, model=args.model, width=args.width, shortcut=args.shortcut,
                           normalization=normalization_from_args(args), download=args.download)
    model = ckpt.build()  # a mismatched checkpoint fails before any image is decoded
    split = load_split(args.data, args.split, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       download=args.download).subset(args.images)
    t0 = time.perf_counter()
    acc = accuracy(model, split, ckpt.normalization, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    result = {"model": ckpt.spec.to_dict(), "checkpoint": ckpt.source, "split": args.split,
              "images": len(split), "accuracy": acc, "seconds": round(seconds, 3),
              "threads": torch.get_num_threads()}
    emit(result, args.json, f"{ckpt.spec.describe()} on {args.split} ({len(split)} images): "
                            f"top-1 {100 * acc:.2f}%")
    return 0

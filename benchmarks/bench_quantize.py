"""Crossbar quantizer benchmark (docs/quantizer.md).

1. Clean (fault-free) top-1 of the shared ResNet20 on the 10,000 CIFAR-10 test images, float vs
   quantised for each device preset, both run by onnxruntime.
2. Time to quantise a ResNet-50-size model (torchvision resnet50, seeded random weights).

    PYTHONPATH=$PWD python benchmarks/bench_quantize.py --data ../shared/data/cifar10-jpeg \
        --checkpoint ../shared/models/resnet20-12fca82f.th [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.crossbar import PRESETS  # noqa: E402
from runtime.quantize import (  # noqa: E402
    json_safe,
    quantize_model,
    quantize_to_folder,
    write_artifact,
)
from toolchain.checkpoints import load_checkpoint  # noqa: E402
from toolchain.data import load_split, normalize, to_float_nchw  # noqa: E402


def export(model: torch.nn.Module, path: Path, size: int) -> None:
    # BN is folded into the convolutions by this (TorchScript) exporter in eval mode
    torch.onnx.export(model.eval(), torch.zeros(1, 3, size, size), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})


def onnx_accuracy(model_path: Path, x: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        logits = sess.run(None, {name: x[i:i + batch]})[0]
        correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return correct / len(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("RRAM_DATA", "../shared/data/cifar10-jpeg"))
    ap.add_argument("--checkpoint", default="../shared/models/resnet20-12fca82f.th")
    ap.add_argument("--images", type=int, default=None, help="N test images spread over the classes (default: all)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats for ResNet-50")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-resnet50", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    results: dict = {"threads": torch.get_num_threads(), "onnxruntime": ort.__version__}

    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        if not args.skip_accuracy:
            ckpt = load_checkpoint(args.checkpoint)
            export(ckpt.build(), tmp / "resnet20.onnx", 32)
            split = load_split(args.data, "test").subset(args.images)
            x = normalize(to_float_nchw(torch.from_numpy(split.images)), ckpt.normalization).numpy()
            float_acc = onnx_accuracy(tmp / "resnet20.onnx", x, split.labels)
            rows = [{"preset": "float", "accuracy": float_acc}]
            print(f"ResNet20 on {len(x)} test images (onnxruntime)")
            print(f"  {'float':<8} top-1 {100 * float_acc:6.2f}%")
            for name in presets:
                out = tmp / f"q-{name}"
                report = quantize_to_folder(tmp / "resnet20.onnx", out, PRESETS[name])
                acc = onnx_accuracy(out / "model.onnx", x, split.labels)
                t = report["total"]
                rows.append({"preset": name, "accuracy": acc, "delta_points": 100 * (acc - float_acc),
                             "sqnr_db": t["sqnr_db"], "tiles": t["tiles"], "cells": t["cells"],
                             "utilisation": t["utilisation"], "weight_dtype": report["weight_dtype"]})
                print(f"  {name:<8} top-1 {100 * acc:6.2f}% ({100 * (acc - float_acc):+.2f} points), "
                      f"SQNR {t['sqnr_db']:.1f} dB, {t['tiles']} tiles, {t['cells']} cells, "
                      f"utilisation {100 * t['utilisation']:.1f}%, {report['weight_dtype']} weights")
            results["resnet20"] = {"images": len(x), "rows": rows}

        if not args.skip_resnet50:
            import torchvision

            torch.manual_seed(0)
            export(torchvision.models.resnet50(weights=None), tmp / "resnet50.onnx", 224)
            size_mb = (tmp / "resnet50.onnx").stat().st_size / 2**20
            print(f"ResNet-50 ({size_mb:.0f} MB ONNX), best/median of {args.repeats}")
            timing = []
            for name in presets:
                q_s, w_s = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    model, cmap, report = quantize_model(tmp / "resnet50.onnx", PRESETS[name])
                    t1 = time.perf_counter()
                    write_artifact(tmp / f"r50-{name}", model, cmap, report, force=True)
                    t2 = time.perf_counter()
                    q_s.append(t1 - t0)
                    w_s.append(t2 - t1)
                row = {"preset": name, "quantize_s": min(q_s), "quantize_median_s": statistics.median(q_s),
                       "write_s": min(w_s), "total_median_s": statistics.median(a + b for a, b in zip(q_s, w_s)),
                       "layers": report["total"]["layers"], "weights": report["total"]["weights"],
                       "tiles": report["total"]["tiles"]}
                timing.append(row)
                print(f"  {name:<8} quantize {row['quantize_s']:.2f} s (median {row['quantize_median_s']:.2f}), "
                      f"write {row['write_s']:.2f} s, total median {row['total_median_s']:.2f} s; "
                      f"{row['layers']} layers, {row['weights']:,} weights, {row['tiles']} tiles")
            results["resnet50"] = {"onnx_mb": round(size_mb, 1), "rows": timing}

    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(results), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

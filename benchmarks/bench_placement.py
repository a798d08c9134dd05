"""The cost of fault-aware placement (issue 34; docs/runtime.md, "Fault-aware placement"): the
seconds to place one chip (`runtime.placement.place_chip`, spare rows included) against the seconds
to evaluate that chip on 10,000 images (fp32 engine, extrapolated from `--images` test images),
for the three study models on `paper` crossbars: the shared pretrained ResNet20, VGG13-BN at width
0.5 and MobileNetV2 at width 0.35 with every 1x1 padded to 3x3 (the study's shapes, random
weights: placement's cost depends on the shapes and the fault rate, not on the values). Target:
placing a ResNet20 chip under 10% of evaluating it.

    PYTHONPATH=. python benchmarks/bench_placement.py [--rate 0.1] [--images 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _artifact import build_resnet20_paper  # noqa: E402  (benchmarks/_artifact.py)


def build_random(folder: Path, arch: str, width: float, pad: bool) -> Path | None:
    """A randomly initialised study model through export, the standard passes and quantize."""
    import torch

    from toolchain.checkpoints import Checkpoint, save_checkpoint
    from toolchain.cli import main as rram
    from toolchain.data import CIFAR10_NORM
    from toolchain.models import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch, width=width)
    save_checkpoint(Checkpoint(spec, CIFAR10_NORM, build_model(spec).state_dict(), {}, {}), folder / "m.pt")
    passes = "standard" if pad else "eliminate-identity,fold-constants,fold-bn,eliminate-dead"
    for cmd in (["export", str(folder / "m.pt"), "--out", str(folder / "m.onnx")],
                ["passes", str(folder / "m.onnx"), "--out", str(folder / "m.p.onnx"), "--passes", passes],
                ["quantize", str(folder / "m.p.onnx"), "--out", str(folder / "art"), "--preset", "paper"]):
        if rram(cmd):
            return None
    return folder / "art"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=0.1, help="SA1 rate of the chips")
    ap.add_argument("--images", type=int, default=1000, help="test images evaluated (scaled to 10,000)")
    ap.add_argument("--repeats", type=int, default=3, help="chips per model (medians reported)")
    ap.add_argument("--checkpoint", default=str(ROOT.parent / "shared" / "models" / "resnet20-12fca82f.th"))
    args = ap.parse_args()
    import numpy as np
    from scipy.optimize import linear_sum_assignment  # noqa: F401  (imported once, before timing)

    from runtime.artifact import DeployedModel
    from runtime.engine import Engine
    from runtime.faults import run_seed, sample_chip
    from runtime.placement import PhysicalChip, place_chip, placed_codes, sample_spares

    models = [("ResNet20 (shared, pretrained)", None), ("VGG13-BN, width 0.5", ("vgg13", 0.5, False)),
              ("MobileNetV2, width 0.35, 1x1 padded", ("mobilenetv2", 0.35, True))]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    print(f"{os.cpu_count()} cores; SA1 {args.rate:g}; medians of {args.repeats} chips")
    print("| model | cells | place one chip | evaluate it on 10,000 images | placement / evaluation |")
    print("|---|---|---|---|---|")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, how in models:
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                art = build_resnet20_paper(args.checkpoint, folder) if how is None else build_random(folder, *how)
            if art is None:
                print(f"| {name} | build failed |")
                continue
            model = DeployedModel.load(art)
            cmap = model.cmap
            engine = Engine(model, images, labels)
            place_s, eval_s = [], []
            for r in range(args.repeats):
                physical = PhysicalChip(sample_chip(cmap.cell_count(), args.rate, 0.0, run_seed(0, args.rate, 0.0, r)),
                                        sample_spares(cmap, args.rate, 0.0, 0, r))
                t = time.perf_counter()
                chip = placed_codes(cmap, physical, place_chip(cmap, physical))
                place_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                engine.chip_accuracy(chip)
                eval_s.append((time.perf_counter() - t) * 10_000 / args.images)
            p, e = statistics.median(place_s), statistics.median(eval_s)
            if how is None:
                worst = p / e
            print(f"| {name} | {cmap.cell_count():,} | {p:.2f} s | {e:.1f} s | {100 * p / e:.1f}% |", flush=True)
    print(f"\nResNet20: placement is {100 * worst:.1f}% of the evaluation (target: under 10%)")
    return 0 if worst < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Per-chip calibration cost and effect on the shared ResNet20 (docs/runtime.md, issue 12).

Builds the `paper` artifact through the documented flow (export, passes standard, quantize), then
times, on the same chips, a chip's evaluation on the test images without and with per-chip
calibration (`--calibrate N`), and reports the overhead per chip and the accuracies.

    PYTHONPATH=. python benchmarks/bench_calibration.py [--images 10000] [--chips 3] [--rate 0.1] [--calibrate 256]
        [--precision int8]   # int8: 500 training images set the activation ranges, as rram validate
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _artifact import build_resnet20_paper  # noqa: E402  (benchmarks/_artifact.py)

from runtime.artifact import DeployedModel  # noqa: E402
from runtime.calibration import calibration_indices  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from runtime.faults import run_seed, sample_chip  # noqa: E402
from toolchain.data import load_split, subset_indices  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--calibrate", type=int, default=256)
    ap.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    ap.add_argument("--checkpoint", default=str(ROOT.parent / "shared" / "models" / "resnet20-12fca82f.th"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rram-bench-cal-") as tmp:
        t = Path(tmp)
        if build_resnet20_paper(args.checkpoint, t) is None:
            return 1
        model = DeployedModel.load(t / "art")
        test = load_split(args.data, "test")
        idx = subset_indices(len(test), args.images)
        train = load_split(args.data, "train")
        calib = train.images[calibration_indices(len(train), args.calibrate, 0)]
        kw = {"precision": args.precision}
        if args.precision == "int8":
            kw["calibration"] = train.images[subset_indices(len(train), 500)]
        plain = Engine(model, test.images[idx], test.labels[idx], **kw)
        calibrated = Engine(model, test.images[idx], test.labels[idx], calibrate=calib, **kw)
        chips = [sample_chip(model.cmap.cell_count(), args.rate, 0.0, run_seed(0, args.rate, 0.0, r))
                 for r in range(args.chips)]
        # plain and calibrated evaluations of each chip back to back (machine load moves both
        # alike), plus the calibration step alone (measure the chip, fold scale/offset): the cost
        # per chip that calibration adds, whatever the number of test images
        for engine in (plain, calibrated):
            engine.chip_accuracy(chips[0])  # warm-up (sessions, caches)
        t_plain, t_cal, t_step, a_plain, a_cal = [], [], [], [], []
        for chip in chips:
            for engine, times, accs in ((plain, t_plain, a_plain), (calibrated, t_cal, a_cal)):
                t0 = time.perf_counter()
                accs.append(engine.chip_accuracy(chip))
                times.append(time.perf_counter() - t0)
            w = calibrated.weights(chip)
            t0 = time.perf_counter()
            calibrated.calibrator.evaluated(w, calibrated.calibrator.measure(w))
            t_step.append(time.perf_counter() - t0)
    tp, tc, ts = float(np.median(t_plain)), float(np.median(t_cal)), float(np.median(t_step))
    print(f"ResNet20 `paper` artifact, {args.precision}, SA1 {args.rate:g}, {args.chips} chips, "
          f"{len(idx)} test images, --calibrate {args.calibrate} (medians over the chips)")
    print("| per chip | seconds | mean accuracy |\n|---|---|---|")
    print(f"| plain | {tp:.2f} | {100 * np.mean(a_plain):.2f}% |")
    print(f"| calibrated | {tc:.2f} | {100 * np.mean(a_cal):.2f}% |")
    print(f"calibration step alone: {ts:.3f} s per chip = {100 * ts / tp:.1f}% of a {len(idx)}-image chip; "
          f"whole-chip difference {100 * (tc - tp) / tp:.1f}% (target < 10% at 10000 images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

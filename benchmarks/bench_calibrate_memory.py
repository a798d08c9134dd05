"""Peak memory of per-chip calibration (`rram validate --calibrate N`) against N (issue 33).

Builds the shared ResNet20 `paper` artifact (benchmarks/_artifact.py), then for each N calibrates
one chip (10% SA1) in a fresh subprocess and reports its peak resident memory (VmHWM), the
peak before calibrating (training split, model, sessions) and the seconds the calibration took.
Up to CALIBRATION_BATCH (2,048) images run as one batch (as before), more are streamed in batches
of 2,048 (runtime/calibration.Statistics); ``--one-batch`` forces the one-batch path at every N
(the behaviour before streaming: about 0.42 GB per 1,000 images).

    PYTHONPATH=. python benchmarks/bench_calibrate_memory.py [--sizes 1000,10000,50000] [--precision int8]
        [--threads 2] [--one-batch]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _vm(key: str) -> float:
    """VmHWM or VmRSS of this process, GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def child(art: str, n: int, precision: str, threads: int, one_batch: bool, data: str) -> dict:
    """One chip calibrated on N training images, in this (fresh) process."""
    import numpy as np

    from runtime.artifact import DeployedModel
    from runtime.calibration import CALIBRATION_BATCH, calibration_indices
    from runtime.engine import Engine
    from runtime.faults import run_seed, sample_chip
    from toolchain.data import load_split, subset_indices

    model = DeployedModel.load(art)
    train = load_split(data, "train")
    calibrate = train.images[calibration_indices(len(train), n, 0)]
    kw = {"precision": precision, "threads": threads,
          "calibrate_batch": max(n, CALIBRATION_BATCH) if one_batch else CALIBRATION_BATCH}
    if precision == "int8":
        kw["calibration"] = train.images[subset_indices(len(train), 500)]
    engine = Engine(model, train.images[:100], train.labels[:100], calibrate=calibrate, **kw)
    chip = sample_chip(model.cmap.cell_count(), 0.1, 0.0, run_seed(0, 0.1, 0.0, 0))
    weights = engine.weights(chip)
    before = _vm("VmHWM")
    t0 = time.perf_counter()
    affines = engine.calibrator.measure(weights)
    seconds = time.perf_counter() - t0
    assert all(np.isfinite(a).all() and np.isfinite(b).all() for a, b in affines.values())
    return {"n": n, "streamed": engine.calibrator.stats.streamed, "peak_gb": _vm("VmHWM"),
            "before_gb": before, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000", help="comma-separated N (default 1000,10000,50000)")
    ap.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one-batch", action="store_true", help="force one batch at every N (before streaming)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per N (default 3600)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    ap.add_argument("--checkpoint", default=str(ROOT.parent / "shared" / "models" / "resnet20-12fca82f.th"))
    ap.add_argument("--child", nargs=2, metavar=("ART", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        doc = child(args.child[0], int(args.child[1]), args.precision, args.threads, args.one_batch, args.data)
        print(json.dumps(doc))
        return 0
    from _artifact import build_resnet20_paper  # benchmarks/_artifact.py

    rows = []
    with tempfile.TemporaryDirectory(prefix="rram-bench-calmem-") as tmp:
        if build_resnet20_paper(args.checkpoint, Path(tmp)) is None:
            return 1
        for n in (int(s) for s in args.sizes.split(",")):
            cmd = [sys.executable, __file__, "--child", str(Path(tmp) / "art"), str(n), "--precision",
                   args.precision, "--threads", str(args.threads), "--data", args.data]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            try:
                out = subprocess.run(cmd + (["--one-batch"] if args.one_batch else []), env=env, check=True,
                                     capture_output=True, text=True, timeout=args.timeout).stdout
            except subprocess.TimeoutExpired:
                print(f"N = {n}: over {args.timeout:g} s, stopped", file=sys.stderr)
                break
            except subprocess.CalledProcessError as e:
                print(f"N = {n}: failed\n{e.stderr}", file=sys.stderr)
                return 1
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"ResNet20 `paper` artifact, {args.precision}, one chip at 10% SA1, {args.threads} threads"
          f"{', one batch forced' if args.one_batch else ''}")
    print("| N | how | peak RSS (GB) | before calibrating (GB) | calibration (s) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {'streamed' if r['streamed'] else 'one batch'} | {r['peak_gb']:.2f} | "
              f"{r['before_gb']:.2f} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The campaign's bookkeeping per chip (issue 32; docs/runtime.md): the time `validate` spends per
chip outside the chip's evaluation (scheduling, the results record, running statistics, progress,
the journal line, the throttled rewrites of the results file, the final write), for a campaign
of N chips in one results file, N = 1,000 and 50,000. Target: the second figure at most 20% above
the first (a rewrite after every chip made it grow with N: 2.7 + 36 ms per chip at 4,000 chips,
24 + 356 ms at 40,000). Also: resuming 150 chips onto the 50,000-chip file (reading it and
writing it once are O(file), shared by the 150 chips).

The chip's evaluation is replaced by a fixed sleep (``--eval-ms``, timed and subtracted), so that
what is measured is the bookkeeping alone and the run takes minutes, not days; the artifact is
the shared ResNet20 on `paper` crossbars (its cell count and identity are real).

    PYTHONPATH=. python benchmarks/bench_bookkeeping.py [--sizes 1000,50000] [--eval-ms 1]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _artifact import build_resnet20_paper  # noqa: E402  (benchmarks/_artifact.py)

import runtime.campaign.run as campaign_run  # noqa: E402
from runtime.artifact import Artifact  # noqa: E402
from runtime.campaign import validate  # noqa: E402

EVALUATED = [0.0]  # seconds spent in the stand-in evaluation


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,50000", help="chips per campaign, comma-separated")
    ap.add_argument("--eval-ms", type=float, default=1.0, help="the stand-in chip evaluation's duration")
    ap.add_argument("--resume", type=int, default=150, help="chips resumed onto the largest file")
    ap.add_argument("--checkpoint", default=str(ROOT.parent / "shared" / "models" / "resnet20-12fca82f.th"))
    args = ap.parse_args()
    eval_s = args.eval_ms / 1000

    def chip(engine, cmap, chips, r, model, clean, subset_size=None, images=0):
        t = time.perf_counter()
        time.sleep(eval_s)
        EVALUATED[0] += time.perf_counter() - t
        stuck = chips.sa1 * (1 + 0.01 * np.sin(r))
        return {"accuracy": 0.5 + 0.4 * np.sin(r) ** 2, "stuck_fraction": stuck, "sa1_fraction": stuck,
                "sa0_fraction": 0.0}, True

    campaign_run.measure_chip = chip  # the stand-in evaluation (module attribute the campaign calls)
    campaign_run.clean_accuracy = lambda engine, cmap, model: 0.9
    images, labels = np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int64)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else \
        platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores; stand-in evaluation {args.eval_ms:g} ms per chip")
    print("| chips in the file | bookkeeping per chip | of which rewrites | wall |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # the build's own tables are not this benchmark's
            art = build_resnet20_paper(args.checkpoint, Path(tmp))
        if art is None:
            return 1
        artifact = Artifact.load(art)
        figures = []
        for n in (int(x) for x in args.sizes.split(",")):
            out = Path(tmp) / f"r{n}.json"
            per_chip, rewrite = run(artifact, images, labels, out, n, n, resume=False)
            figures.append(per_chip)
            print(f"| {n:,} | {1e6 * per_chip:.1f} µs | {1e6 * rewrite:.1f} µs | "
                  f"{n * (per_chip + eval_s):.1f} s |", flush=True)
        largest = out
        done = n - args.resume
        doc = json.loads(largest.read_text())  # drop the last chips, then resume them
        doc["rates"][0]["runs"] = {k: v for k, v in doc["rates"][0]["runs"].items() if int(k) < done}
        largest.write_text(json.dumps(doc))
        per_chip, _ = run(artifact, images, labels, largest, n, args.resume, resume=True)
        print(f"\nresuming {args.resume} chips onto a file of {done:,}: {1e3 * per_chip:.2f} ms of bookkeeping "
              f"per chip")
        growth = figures[-1] / figures[0] - 1
        print(f"growth from {args.sizes.split(',')[0]} to {args.sizes.split(',')[-1]} chips: {100 * growth:+.1f}% "
              f"(target: at most +20%)")
    return 0 if growth <= 0.20 else 1


def run(artifact, images, labels, out, runs: int, chips: int, resume: bool) -> tuple[float, float]:
    """Seconds of bookkeeping per chip, and of it the rewrites' share (timed in ResultsWriter.snapshot)."""
    from runtime.campaign.writer import ResultsWriter

    snapshot, spent = ResultsWriter.snapshot, [0.0]

    def timed(self):
        t = time.perf_counter()
        snapshot(self)
        spent[0] += time.perf_counter() - t

    ResultsWriter.snapshot = timed
    EVALUATED[0] = 0.0
    t0 = time.perf_counter()
    validate(artifact, images, labels, sa1=[0.1], runs=runs, seed=0, out=out, resume=resume, progress=False)
    wall = time.perf_counter() - t0
    ResultsWriter.snapshot = snapshot
    return (wall - EVALUATED[0]) / chips, spent[0] / chips


if __name__ == "__main__":
    sys.exit(main())

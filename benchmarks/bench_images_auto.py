"""Precision-targeted campaign with per-chip image subsets vs the paper protocol (issue 15).

Builds the shared ResNet20's `paper` artifact through the documented flow (export, passes
standard, quantize), then runs, each as its own `rram validate` process at one SA1 rate with
--precision int8, and times the whole process (imports, data, int8 set-up, fault-free accuracy,
chips):

- auto:  `--ci 1.0 --images auto --runs 2000` (chips until the 95% CI half-width is <= 1 point,
         each on its own random subset of the test split, sized after the pilot chips);
- paper: `--runs 100` on all 10,000 test images (the paper's protocol).

    PYTHONPATH=. python benchmarks/bench_images_auto.py [--rate 0.1] [--ci 1.0] [--protocols auto,paper]

The paper protocol takes minutes (100 chips x 10,000 images); `--protocols auto` runs only the first.
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

from _artifact import build_resnet20_paper  # noqa: E402  (benchmarks/_artifact.py)


def campaign(art: Path, data: str, out: Path, rate: float, extra: list[str]) -> tuple[dict, float, list[str]]:
    """One `rram validate` process: its JSON summary, whole-process seconds, and the command."""
    cmd = ["rram", "validate", str(art), "--data", data, "--sa1", f"{rate:g}", "--precision", "int8",
           "--seed", "0", *extra, "--out", str(out), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RRAM_PROGRESS_SECONDS": "60"}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "toolchain", *cmd[1:]], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    seconds = time.perf_counter() - t0
    if run.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout[run.stdout.index("{"):]), seconds, cmd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--ci", type=float, default=1.0)
    ap.add_argument("--protocols", default="auto,paper", help="which to run: auto, paper or both")
    ap.add_argument("--data", default=os.environ.get(
        "RRAM_DATA", str(ROOT.parent / "shared" / "data" / "cifar10-jpeg")))
    ap.add_argument("--checkpoint", default=os.environ.get(
        "RRAM_WEIGHTS", str(ROOT.parent / "shared" / "models" / "resnet20-12fca82f.th")))
    args = ap.parse_args()
    protocols = {"auto": ["--ci", f"{args.ci:g}", "--images", "auto", "--runs", "2000"],
                 "paper": ["--runs", "100"]}
    wanted = args.protocols.split(",")
    if not set(wanted) <= set(protocols):
        ap.error(f"--protocols: choose from {', '.join(protocols)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rram-bench-auto-") as tmp:
        t = Path(tmp)
        if build_resnet20_paper(args.checkpoint, t) is None:
            return 1
        for name in wanted:
            doc, seconds, cmd = campaign(t / "art", args.data, t / f"{name}.json", args.rate, protocols[name])
            rows.append((name, doc, seconds, cmd))
    print(f"\nResNet20 `paper` artifact, SA1 {args.rate:g}, --precision int8, seed 0, one process each "
          f"(wall time of the whole process; 'of which chips': the campaign loop, after start-up, int8 set-up "
          f"and the fault-free accuracy on all test images)")
    print("| protocol | chips | images evaluated | images per chip | mean | 95% CI | half-width | "
          "between-chip sd | whole process | of which chips |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, doc, seconds, _ in rows:
        e = doc["rates"][0]
        s = e["summary"]
        half = 100 * (s["ci95"][1] - s["ci95"][0]) / 2
        if "images_evaluated" in s:
            evaluated, sd = s["images_evaluated"], s["sd_between"]
            auto = doc["config"]["images_auto"]
            size = e.get("images_auto", {}).get("size")
            per_chip = f"{auto['pilot']} (first {doc['config']['min_runs']})" + (f", then {size}" if size else "")
        else:
            evaluated, sd = s["n"] * doc["config"]["images"], s["std"]
            per_chip = str(doc["config"]["images"])
        print(f"| {name} | {s['n']} | {evaluated} | {per_chip} | {100 * s['mean']:.2f}% | "
              f"[{100 * s['ci95'][0]:.2f}, {100 * s['ci95'][1]:.2f}] | {half:.2f} | {100 * sd:.2f} | {seconds:.0f} s | "
              f"{doc['timing']['seconds']:.0f} s |")
    for name, doc, _, cmd in rows:
        print(f"{name}: {' '.join(cmd)}")
        if "images_auto" in doc["rates"][0]:
            print(f"  size chosen from: {json.dumps(doc['rates'][0]['images_auto'])}")
    if len(rows) == 2:
        (_, _, a, _), (_, _, b, _) = rows
        print(f"auto / paper whole-process time: {a / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The per-chip cost of the device non-idealities (issue 37; docs/runtime.md, "Device
non-idealities") on the shared ResNet20 `paper` artifact: a chip's weights with stuck cells alone
against stuck cells plus programming variation (sampling, programming, decoding), the noisy
weights of one batch with read noise, and one session (what read noise adds per batch). Best and
median of --repeats, in milliseconds.

    PYTHONPATH=. python benchmarks/bench_variation.py [--rate 0.1] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _artifact import build_resnet20_paper  # noqa: E402  (benchmarks/_artifact.py)


def timed(f, repeats: int) -> tuple[float, float]:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        ts.append(1000 * (time.perf_counter() - t))
    return min(ts), statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--checkpoint", default=os.path.join(os.environ.get("RRAM_WEIGHTS", str(ROOT.parent / "shared"
                                                                                           / "models")),
                                                         "resnet20-12fca82f.th"))
    args = ap.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        print(f"skipped: no checkpoint at {args.checkpoint}")
        return 0
    from runtime.artifact import DeployedModel
    from runtime.chips import RandomChips
    from runtime.session import make_session
    from runtime.variation import Nonideal

    with tempfile.TemporaryDirectory() as tmp:
        art = build_resnet20_paper(args.checkpoint, Path(tmp))
        if art is None:
            return 2
        dm = DeployedModel.load(art)
        plain = RandomChips.of(dm.cmap, args.rate, 0.0, 0)
        noisy = RandomChips.of(dm.cmap, args.rate, 0.0, 0, nonideal=Nonideal(programming_sigma=0.05, read_sigma=0.01))
        chip = noisy.sample(0)
        levels = dm.chip_levels(chip)
        weights = dm.chip_weights(plain.sample(0))
        rows = [("chip weights, stuck cells alone", timed(lambda: dm.chip_weights(plain.sample(0)), args.repeats)),
                ("chip weights, + programming variation", timed(lambda: dm.chip_weights(noisy.sample(0)),
                                                                args.repeats)),
                ("read noise: one batch's noisy weights", timed(lambda: dm.read_weights(levels, chip, 3),
                                                                args.repeats)),
                ("one session (read noise: one per batch)", timed(
                    lambda: make_session(dm.model_bytes_with(weights), shared_arena=True), args.repeats))]
    print(f"| ResNet20 `paper`, SA1 {args.rate:g}, {dm.cmap.cell_count():,} cells | best ms | median ms |")
    print("|---|---|---|")
    for name, (best, median) in rows:
        print(f"| {name} | {best:.1f} | {median:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

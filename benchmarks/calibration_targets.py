"""Per-chip calibration to BN targets against measured targets on one artifact (docs/runtime.md,
"Measured targets against BN targets"): the same chips, the same calibration images, three kinds
of target: ``bn`` (fold-bn's), ``measured`` (every mapped layer, the classifier included) and
``measured-no-classifier`` (measured, but only the layers a BN target would cover: the last mapped
layer, the classifier, left uncalibrated), which separates the two reasons the kinds differ.

    PYTHONPATH=. python benchmarks/calibration_targets.py ART [--sa1 0.1] [--runs 10] [--images 2000]
        [--calibrate 256] [--kinds bn,measured,measured-no-classifier] [--out-prefix PREFIX]

Prints one line per kind (fault-free and per-rate mean, sd) and each kind's paired mean gain over
the first; with --out-prefix writes PREFIX<kind>.json (the results files). Not a bench_* script:
`make bench` does not run it (minutes per kind)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("bn", "measured", "measured-no-classifier")


def run(art, images, labels, calib, kind: str, sa1: list[float], runs: int, out) -> dict:
    import runtime.engine as engine
    from runtime.campaign import validate

    layers = engine.calibrated_layers
    if kind == "measured-no-classifier":  # the last mapped layer (the classifier) keeps its bias, uncalibrated
        engine.calibrated_layers = lambda model, names: layers(model, names)[:-1]
    try:
        return validate(art, images, labels, sa1=sa1, runs=runs, seed=0, calibrate=calib, progress=True,
                        calibration_targets="bn" if kind == "bn" else "measured", out=out)
    finally:
        engine.calibrated_layers = layers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--sa1", default="0.1")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--calibrate", type=int, default=256)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--out-prefix", default=None)
    args = p.parse_args(argv)
    from runtime.calibration import calibration_indices
    from toolchain.data import load_split, subset_indices

    data = os.environ.get("RRAM_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"))
    test, train = load_split(data, "test"), load_split(data, "train")
    idx = subset_indices(len(test), args.images)
    calib = train.images[calibration_indices(len(train), args.calibrate, 0)]
    sa1 = [float(x) for x in args.sa1.split(",")]
    docs = {}
    for kind in args.kinds.split(","):
        if kind not in KINDS:
            p.error(f"unknown kind {kind!r}: choose from {', '.join(KINDS)}")
        out = f"{args.out_prefix}{kind}.json" if args.out_prefix else None
        docs[kind] = run(args.artifact, test.images[idx], test.labels[idx], calib, kind, sa1, args.runs, out)
    first = next(iter(docs.values()))
    for kind, doc in docs.items():
        line = [f"{kind:<24} fault-free {100 * doc['clean']['.']:.2f}%"]
        for e, e0 in zip(doc["rates"], first["rates"]):
            s = e["summary"]
            gain = np.array([e["runs"][k]["accuracy"] - e0["runs"][k]["accuracy"] for k in e0["runs"]]) * 100
            line.append(f"SA1 {e['sa1']:g}: {100 * s['mean']:.2f}% (sd {100 * s['std']:.2f}), paired gain "
                        f"{gain.mean():+.2f} (sd {gain.std(ddof=1) if len(gain) > 1 else 0:.2f})")
        print("; ".join(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

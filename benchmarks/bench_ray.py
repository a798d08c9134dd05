"""Ray's overhead on one machine (docs/scaling.md): the same campaign (shared ResNet20, `paper`
artifact, SA1 0.1) run in this process (`rram validate`, onnxruntime on all cores) and on a local
Ray instance (`rram validate --ray`: one worker per core, one onnxruntime thread each), wall time
of the whole `validate` call each (fault-free accuracy, workers' start-up and engines included);
starting the Ray instance itself is timed apart (a cluster is started once for many campaigns).
Checks the two results agree run for run. Target: Ray within 10% of the local run.

    PYTHONPATH=. python benchmarks/bench_ray.py [--images 2000] [--chips 100] [--rate 0.1] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _artifact import build_resnet20_paper  # noqa: E402  (benchmarks/_artifact.py)

from runtime.campaign import validate  # noqa: E402
from runtime.session import default_threads  # noqa: E402
from toolchain.data import load_split, subset_indices  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--chips", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=1, help="campaigns per executor, alternated (best kept)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    ap.add_argument("--checkpoint", default=str(ROOT.parent / "shared" / "models" / "resnet20-12fca82f.th"))
    args = ap.parse_args()
    try:
        import ray
    except ImportError:
        print("bench_ray: skipped, Ray is not installed (pip install 'rram-toolchain[ray]')")
        return 0
    with tempfile.TemporaryDirectory(prefix="rram-bench-ray-") as tmp:
        t = Path(tmp)
        if build_resnet20_paper(args.checkpoint, t) is None:
            return 1
        test = load_split(args.data, "test")
        idx = subset_indices(len(test), args.images)
        images, labels = test.images[idx], test.labels[idx]
        kw = dict(sa1=[args.rate], runs=args.chips, seed=0, progress=False)
        t0 = time.perf_counter()
        os.environ.setdefault("RAY_worker_niceness", "0")  # as `--ray` starts its local instance
        ray.init(include_dashboard=False, logging_level="ERROR")
        t_init = time.perf_counter() - t0
        workers = int(ray.cluster_resources()["CPU"])
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        docs = {}
        for rep in range(args.repeats):
            # alternated, so that a change in machine load weighs on both alike
            for name in (("local", "ray") if rep % 2 == 0 else ("ray", "local")):
                t0 = time.perf_counter()
                docs[name] = validate(t / "art", images, labels, ray=name == "ray", **kw)
                walls[name].append(time.perf_counter() - t0)
        ray.shutdown()
    same = [e["runs"] for e in docs["local"]["rates"]] == [e["runs"] for e in docs["ray"]["rates"]]
    local, on_ray = min(walls["local"]), min(walls["ray"])
    overhead = on_ray / local - 1
    print(f"{args.chips} chips x {len(labels)} images, SA1 {args.rate:g}, ResNet20 `paper` "
          f"(mean accuracy {100 * docs['local']['rates'][0]['summary']['mean']:.2f}%)")
    print(f"| executor | wall s (best of {args.repeats}) | all runs s |")
    print("|---|---|---|")
    print(f"| this process, {default_threads()} onnxruntime threads | {local:.1f} | "
          f"{', '.join(f'{w:.1f}' for w in walls['local'])} |")
    print(f"| local Ray instance, {workers} workers x 1 thread | {on_ray:.1f} | "
          f"{', '.join(f'{w:.1f}' for w in walls['ray'])} |")
    print(f"| starting the Ray instance (once per cluster) | {t_init:.1f} | |")
    print(f"Ray overhead: {100 * overhead:+.1f}% (target < 10%: {'met' if overhead < 0.10 else 'NOT met'}); "
          f"with the instance's start: {100 * ((on_ray + t_init) / local - 1):+.1f}%; "
          f"identical run for run: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

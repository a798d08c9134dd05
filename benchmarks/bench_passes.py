"""Time the standard pass pipeline (eliminate-identity, fold-constants, fold-bn, pad-1x1-to-3x3,
eliminate-dead) on our CIFAR models and on torchvision ResNet-50 (random init, 224x224, exported
with the TorchScript exporter and BN kept, as `rram export` does). Nothing downloads.

Target: the pipeline on the ResNet-50 graph, verification excluded, under 2 s.

    PYTHONPATH=. python benchmarks/bench_passes.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # randomize_bn: the same seeded BN statistics as the passes tests

import torch  # noqa: E402
import torchvision  # noqa: E402

import passes  # noqa: E402
from passes import model_io  # noqa: E402
from toolchain.models import ModelSpec, build_model  # noqa: E402

from _passes_util import randomize_bn  # noqa: E402

TARGET_S = 2.0


def export(model, path: Path, size: int) -> None:
    torch.manual_seed(0)
    randomize_bn(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, size, size),), str(path), dynamo=False,
                          do_constant_folding=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per model; the best is reported")
    args = ap.parse_args()
    torch.manual_seed(0)
    models = [("resnet20 (CIFAR)", lambda: build_model(ModelSpec("resnet20")), 32),
              ("mobilenetv2 (CIFAR)", lambda: build_model(ModelSpec("mobilenetv2")), 32),
              ("vgg13 (CIFAR)", lambda: build_model(ModelSpec("vgg13")), 32),
              ("resnet50 (ImageNet)", lambda: torchvision.models.resnet50(), 224)]
    print(f"torch threads {torch.get_num_threads()}; best of {args.repeat} runs; seconds")
    head = (f"{'model':<21}{'nodes':>12}{'MB in/out':>12}{'load':>7}{'passes':>8}{'export':>8}"
            f"{'save':>7}{'verify':>8}{'max diff':>10}")
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory(prefix="bench-passes-") as d:
        for name, build, size in models:
            src = Path(d) / "in.onnx"
            out = Path(d) / "out.onnx"
            export(build(), src, size)
            best = None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                model = model_io.load(src)
                t_load = time.perf_counter() - t0
                res = passes.run(model, "standard", verify="off")
                t0 = time.perf_counter()
                model_io.save(res.model, out)
                t_save = time.perf_counter() - t0
                row = (t_load, res.seconds, res.export_seconds, t_save)
                best = row if best is None or row[1] < best[1] else best
            # Verification once (random input, batch 2), timed separately.
            ver = passes.run(model, "standard", verify="end")
            nodes = f"{res.before['nodes']}->{res.after['nodes']}"
            mb = f"{src.stat().st_size / 1e6:.0f}/{out.stat().st_size / 1e6:.0f}"
            print(f"{name:<21}{nodes:>12}{mb:>12}{best[0]:>7.2f}{best[1]:>8.2f}{best[2]:>8.2f}"
                  f"{best[3]:>7.2f}{ver.verify_seconds:>8.2f}{ver.verification['max_rel_diff']:>10.1e}")
            if name.startswith("resnet50"):
                r50 = best
    ok = r50[1] < TARGET_S
    print(f"\ntarget: passes on ResNet-50 under {TARGET_S:.0f} s (verification excluded): "
          f"{r50[1]:.2f} s -> {'MET' if ok else 'MISSED'}")
    print(f"(load + passes + export + save: {sum(r50):.2f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

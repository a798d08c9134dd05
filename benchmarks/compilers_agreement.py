"""Agreement of real compilers with the toolchain's own runtime (docs/deploying.md).

The shared ResNet20 through the CLI (export, passes standard, quantize paper; and the same with
``embed-normalization``), then on the CIFAR-10 test images: the float model after passes, the QDQ
``model.onnx`` and the QDQ model with the normalisation embedded, each run by onnxruntime,
OpenVINO (defaults, and the documented settings: f32, dynamic quantisation off) and Apache TVM
(Relax ONNX frontend, llvm, untuned). Reference: the toolchain's fault-free engine
(``runtime.engine.Engine``, what ``rram validate --precision fp32`` runs) for the artifacts, and
onnxruntime (what ``rram passes`` verifies with) for the float model. Prints per row: images,
argmax agreement with the reference, max |logit difference|, that relative to max |logit|, top-1
(the reference's top-1 on the same images). TVM runs on ``--tvm-images`` of them only (every k-th; untuned, slow).

    RRAM_CACHE=... PYTHONPATH=$PWD python benchmarks/compilers_agreement.py \
        --data ../shared/data/cifar10-jpeg --checkpoint ../shared/models/resnet20-12fca82f.th \
        [--images 10000] [--tvm-images 1000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the same compiler calls as tests/test_compilers.py

from runtime.artifact import DeployedModel  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from runtime.metadata import Normalization, normalize_images  # noqa: E402
from toolchain.cli import main as rram  # noqa: E402
from toolchain.data import load_split  # noqa: E402

from _compilers import (  # noqa: E402
    OPENVINO_EXACT,
    compare,
    onnxruntime_logits,
    openvino_logits,
    tvm_logits,
)


def engine_logits(folder: Path, images, labels, batch: int = 500) -> np.ndarray:
    """The toolchain's own fault-free fp32 engine on the artifact (as ``rram validate``)."""
    eng = Engine(DeployedModel.load(folder), images, labels, batch_size=batch)
    sess = eng.session()
    return np.concatenate([sess.run(None, {eng.feed_name: eng.feed[i:i + batch]})[0]
                           for i in range(0, len(labels), batch)])


def build(work: Path, checkpoint: Path) -> dict:
    for argv in (["export", checkpoint, "--model", "resnet20", "--out", work / "r20.onnx"],
                 ["passes", work / "r20.onnx", "--out", work / "r20.passes.onnx", "--passes", "standard"],
                 ["quantize", work / "r20.passes.onnx", "--out", work / "art", "--preset", "paper"],
                 ["passes", work / "r20.onnx", "--out", work / "r20.emb.onnx",
                  "--passes", "standard,embed-normalization"],
                 ["quantize", work / "r20.emb.onnx", "--out", work / "art-emb", "--preset", "paper"]):
        if rram([str(a) for a in argv]):
            raise SystemExit(f"rram {' '.join(map(str, argv))} failed")
    return {"float after passes": (work / "r20.passes.onnx", None),
            "QDQ model.onnx (paper)": (work / "art" / "model.onnx", work / "art"),
            "QDQ, normalisation embedded": (work / "art-emb" / "model.onnx", work / "art-emb")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--tvm-images", type=int, default=1000,
                    help="TVM on N of the images only, every k-th (untuned llvm: ~0.05 s an image on 2 busy cores)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    split = load_split(args.data, "test")
    if args.images < len(split.labels):
        split = split.subset(args.images)
    images, labels = split.images, np.asarray(split.labels)
    import onnx
    import openvino as ov

    rows = []
    with tempfile.TemporaryDirectory(prefix="rram-compilers-") as tmp:
        models = build(Path(tmp), Path(args.checkpoint))
        for model_name, (path, folder) in models.items():
            meta = {p.key: p.value for p in onnx.load(path).metadata_props}
            norm = Normalization.from_metadata(meta, path)  # None when the model normalises itself
            x = normalize_images(images, norm)  # [0, 1] when the model normalises itself
            if folder is not None:
                ref, ref_name = engine_logits(folder, images, labels), "toolchain engine"
            else:
                ref, ref_name = onnxruntime_logits(path, x), "onnxruntime"
            # TVM: every k-th image (the split is ordered by class: the first N would be one class)
            n_all = len(labels)
            pick = np.arange(0, n_all, max(1, n_all // min(args.tvm_images, n_all)))[:args.tvm_images]
            every = np.arange(n_all)
            runs = {"onnxruntime (defaults)": (every, lambda p=path, x=x: onnxruntime_logits(p, x)),
                    "OpenVINO defaults": (every, lambda p=path, x=x: openvino_logits(p, x, None)),
                    "OpenVINO f32, dyn. quant. off":
                        (every, lambda p=path, x=x: openvino_logits(p, x, OPENVINO_EXACT)),
                    "TVM Relax llvm (untuned)": (pick, lambda p=path, x=x[pick]: tvm_logits(p, x, batch=100))}
            for backend, (idx, fn) in runs.items():
                t0 = time.perf_counter()
                got = fn()
                n = len(idx)
                row = {"model": model_name, "backend": backend, "reference": ref_name, "images": n,
                       **compare(ref[idx], got), "top1": float(np.mean(got.argmax(1) == labels[idx])),
                       "reference_top1": float(np.mean(ref[idx].argmax(1) == labels[idx])),
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(f"| {model_name} | {backend} | {n} | {row['argmax_agreement'] * 100:.2f}% | "
                      f"{row['max_abs_diff']:.2g} | {row['max_rel_diff']:.2g} | {row['top1'] * 100:.2f}% "
                      f"({row['reference_top1'] * 100:.2f}%) |", flush=True)
    core = ov.Core()
    info = {"images": int(len(labels)), "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "openvino_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "openvino": ov.__version__}
    print(json.dumps(info))
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fault-injection campaign throughput on the shared ResNet20 (docs/runtime.md).

Prints one table: image inferences per second under distinct fault maps for the validate engine,
a plain PyTorch loop doing the same work (copy the weights, zero the sampled ones, evaluate: the
approach of the paper and of PytorchFI), onnxruntime on the fault-free model with no fault
handling, the alternative ways to feed weights to onnxruntime that we measured and rejected, and
the machine's floor (model FLOPs x images / measured fp32 matrix-multiply rate).

    PYTHONPATH=. python benchmarks/bench_runtime.py [--images 2000] [--runs 3] [--rate 0.1] [--no-int8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import helper, numpy_helper, shape_inference  # noqa: E402

from runtime.artifact import DeployedModel  # noqa: E402
from runtime.crossbar import preset  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from runtime.faults import run_seed, sample_chip  # noqa: E402
from runtime.metadata import NORMALIZATION_KEY  # noqa: E402
from runtime.quantize import quantize_to_folder  # noqa: E402
from runtime.session import default_threads  # noqa: E402
from toolchain.data import subset_indices  # noqa: E402


def deploy_paper_artifact(model, normalization: dict, tmp: Path) -> Path:
    """Float ONNX (legacy exporter, BN folded in eval mode) -> `rram quantize --preset paper`."""
    import json
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.zeros(1, 3, 32, 32), str(tmp / "float.onnx"), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    onx = onnx.load(str(tmp / "float.onnx"))
    onx.metadata_props.add(key=NORMALIZATION_KEY, value=json.dumps(normalization))
    quantize_to_folder(onx, tmp / "art", preset("paper"))
    return tmp / "art"


def model_flops(model: onnx.ModelProto) -> float:
    """Multiply-accumulates x 2 of the Conv/Gemm/MatMul nodes for one image."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for d in m.graph.input[0].type.tensor_type.shape.dim[:1]:
        d.ClearField("dim_param")
        d.dim_value = 1
    m = shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    flops = 0.0
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]]
            out = shapes[n.output[0]]
            flops += 2.0 * np.prod(w) * out[2] * out[3]
        elif n.op_type in ("Gemm", "MatMul") and n.input[1] in inits:
            flops += 2.0 * np.prod(inits[n.input[1]])
    return flops


def matmul_rate(threads: int, size: int = 1024, reps: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2.0 * size ** 3 * reps / (time.perf_counter() - t0)


def int8_matmul_rate(threads: int, size: int = 1024, reps: int = 20) -> float:
    """onnxruntime MatMulInteger (uint8 x int8 -> int32, the int8 convs' GEMM kernel), ops/s."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mm",
        [helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [size, size])],
        [numpy_helper.from_array(rng.integers(-127, 128, (size, size)).astype(np.int8), "b")])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), so)
    a = rng.integers(0, 256, (size, size)).astype(np.uint8)
    sess.run(None, {"a": a})
    t0 = time.perf_counter()
    for _ in range(reps):
        sess.run(None, {"a": a})
    return 2.0 * size ** 3 * reps / (time.perf_counter() - t0)


def timed(fn, reps=1):
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    return (time.perf_counter() - t0) / reps, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--no-int8", dest="int8", action="store_false", help="skip the --precision int8 rows")
    args = ap.parse_args()
    threads = args.threads or default_threads()

    from toolchain.checkpoints import load_checkpoint
    from toolchain.data import load_split

    shared = ROOT.parent / "shared"
    ckpt = load_checkpoint(os.environ.get("RRAM_BENCH_CKPT", str(shared / "models" / "resnet20-12fca82f.th")))
    split = load_split(os.environ.get("RRAM_DATA", str(shared / "data" / "cifar10-jpeg")), "test", progress=False)
    idx = subset_indices(len(split), args.images)
    images, labels = split.images[idx], split.labels[idx]
    n = len(labels)

    tmpdir = tempfile.TemporaryDirectory(prefix="bench-runtime-")
    tmp = Path(tmpdir.name)
    model = ckpt.build()
    art = deploy_paper_artifact(model, ckpt.normalization.to_dict(), tmp)
    dm = DeployedModel.load(art)
    eng = Engine(dm, images, labels, batch_size=args.batch_size, threads=threads)
    x = eng.x
    chips = [sample_chip(dm.cmap.cell_count(), args.rate, 0.0, run_seed(0, args.rate, 0.0, r))
             for r in range(args.runs)]

    # (b) onnxruntime, fault-free model, no fault handling: one session, warmed up
    sess = eng.session()
    eng.accuracy_of(sess)

    # the validate engine: sample + decode + session + evaluate, per distinct chip
    def engine_run(r):
        return eng.chip_accuracy(sample_chip(dm.cmap.cell_count(), args.rate, 0.0, run_seed(0, args.rate, 0.0, r)))

    # (a) PyTorch loop: copy weights, zero the sampled ones, evaluate the same images
    torch.set_num_threads(threads)
    clean_state = {k: v.clone() for k, v in model.state_dict().items()}
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def torch_run(r):
        model.load_state_dict(clean_state)
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight[torch.rand(m.weight.shape, generator=gen) < args.rate] = 0
        correct = 0
        for s in range(0, n, args.batch_size):
            correct += int((model(xt[s:s + args.batch_size]).argmax(1) == yt[s:s + args.batch_size]).sum())
        return correct / n
    torch_run(0)

    # rejected alternatives for feeding per-chip weights (chip 0 each time)
    w = dm.chip_weights(chips[0])
    m = onnx.ModelProto.FromString(dm.model_bytes_with(None))
    keep = [t_ for t_ in m.graph.initializer if t_.name not in dm.weight_names]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    for name, arr in zip(dm.weight_names, w):
        m.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, arr.shape))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s_in = ort.InferenceSession(m.SerializeToString(), so)
    feeds = dict(zip(dm.weight_names, w))

    def inputs_run(r):
        c = 0
        for s in range(0, n, args.batch_size):
            out = s_in.run(None, {dm.input_name: x[s:s + args.batch_size], **feeds})[0]
            c += int((out.argmax(1) == labels[s:s + args.batch_size]).sum())
        return c / n

    def add_init_session(level):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = level
        vals = [ort.OrtValue.ortvalue_from_numpy(a) for a in w]
        for name, v in zip(dm.weight_names, vals):
            so.add_initializer(name, v)
        s_ = ort.InferenceSession(dm.model_bytes_with(None), so)
        s_._keep = vals
        return s_
    s_ext = add_init_session(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    s_all = add_init_session(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)

    methods = [
        ("onnxruntime fault-free, no fault handling (b)", lambda r: eng.accuracy_of(sess), ""),
        (f"validate engine fp32, SA1 {args.rate:g}", engine_run, "per chip: sample, decode, session, run"),
        (f"PyTorch loop fp32, SA1 {args.rate:g} (a)", torch_run, "copy weights, zero sampled, eval"),
        ("alt: weights as graph inputs (chip 0)", inputs_run, "no pre-packing"),
        ("alt: add_initializer, ORT_ENABLE_EXTENDED (chip 0)", lambda r: eng.accuracy_of(s_ext), "no NCHWc"),
        ("alt: add_initializer, ORT_ENABLE_ALL (chip 0)", lambda r: eng.accuracy_of(s_all), "full opt."),
    ]
    if args.int8:
        eng8 = Engine(dm, images, labels, batch_size=args.batch_size, threads=threads, precision="int8",
                      calibration=split_train_calibration())
        clean8, clean32 = eng8.clean_accuracy(), eng.clean_accuracy()
        methods.append((f"validate engine int8, SA1 {args.rate:g}",
                        lambda r: eng8.chip_accuracy(chips[r]),
                        f"fault-free {100 * clean8:.2f}% (fp32 {100 * clean32:.2f}%)"))
    # round-robin, so that load from other jobs hits every method alike; best run of each counts
    times = {name: [] for name, _, _ in methods}
    accs = {name: [] for name, _, _ in methods}
    for r in range(args.runs):
        for name, fn, _ in methods:
            t0 = time.perf_counter()
            accs[name].append(fn(r))
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name, _, note in methods:
        rows.append((name, n / min(times[name]), n / float(np.median(times[name])), float(np.mean(accs[name])), note))
    chip0 = accs[methods[3][0]][0]
    rows = [(a, b, c, d, e + ("; WRONG accuracy (computes with stale weights)" if a.startswith("alt: add_init")
                              and accs[a][0] != chip0 else "")) for a, b, c, d, e in rows]
    rate_of = {name: best for name, best, *_ in rows}
    base = rate_of[methods[0][0]]
    engine_rate = rate_of[methods[1][0]]
    torch_rate = rate_of[methods[2][0]]
    if args.int8:
        int8_rate = rate_of[methods[-1][0]]
    t_prep, _ = timed(lambda: eng.session(dm.chip_weights(chips[0])), reps=3)

    flops = model_flops(onnx.load(str(tmp / "float.onnx")))
    rate = matmul_rate(threads)
    floor = rate / flops
    rows.append(("floor: FLOPs x images / fp32 matmul rate", floor, floor, None,
                 f"{flops / 1e6:.1f} MFLOP/image, {rate / 1e9:.1f} GFLOP/s (1024^3 torch matmul)"))
    if args.int8:
        rate8 = int8_matmul_rate(threads)
        floor8 = rate8 / flops
        rows.append(("int8 floor: ops x images / int8 matmul rate", floor8, floor8, None,
                     f"{rate8 / 1e9:.0f} GOP/s (1024^3 onnxruntime MatMulInteger u8 x s8)"))

    print(f"\nResNet20 (shared checkpoint), {n} test images, {args.runs} chips, {threads} threads, "
          f"batch {args.batch_size}, providers {eng.providers[0]}; per-chip prep (decode+session) "
          f"{1000 * t_prep:.0f} ms\n")
    print(f"| {'what':52s} | {'img/s best':>10s} | {'img/s med':>9s} | {'accuracy':>8s} | note")
    print(f"|{'-' * 54}|{'-' * 12}|{'-' * 11}|{'-' * 10}|------")
    for name, best, med, acc, note in rows:
        a = f"{100 * acc:.2f}%" if acc is not None else "-"
        print(f"| {name:52s} | {best:10.0f} | {med:9.0f} | {a:>8s} | {note}")
    print("\nratios use each method's best run (methods measured round-robin)")
    print(f"engine vs PyTorch loop: {engine_rate / torch_rate:.2f}x (target >= 2x); "
          f"engine vs fault-free onnxruntime: {100 * engine_rate / base:.0f}% (target >= 90%); "
          f"engine vs floor: {100 * engine_rate / floor:.0f}%")
    if args.int8:
        print(f"int8 engine vs fp32 engine: {int8_rate / engine_rate:.2f}x (target >= 2x); "
              f"vs PyTorch loop: {int8_rate / torch_rate:.2f}x (target >= 4x); "
              f"vs int8 floor: {100 * int8_rate / floor8:.0f}%")
    print(f"2x the PyTorch loop would be {2 * torch_rate:.0f} img/s: "
          f"{'above' if 2 * torch_rate > floor else 'below'} the fp32 floor ({floor:.0f})")
    print("(timings move with machine load: compare ratios from one run, on an idle machine)")
    tmpdir.cleanup()
    return 0


def split_train_calibration():
    from toolchain.data import load_split, subset_indices as sub

    shared = ROOT.parent / "shared"
    tr = load_split(os.environ.get("RRAM_DATA", str(shared / "data" / "cifar10-jpeg")), "train", progress=False)
    return tr.images[sub(len(tr), 500)]


if __name__ == "__main__":
    sys.exit(main())

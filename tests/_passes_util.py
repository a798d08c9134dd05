"""Shared helpers for the passes tests (and benchmarks/bench_passes.py): seeded BN statistics,
model export, independent onnxruntime comparison, and small hand-built ONNX graphs."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

TOL = 1e-5  # max |diff| / max |output| every pass must stay under on these models


def randomize_bn(model, seed: int = 0):
    """Seeded, non-trivial BN statistics and affine parameters, in place; returns the model in
    eval mode. Fresh BN layers are identities, which would hide BN-folding bugs and can collapse a
    random-init net to its last bias: the passes tests and benchmark check folding on these."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


def export(model: torch.nn.Module, path, size: int, dynamo: bool = False, optimize: bool = True) -> None:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=True, optimize=optimize, verbose=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def ort_outputs(model, feeds: dict) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def input_feeds(model: onnx.ModelProto, batch: int = 3, seed: int = 7) -> dict:
    """Inputs independent of the verifier's (different seed and batch)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def max_rel_diff(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict) -> float:
    worst = 0.0
    for x, y in zip(ort_outputs(a, feeds), ort_outputs(b, feeds)):
        assert x.shape == y.shape
        worst = max(worst, float(np.max(np.abs(x - y)) / np.max(np.abs(x))))
    return worst


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def one_by_one_convs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        ks = [list(a.ints) for a in n.attribute if a.name == "kernel_shape"]
        shape = ks[0] if ks else list(inits[n.input[1]].dims[2:])
        if shape == [1, 1]:
            out.append(n.name)
    return out


def foldable_bns(model: onnx.ModelProto) -> list[str]:
    """BN nodes whose input is a Conv/Gemm output used only by that BN."""
    prod = {o: n for n in model.graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    return [n.name for n in model.graph.node if n.op_type == "BatchNormalization"
            and n.input[0] in prod and prod[n.input[0]].op_type in ("Conv", "Gemm")
            and uses[n.input[0]] == 1]


# --- hand-built graphs -------------------------------------------------------------------------

def _rng(seed):
    return np.random.default_rng(seed)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def bn_inits(prefix, c, rng):
    return [init(f"{prefix}.gamma", (rng.random(c) + 0.5).astype(np.float32)),
            init(f"{prefix}.beta", (rng.standard_normal(c) * 0.2).astype(np.float32)),
            init(f"{prefix}.mean", (rng.standard_normal(c) * 0.2).astype(np.float32)),
            init(f"{prefix}.var", (rng.random(c) + 0.5).astype(np.float32))]


def bn_node(prefix, x, y, **attrs):
    return helper.make_node("BatchNormalization", [x, f"{prefix}.gamma", f"{prefix}.beta",
                                                   f"{prefix}.mean", f"{prefix}.var"], [y],
                            name=prefix, **attrs)


def make_model(nodes, inits, inputs, outputs, opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "test", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    # Outputs declared with shape None get their inferred type (the checker wants a shape).
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for o in m.graph.output:
        if not o.type.tensor_type.HasField("shape") and o.name in types:
            o.type.CopyFrom(types[o.name])
    onnx.checker.check_model(m)
    return m


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_bn_model(cin=4, cout=8, k=3, group=1, stride=1, bias=True, pads=None, seed=0,
                  with_bn=True, size=9) -> onnx.ModelProto:
    """x -> Conv -> [BN] -> y."""
    rng = _rng(seed)
    w = (rng.standard_normal((cout, cin // group, k, k)) * 0.3).astype(np.float32)
    inits = [init("w", w)]
    conv_in = ["x", "w"]
    if bias:
        inits.append(init("b", (rng.standard_normal(cout) * 0.1).astype(np.float32)))
        conv_in.append("b")
    p = [k // 2] * 4 if pads is None else pads
    nodes = [helper.make_node("Conv", conv_in, ["c"] if with_bn else ["y"], name="conv",
                              kernel_shape=[k, k], strides=[stride, stride], pads=p, group=group)]
    if with_bn:
        inits += bn_inits("bn", cout, rng)
        nodes.append(bn_node("bn", "c", "y"))
    return make_model(nodes, inits, [vi("x", ["N", cin, size, size])], [vi("y", None)])

"""docs/crossbar-format.md is implementable from the text alone: a reader written here from the
spec's steps (numpy, onnx, json, hashlib only; nothing from runtime/, passes/ or toolchain/ decodes)
decodes artifacts of every preset and both encodings, for Conv, grouped and depthwise Conv, Gemm
transB=1, Gemm transB=0 and MatMul layers, into exactly model.onnx's integer initializers and
DequantizeLinear outputs. The artifacts are made through the CLI (``rram quantize``)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.cli import main  # only to make the artifacts, as a user would

# ---------------------------------------------------------------- the reader, from the spec alone

def spec_decode(folder):
    """{integer initializer name: (integers in the stored shape, float32 weight in the stored
    shape, the layer's crossbars.json entry)}, following docs/crossbar-format.md step by step."""
    doc = json.loads((folder / "crossbars.json").read_text())
    assert doc["format"] == "rram-crossbar-map" and doc["version"] == 1
    assert doc["model_sha256"] == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    dev = doc["device"]
    b, s = dev["bits_per_cell"], dev["cells_per_weight"]
    planes = 2 if dev["encoding"] == "differential" else 1
    out = {}
    with np.load(folder / "crossbars.npz", allow_pickle=False) as z:
        for e in doc["layers"]:
            levels, scales = z[e["key"] + ".levels"], z[e["key"] + ".scales"]
            r, c = e["matrix_shape"]
            assert levels.dtype == np.uint8 and levels.shape == (planes, s, r, c)
            assert (e["planes"], e["slices"]) == (planes, s)
            assert scales.dtype == np.float32 and scales.shape == (c,)
            assert levels.max() <= (1 << b) - 1
            # Step 1: widen to int64 before shifting or subtracting (uint8 would wrap).
            lv = levels.astype(np.int64)
            value = sum(lv[:, k] << (b * k) for k in range(s))  # (planes, R, C), slice 0 = LSBs
            # Step 2: the signed integer.
            if dev["encoding"] == "differential":
                # one plane of each pair is zero: G+ holds positive q, G- the magnitude of negative q
                assert not np.any((value[0] != 0) & (value[1] != 0))
                q = value[0] - value[1]
            else:
                q = value[0] - (1 << (b * s - 1))
            # Step 3: float weight, one float32 product per entry (what DequantizeLinear computes).
            w = q.astype(np.float32) * scales[None, :]
            # Step 4: tiles cover the matrix once, row-major, tile_cols // (planes * slices) columns.
            step_c = dev["tile_cols"] // (planes * s)
            want = [[i, j, min(dev["tile_rows"], r - i), min(step_c, c - j)]
                    for i in range(0, r, dev["tile_rows"]) for j in range(0, c, step_c)]
            assert e["tiles"] == want
            out[e["name"]] = (matrix_to_weight(q, e), matrix_to_weight(w, e), e)
    return out


def matrix_to_weight(m, e):
    """Step 5, as the spec defines it: the matrix back in the integer initializer's shape."""
    shape = tuple(e["weight_shape"])
    if len(shape) == 2:
        assert e["transpose"] is True  # every 2-D weight is stored (N, K)
        return m.T
    assert e["transpose"] is False
    return m.T.reshape(shape)


# ---------------------------------------------------------------- a model with every layer kind

def _model(path):
    rng = np.random.default_rng(0)

    def w(*shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32))

    inits = []

    def init(name, *shape):
        t = w(*shape)
        t.name = name
        inits.append(t)
        return name

    nodes = [
        helper.make_node("Conv", ["x", init("conv.w", 8, 3, 3, 3)], ["c1"], name="conv", pads=[1] * 4),
        helper.make_node("Conv", ["c1", init("dw.w", 8, 1, 3, 3)], ["c2"], name="depthwise", pads=[1] * 4,
                         group=8),
        helper.make_node("Conv", ["c2", init("grouped.w", 16, 4, 3, 3)], ["c3"], name="grouped", pads=[1] * 4,
                         group=2),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        # (N, K) = (200, 16): more than one tile of rows in the next layer
        helper.make_node("Gemm", ["f", init("fc1.w", 200, 16), init("fc1.b", 200)], ["h1"], name="gemm_tb1",
                         transB=1),
        helper.make_node("Relu", ["h1"], ["r1"]),
        # (K, N) = (200, 70): 2 row tiles, and several column tiles on every preset
        helper.make_node("Gemm", ["r1", init("fc2.w", 200, 70)], ["h2"], name="gemm_tb0"),
        helper.make_node("MatMul", ["h2", init("fc3.w", 70, 6)], ["y"], name="matmul"),
    ]
    g = helper.make_graph(nodes, "layers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return path


KINDS = {"conv": ("Conv", 1), "depthwise": ("Conv", 8), "grouped": ("Conv", 2), "gemm_tb1": ("Gemm", 1),
         "gemm_tb0": ("Gemm", 1), "matmul": ("MatMul", 1)}
# The integer type of model.onnx per the spec: int8 where |q| <= 127 fits, int16 (opset 21) otherwise.
DTYPES = {("paper", "differential"): np.int8, ("mlc4", "differential"): np.int16,
          ("slc8", "differential"): np.int16, ("paper", "offset"): np.int8, ("mlc4", "offset"): np.int8,
          ("slc8", "offset"): np.int8}


def _dequantize_outputs(model: onnx.ModelProto) -> dict:
    """Every DequantizeLinear output of the artifact's model, computed by onnxruntime."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    m.graph.output.extend(helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in dq)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [n.output[0] for n in dq]
    outs = sess.run(names, {"x": np.zeros((1, 3, 6, 6), np.float32)})
    return {n.input[0]: o for n, o in zip(dq, outs)}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _model(tmp_path_factory.mktemp("spec") / "layers.onnx")


@pytest.mark.parametrize("encoding", ["differential", "offset"])
@pytest.mark.parametrize("preset", ["paper", "mlc4", "slc8"])
def test_spec_reader_gives_model_onnx_exactly(source, tmp_path, preset, encoding):
    art = tmp_path / "art"
    assert main(["quantize", str(source), str(art), "--preset", preset, "--encoding", encoding]) == 0
    decoded = spec_decode(art)
    model = onnx.load(art / "model.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n for n in model.graph.node for o in n.output}
    deq = _dequantize_outputs(model)

    assert {e["node"] for _, _, e in decoded.values()} == set(KINDS)
    for name, (q, w, e) in decoded.items():
        op_type, groups = KINDS[e["node"]]
        assert (e["op_type"], e["groups"]) == (op_type, groups)
        # The integers are the initializer's, exactly, in the integer type the spec names.
        stored = inits[name]
        assert stored.dtype == DTYPES[(preset, encoding)], (name, stored.dtype)
        np.testing.assert_array_equal(q, stored.astype(np.int64))
        assert list(stored.shape) == e["weight_shape"]
        # QDQ conventions: DequantizeLinear(name, scale), axis 0, no zero point (= 0).
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == name)
        assert len(dq.input) == 2
        assert {a.name: a.i for a in dq.attribute} == {"axis": 0}
        np.testing.assert_array_equal(inits[dq.input[1]], np.load(art / "crossbars.npz")[e["key"] + ".scales"])
        # The decoded float weight is DequantizeLinear's output, bit for bit.
        np.testing.assert_array_equal(w, deq[name])
        # ... and reaches the node as the spec says: directly for Conv and Gemm transB=1, through
        # Transpose(perm=[1, 0]) for the (K, N) weights of Gemm transB=0 and MatMul.
        consumer = nodes[e["node"]]
        src = producers[consumer.input[1]]
        if e["node"] in ("gemm_tb0", "matmul"):
            assert src.op_type == "Transpose" and list(src.attribute[0].ints) == [1, 0]
            assert src.input[0] == dq.output[0]
        else:
            assert src is dq or src.name == dq.name

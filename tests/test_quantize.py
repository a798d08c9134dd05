"""Crossbar quantizer (runtime/quantize/, runtime/crossbar.py mapping, rram quantize)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.artifact import load_map
from runtime.crossbar import PRESETS, SA1_LEVEL, DeviceConfig, decode, encode, tile_grid
from runtime.fileio import file_sha256
from runtime.metadata import DEVICE_KEY as DEVICE_METADATA_KEY
from runtime.quantize import (
    LayerSelection,
    QuantizeError,
    quantize_model,
    write_artifact,
)
from toolchain.cli import main

OFFSET = DeviceConfig(bits_per_cell=4, cells_per_weight=2, encoding="offset", name="offset")
DEVICES = {**PRESETS, "offset": OFFSET,
           "small-tiles": DeviceConfig(tile_rows=5, tile_cols=6, bits_per_cell=3, cells_per_weight=1)}


# ------------------------------------------------------------------------------------ fixtures

def _init(rng, name, *shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def make_model(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """x (N,4,6,6) -> Conv 3x3 -> Relu -> grouped Conv (g=4) -> depthwise Conv (g=8) -> GAP ->
    Flatten -> Gemm(transB=1, 8->5) -> MatMul (5->3). Shapes chosen not to divide the tiles."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "w_conv", 8, 4, 3, 3), _init(rng, "b_conv", 8), _init(rng, "w_group", 8, 2, 3, 3),
             _init(rng, "w_dw", 8, 1, 3, 3), _init(rng, "w_fc", 5, 8), _init(rng, "b_fc", 5),
             _init(rng, "w_mm", 5, 3)]
    nodes = [
        helper.make_node("Conv", ["x", "w_conv", "b_conv"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w_group"], ["c2"], name="group_conv", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "w_dw"], ["c3"], name="dw_conv", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w_fc", "b_fc"], ["g"], name="fc", transB=1),
        helper.make_node("MatMul", ["g", "w_mm"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    helper.set_model_props(model, {"rram.normalization": '{"mean": [0.5], "std": [0.25]}',
                                   "rram.model": "tiny", "rram.bn_rate": "0.1"})
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, x: np.ndarray, outputs=None, exact: bool = True) -> list[np.ndarray]:
    so = ort.SessionOptions()
    if exact:  # else onnxruntime fuses int8 DQ+MatMul into MatMulNBits with int8 activations
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(outputs, {"x": x})


def tensors(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Intermediate tensors as onnxruntime computes them, exposed as extra graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return dict(zip(names, run(m, x, names)))


def dequantized_weights(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """DequantizeLinear outputs keyed by the integer initializer they read."""
    dq = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    values = tensors(model, x, list(dq.values()))
    return {q: values[out] for q, out in dq.items()}


X = np.random.default_rng(1).standard_normal((4, 4, 6, 6)).astype(np.float32)


# ------------------------------------------------------------------------------------ mapping

@pytest.mark.parametrize("name", list(DEVICES))
def test_map_decodes_exactly_to_the_deployed_weights(tmp_path, name):
    device = DEVICES[name]
    model, cmap, report = quantize_model(make_model(), device)
    out = write_artifact(tmp_path / "out", model, cmap, report)
    deployed = onnx.load(out / "model.onnx")
    onnx.checker.check_model(deployed, full_check=True)
    loaded = load_map(out)
    assert loaded.model_sha256 == file_sha256(out / "model.onnx")
    assert loaded.device == device
    dq = dequantized_weights(deployed, X)
    ints = {t.name: numpy_helper.to_array(t) for t in deployed.graph.initializer}
    assert len(loaded.layers) == 5 and len(dq) == 5
    for layer in loaded.layers:
        # bit for bit: the decoder and onnxruntime's DequantizeLinear agree
        np.testing.assert_array_equal(layer.float_weight(loaded.device), dq[layer.name])
        np.testing.assert_array_equal(layer.integer_weight(device=loaded.device), ints[layer.name])
    expected_dtype = np.int8 if device.qmax <= 127 else np.int16
    assert {ints[layer.name].dtype for layer in loaded.layers} == {np.dtype(expected_dtype)}
    # the deployed model is the float model with the map's weights ...
    weight_names = ["w_conv", "w_group", "w_dw", "w_fc", "w_mm"]
    deployed_weights = tensors(deployed, X, weight_names)
    substituted = make_model()
    for t in substituted.graph.initializer:
        if t.name in deployed_weights:
            assert tuple(t.dims) == deployed_weights[t.name].shape
            t.CopyFrom(numpy_helper.from_array(deployed_weights[t.name], t.name))
    got = run(deployed, X)[0]
    np.testing.assert_allclose(got, run(substituted, X)[0], rtol=1e-5, atol=1e-6)
    # and onnxruntime's default optimisations do not change that (no int8-activation MatMulNBits)
    np.testing.assert_allclose(run(deployed, X, exact=False)[0], got, rtol=1e-5, atol=1e-6)
    # ... and within the quantisation error of the float model (4 layers, half a step each)
    ref = run(make_model(), X)[0]
    assert np.abs(got - ref).max() < 3 * np.abs(ref).max() / device.qmax


def _matmul_model(w: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])],
                              initializer=[numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hand_computed_2x3_differential():
    # 2-bit cells, 2 slices: |q| <= 15, scale = 1.5 / 15 = 0.1 in every column
    device = DeviceConfig(bits_per_cell=2, cells_per_weight=2, encoding="differential")
    w = np.array([[3, -15, 1], [-15, 6, 15]]) * 0.1
    _, cmap, _ = quantize_model(_matmul_model(w), device)
    (layer,) = cmap.layers
    np.testing.assert_allclose(layer.scales, [0.1, 0.1, 0.1], rtol=1e-7)
    # G+ holds |q| of positive weights, G- of negative ones; slice 0 = low 2 bits, slice 1 = high 2
    expected = np.array([
        [[[3, 0, 1], [0, 2, 3]],    # G+, slice 0: 3, 1, 6 & 3 = 2, 15 & 3 = 3
         [[0, 0, 0], [0, 1, 3]]],   # G+, slice 1: 6 >> 2 = 1, 15 >> 2 = 3
        [[[0, 3, 0], [3, 0, 0]],    # G-, slice 0: 15 & 3
         [[0, 3, 0], [3, 0, 0]]],   # G-, slice 1: 15 >> 2
    ], dtype=np.uint8)
    np.testing.assert_array_equal(layer.levels, expected)
    np.testing.assert_array_equal(decode(layer.levels, device), [[3, -15, 1], [-15, 6, 15]])


def test_hand_computed_2x3_offset():
    # offset: one plane holds u = q + 8 (4 bits), |q| <= 7, scale = 0.7 / 7 = 0.1
    device = DeviceConfig(bits_per_cell=2, cells_per_weight=2, encoding="offset")
    w = np.array([[3, -7, 1], [-7, 6, 7]]) * 0.1
    _, cmap, _ = quantize_model(_matmul_model(w), device)
    (layer,) = cmap.layers
    # u = [[11, 1, 9], [1, 14, 15]]
    expected = np.array([[[[3, 1, 1], [1, 2, 3]],      # u & 3
                          [[2, 0, 2], [0, 3, 3]]]],    # u >> 2
                        dtype=np.uint8)
    np.testing.assert_array_equal(layer.levels, expected)
    np.testing.assert_array_equal(decode(layer.levels, device), [[3, -7, 1], [-7, 6, 7]])
    # the MatMul weight is stored transposed in model.onnx
    np.testing.assert_array_equal(layer.integer_weight(device=device), [[3, -7], [-7, 6], [1, 7]])


def test_hand_computed_2x3_paper_preset():
    device = PRESETS["paper"]
    w = np.array([[0.5, -1.0, 0.0], [1.0, 0.25, -2.0]])  # column maxima 1, 1, 2 -> q = 127 * w / max
    _, cmap, _ = quantize_model(_matmul_model(w), device)
    (layer,) = cmap.layers
    assert layer.levels.shape == (2, 1, 2, 3)
    np.testing.assert_array_equal(layer.levels[0, 0], [[64, 0, 0], [127, 32, 0]])  # rint(63.5) = 64
    np.testing.assert_array_equal(layer.levels[1, 0], [[0, 127, 0], [0, 0, 127]])


@pytest.mark.parametrize("rows,cols", [(128, 64), (256, 128), (300, 70), (1, 1), (129, 65), (9, 200)])
@pytest.mark.parametrize("name", ["paper", "slc8", "small-tiles", "offset"])
def test_tiles_cover_every_weight_exactly_once(rows, cols, name):
    device = DEVICES[name]
    count = np.zeros((rows, cols), dtype=np.int32)
    for t in tile_grid(rows, cols, device):
        assert 0 < t.rows <= device.tile_rows
        assert 0 < t.cols * device.cells_per_column_group <= device.tile_cols  # physical columns fit
        count[t.row:t.row + t.rows, t.col:t.col + t.cols] += 1
    np.testing.assert_array_equal(count, 1)


def test_report_and_grouped_depthwise_layout(tmp_path):
    device = DEVICES["small-tiles"]  # 5x6 tiles, differential, 1 slice: 3 matrix columns per tile
    model, cmap, report = quantize_model(make_model(), device)
    by_node = {layer.node: layer for layer in cmap.layers}
    assert set(by_node) == {"conv", "group_conv", "dw_conv", "fc", "mm"}
    # grouped: Cin/g*kh*kw = 2*9 rows, the groups' Cout columns side by side; depthwise: 9 rows
    assert by_node["group_conv"].matrix_shape == (18, 8) and by_node["group_conv"].groups == 4
    assert by_node["dw_conv"].matrix_shape == (9, 8) and by_node["dw_conv"].groups == 8
    assert by_node["conv"].matrix_shape == (36, 8)
    assert by_node["fc"].matrix_shape == (8, 5) and by_node["fc"].transpose
    # MatMul (K, N) = (5, 3) is stored transposed (3, 5) behind a Transpose node
    assert by_node["mm"].matrix_shape == (5, 3) and by_node["mm"].transpose
    assert by_node["mm"].weight_shape == (3, 5)
    rows = {r["node"]: r for r in report["layers"]}
    # 36 rows / 5 = 8 row tiles, 8 columns / 3 = 3 column tiles
    assert rows["conv"]["tiles"] == 24 == len(by_node["conv"].tiles)
    assert rows["dw_conv"]["tiles"] == 2 * 3
    assert rows["conv"]["cells"] == 36 * 8 * 2
    assert rows["conv"]["utilisation"] == pytest.approx(36 * 8 * 2 / (24 * 30))
    assert all(10 < r["sqnr_db"] < 40 for r in report["layers"])  # 3-bit magnitudes
    assert report["total"]["tiles"] == sum(r["tiles"] for r in report["layers"])


def test_paper_preset_maps_one_weight_to_one_active_cell():
    device = PRESETS["paper"]
    model, cmap, _ = quantize_model(make_model(), device)
    for layer in cmap.layers:
        q = decode(layer.levels, device)
        active = np.count_nonzero(layer.levels, axis=(0, 1))
        np.testing.assert_array_equal(active, (q != 0).astype(int))
        # a stuck-at-HRS (SA1) on the active cell zeroes exactly that weight: drop-connect
        r, c = np.argwhere(q != 0)[0]
        faulty = layer.levels.copy()
        faulty[:, :, r, c] = SA1_LEVEL
        dropped = decode(faulty, device)
        assert dropped[r, c] == 0
        dropped[r, c] = q[r, c]
        np.testing.assert_array_equal(dropped, q)


def test_encode_rejects_out_of_range_integers():
    with pytest.raises(QuantizeError.__mro__[1]):
        encode(np.array([[128]]), PRESETS["paper"])


def test_metadata_carried_and_device_recorded():
    model, _, _ = quantize_model(make_model(), PRESETS["mlc4"])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["rram.model"] == "tiny" and meta["rram.bn_rate"] == "0.1"
    assert meta["rram.normalization"] == '{"mean": [0.5], "std": [0.25]}'
    assert DeviceConfig.from_dict(json.loads(meta[DEVICE_METADATA_KEY])) == PRESETS["mlc4"]


@pytest.mark.parametrize("opset,name,expect", [(11, "paper", 13), (17, "mlc4", 21), (21, "slc8", 21)])
def test_opset_raised_when_needed_and_onnxruntime_runs_it(opset, name, expect):
    model, _, report = quantize_model(make_model(opset=opset), PRESETS[name])
    assert report["opset"] == {"before": opset, "after": expect}
    onnx.checker.check_model(model, full_check=True)
    assert np.abs(run(model, X)[0] - run(make_model(), X)[0]).max() < 0.05


def test_layer_selection():
    _, cmap, report = quantize_model(make_model(), PRESETS["paper"],
                                     selection=LayerSelection(exclude=("dw_*", "w_mm")))
    assert {layer.node for layer in cmap.layers} == {"conv", "group_conv", "fc"}
    assert {s["node"]: s["reason"] for s in report["skipped"]} == {"dw_conv": "excluded by name",
                                                                  "mm": "excluded by name"}
    _, cmap, _ = quantize_model(make_model(), PRESETS["paper"], selection=LayerSelection(op_types=("Gemm",)))
    assert [layer.node for layer in cmap.layers] == ["fc"]
    with pytest.raises(QuantizeError, match="Relu"):
        LayerSelection(op_types=("Relu",))


def test_constant_node_weight_is_mapped():
    w = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    nodes = [helper.make_node("Constant", [], ["w"], name="const", value=numpy_helper.from_array(w, "w")),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model, cmap, _ = quantize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                    PRESETS["paper"])
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "Transpose", "MatMul"]
    x = np.array([[1.0, -2.0]], dtype=np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ cmap.layers[0].float_weight(cmap.device).T,
                               rtol=1e-6)


# ------------------------------------------------------------------------------------ CLI + bad input

def cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(make_model(), path)
    return path


def test_cli_writes_the_artifact(tmp_path, model_file, capsys):
    out = tmp_path / "dep"
    rc, stdout, err = cli(["quantize", model_file, out, "--preset", "mlc4", "--tile", "64x32"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["crossbars.json", "crossbars.npz", "model.onnx", "report.json"]
    assert "group_conv" in stdout and "total (5 layers)" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["device"]["tile_rows"] == 64 and report["device"]["tile_cols"] == 32
    assert report["device"]["name"] == "mlc4+custom"
    assert report["model_sha256"] == file_sha256(out / "model.onnx")
    assert [r["node"] for r in report["layers"]] == ["conv", "group_conv", "dw_conv", "fc", "mm"]
    assert load_map(out).device.tile_cols == 32
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers
    # an existing folder is refused, then replaced with --force
    rc, _, err = cli(["quantize", model_file, out], capsys)
    assert rc == 2 and "exists" in err and "--force" in err
    rc, _, err = cli(["quantize", model_file, out, "--force", "--preset", "paper"], capsys)
    assert rc == 0, err
    assert load_map(out).device == PRESETS["paper"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _relu_only(path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), path)


def _non_constant_weight(path):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph), path)


def _truncated(path):
    data = make_model().SerializeToString()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "no mappable layer": (_relu_only, "no mappable layer"),
    "weight not constant": (_non_constant_weight, "no mappable layer"),
    "not onnx": (lambda p: p.write_text("this is not a model\n" * 20), "ONNX"),
    "truncated": (_truncated, "ONNX"),
    "empty": (lambda p: p.write_bytes(b""), "ONNX"),
    "missing": (lambda p: None, "no such file"),
    "folder": (lambda p: p.mkdir(), "is a folder"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_file(tmp_path, capsys, case):
    make, message = BAD_FILES[case]
    src = tmp_path / "bad.onnx"
    make(src)
    rc, out, err = cli(["quantize", src, tmp_path / "out"], capsys)
    assert rc == 2
    assert err.startswith("rram: error:") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


BAD_OPTIONS = {
    "zero tile": (["--tile", "0x128"], "tile_rows must be a positive integer"),
    "negative tile": (["--tile", "128x-4"], "tile_cols must be a positive integer"),
    "garbled tile": (["--tile", "big"], "--tile must look like"),
    "zero bits": (["--bits-per-cell", "0"], "bits_per_cell must be a positive integer"),
    "too many levels": (["--bits-per-cell", "9"], "uint8"),
    "zero slices": (["--cells-per-weight", "0"], "cells_per_weight"),
    "g_min >= g_max": (["--g-min", "1e-4", "--g-max", "1e-5"], "g_min"),
    "g_min == g_max": (["--g-min", "1e-5", "--g-max", "1e-5"], "g_min"),
    "tile too narrow": (["--preset", "slc8", "--tile", "128x8"], "cannot hold one weight column"),
    "clip": (["--clip-percentile", "0"], "clip_percentile"),
    "ops": (["--ops", "Conv,Relu"], "Relu"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_device_options(tmp_path, model_file, capsys, case):
    extra, message = BAD_OPTIONS[case]
    rc, out, err = cli(["quantize", model_file, tmp_path / "out", *extra], capsys)
    assert rc == 2
    assert err.startswith("rram: error:") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_non_finite_weight_is_refused():
    model = make_model()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0, 0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w_conv"))
    with pytest.raises(QuantizeError, match="NaN"):
        quantize_model(model, PRESETS["paper"])


def test_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    import runtime.artifact.folder as q

    model, cmap, report = quantize_model(make_model(), PRESETS["paper"])

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(q, "save_map", boom)
    with pytest.raises(QuantizeError, match=f"cannot write {tmp_path / 'out'}: No space left"):
        write_artifact(tmp_path / "out", model, cmap, report)
    assert list(tmp_path.iterdir()) == []
    # with --force, a failure keeps the old folder intact
    monkeypatch.undo()
    write_artifact(tmp_path / "out", model, cmap, report)
    before = file_sha256(tmp_path / "out" / "crossbars.npz")
    monkeypatch.setattr(q, "save_map", boom)
    with pytest.raises(QuantizeError, match="No space left"):
        write_artifact(tmp_path / "out", model, cmap, report, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert file_sha256(tmp_path / "out" / "crossbars.npz") == before


def test_cli_json_and_include(tmp_path, model_file, capsys):
    rc, stdout, err = cli(["quantize", model_file, tmp_path / "o", "--include", "*conv", "--json"], capsys)
    assert rc == 0, err
    report = json.loads(stdout)
    assert [r["node"] for r in report["layers"]] == ["conv", "group_conv", "dw_conv"]
    assert report["output"] == str(tmp_path / "o")


def test_output_path_that_is_a_file_is_refused(tmp_path, model_file, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    rc, _, err = cli(["quantize", model_file, target, "--force"], capsys)
    assert rc == 2 and "not a folder" in err
    assert target.read_text() == "keep me"

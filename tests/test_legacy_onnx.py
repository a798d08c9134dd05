"""Models from elsewhere (issue 17): older IR versions and opsets, other spatial ranks.

Each legacy model is built here with onnx.helper as older exporters wrote them: IR 3 with every
initializer also listed as a graph input, opset 6 BatchNormalization with ``is_test``/``spatial``,
Conv1d/Conv3d, grouped and depthwise convolutions, MatMul. Each goes through the real CLI
(`rram passes --passes standard`, then `rram quantize --preset paper`), both outputs must pass the
full onnx.checker, the float output must match the original within the pass tolerance and the
quantized one within the quantisation error."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T, helper as h, numpy_helper as nh
from onnx.reference import ReferenceEvaluator

from passes.verify import DEFAULT_TOLERANCE, difference
from toolchain.cli import main

RNG = np.random.default_rng(0)


def _w(name, shape, scale=0.3):
    return nh.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _pos(name, n):
    return nh.from_array((np.abs(RNG.standard_normal(n)) + 0.5).astype(np.float32), name)


def _model(nodes, inits, x_shape, y_shape, *, opset, ir=3):
    """IR 3 style: every initializer is also a graph input (the rule IR 3 imposes)."""
    inputs = [h.make_tensor_value_info("x", T.FLOAT, x_shape)]
    if ir < 4:
        inputs += [h.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    g = h.make_graph(nodes, "legacy", inputs, [h.make_tensor_value_info("y", T.FLOAT, y_shape)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = ir
    onnx.checker.check_model(m, full_check=True)
    return m


def _cnn(opset: int, bn_attrs: dict, gemm_attrs: dict):
    inits = [_w("w1", [8, 3, 3, 3]), _w("b1", [8]), _pos("g", 8), _w("be", [8]), _w("mu", [8]), _pos("var", 8),
             _w("w2", [16, 8, 1, 1]), _w("fw", [10, 16]), _w("fb", [10])]
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"], epsilon=1e-5, **bn_attrs),
             h.make_node("Relu", ["n1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2"], ["c2"]),
             h.make_node("GlobalAveragePool", ["c2"], ["p"]),
             h.make_node("Flatten", ["p"], ["f"]),
             h.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, **gemm_attrs)]
    return _model(nodes, inits, [1, 3, 16, 16], [1, 10], opset=opset)


def _conv(x_shape, w_shape, y_shape, *, opset, **attrs):
    return _model([h.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], [_w("w", w_shape), _w("b", [w_shape[0]])],
                  x_shape, y_shape, opset=opset)


def _matmul(opset=9):
    inits = [_w("m", [12, 7]), _w("a", [7])]
    nodes = [h.make_node("MatMul", ["x", "m"], ["t"]), h.make_node("Add", ["t", "a"], ["y"])]
    return _model(nodes, inits, [4, 12], [4, 7], opset=opset)


LEGACY = {
    "ir3-opset9-cnn": lambda: _cnn(9, {}, {}),
    "opset6-batchnorm": lambda: _cnn(6, {"is_test": 1, "spatial": 1}, {"broadcast": 1}),
    "conv1d-opset6": lambda: _conv([1, 4, 20], [6, 4, 3], [1, 6, 20], opset=6, pads=[1, 1]),
    "conv3d-opset9": lambda: _conv([1, 2, 6, 6, 6], [5, 2, 3, 3, 3], [1, 5, 6, 6, 6], opset=9,
                                   pads=[1, 1, 1, 1, 1, 1]),
    "grouped-conv-opset9": lambda: _conv([1, 4, 8, 8], [6, 2, 3, 3], [1, 6, 8, 8], opset=9, group=2,
                                         pads=[1, 1, 1, 1]),
    "depthwise-conv-opset9": lambda: _conv([1, 4, 8, 8], [4, 1, 3, 3], [1, 4, 8, 8], opset=9, group=4,
                                           pads=[1, 1, 1, 1]),
    "matmul-opset9": _matmul,
}


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The original's output: onnxruntime where it runs the model, else ONNX's reference evaluator
    (which runs every opset; it is not used first because it got opset-9 BN wrong here by 4%)."""
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return ReferenceEvaluator(model).run(None, {"x": x})[0]
    return sess.run(None, {"x": x})[0]


def _ort(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_legacy_model_goes_through_passes_and_quantize(name, tmp_path, capsys):
    original = LEGACY[name]()
    src, dst, art = tmp_path / "legacy.onnx", tmp_path / "legacy.passes.onnx", tmp_path / "art"
    onnx.save(original, src)
    assert main(["passes", str(src), str(dst), "--passes", "standard"]) == 0, capsys.readouterr().err
    assert main(["quantize", str(dst), str(art), "--preset", "paper"]) == 0, capsys.readouterr().err
    for written in (dst, art / "model.onnx"):
        m = onnx.load(written)
        onnx.checker.check_model(m, full_check=True)
        assert next(o.version for o in m.opset_import if o.domain == "") >= 17 and m.ir_version >= 8
    shape = [d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = _reference(original, x)
    assert difference(ref, _ort(dst, x)) <= DEFAULT_TOLERANCE
    # 7-bit crossbar weights (SQNR ~45 dB per layer): a few per cent of the output's range at most
    assert difference(ref, _ort(art / "model.onnx", x)) <= 0.03
    if next(o.version for o in original.opset_import) < 17:
        assert "upgrade-opset" in capsys.readouterr().out


def test_passes_raise_ir3_to_a_version_whose_rules_the_output_keeps(tmp_path, capsys):
    """IR 3 wants every initializer as a graph input; the passes keep weights as initializers
    only. Without upgrade-opset the output stays at opset 9 and must still be valid: IR 4."""
    src, dst = tmp_path / "ir3.onnx", tmp_path / "out.onnx"
    onnx.save(_cnn(9, {}, {}), src)
    assert main(["passes", str(src), str(dst), "--passes", "eliminate-identity,fold-bn"]) == 0
    m = onnx.load(dst)
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == 4 and m.opset_import[0].version == 9
    assert not {i.name for i in m.graph.input} & {t.name for t in m.graph.initializer}


def test_upgrade_opset_verified_against_the_reference_evaluator(tmp_path, capsys):
    """onnxruntime cannot run BatchNormalization-6: the original runs in ONNX's reference evaluator."""
    src, dst = tmp_path / "bn6.onnx", tmp_path / "out.onnx"
    onnx.save(_cnn(6, {"is_test": 1, "spatial": 1}, {"broadcast": 1}), src)
    with pytest.raises(Exception, match="BatchNormalization"):
        ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    assert main(["passes", str(src), str(dst), "--passes", "upgrade-opset"]) == 0
    out = capsys.readouterr().out
    assert "verified (end)" in out and "upgrade-opset" in out
    assert next(o.version for o in onnx.load(dst).opset_import if o.domain == "") == 17


def test_a_model_the_converter_cannot_take_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from onnx import version_converter

    def refuse(model, target):
        raise RuntimeError("No Adapter For Current Version $9 for Foo\nmore detail")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    src, dst = tmp_path / "ir3.onnx", tmp_path / "out.onnx"
    onnx.save(_cnn(9, {}, {}), src)
    assert main(["passes", str(src), str(dst), "--passes", "standard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot bring this model from opset 9 to 17" in err and "No Adapter" in err
    assert not dst.exists()


def test_a_rewrite_that_fails_the_full_checker_is_never_written(tmp_path, capsys, monkeypatch):
    """A pass whose output breaks the ONNX rules: one-line error, no output file."""
    import passes
    from passes.registry import register, unregister

    @register("break-types", "test: makes the graph output's declared type wrong")
    def _break(graph, ctx):
        graph.outputs[0].dtype = np.int64  # declared int64, computed float: the full check refuses it

    try:
        src, dst = tmp_path / "ir3.onnx", tmp_path / "out.onnx"
        onnx.save(_cnn(9, {}, {}), src)
        assert main(["passes", str(src), str(dst), "--passes", "break-types", "--verify", "off"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "fails onnx.checker" in err
        assert not dst.exists()
    finally:
        unregister("break-types")
    assert "break-types" not in passes.list_passes()


def test_quantize_takes_an_ir3_model_directly(tmp_path, capsys):
    """Without the passes: the mapped weights become DequantizeLinear outputs, which IR 3 would
    also list as graph inputs; the artifact is written under IR 4 rules and passes the full check."""
    src, art = tmp_path / "ir3.onnx", tmp_path / "art"
    original = _cnn(9, {}, {})
    onnx.save(original, src)
    assert main(["quantize", str(src), str(art), "--preset", "paper"]) == 0, capsys.readouterr().err
    m = onnx.load(art / "model.onnx")
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version >= 4
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert difference(_reference(original, x), _ort(art / "model.onnx", x)) <= 0.03

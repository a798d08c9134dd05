"""int8 preparation of a deployed model: onnxruntime static quantisation (QDQ), each mapped
layer's weight pointed at the crossbar integers and scales, then (``streamline``) the exact
rewrites of ``streamline.py``, checked per build against onnxruntime's own QDQ graph: where they
are not bit-exact on this CPU, the QDQ graph runs, with a note."""
from __future__ import annotations

import logging
import os

import numpy as np
import onnx
from onnx import numpy_helper

from ..artifact.deployed import DeployedModel, append_initializers
from ..errors import RuntimeInputError
from ..session import make_session
from .graph import Int8Graph, initializer_array, quantize_input
from .streamline import streamline_int8


def int8_fits(model: DeployedModel) -> bool:
    """Every (faulty) integer weight fits int8: |q| <= 127 differential, 8-bit offset."""
    d = model.cmap.device
    return d.qmax <= 127 if d.encoding == "differential" else d.weight_bits <= 8


def prepare_int8(model: DeployedModel, calibration: np.ndarray, *, calibration_batch: int = 100,
                 fixed_batch: bool = False, streamline: bool = True) -> Int8Graph:
    """onnxruntime static quantisation (QDQ, uint8 activations as a DAC/ADC would see them,
    MinMax calibration on ``calibration`` = normalised float images), then each mapped layer's
    weight DequantizeLinear is pointed at the crossbar integers and scales (per output channel,
    symmetric) instead of onnxruntime's own weight quantisation. With ``streamline`` the graph
    then takes pre-quantised images and pads on integers (``streamline_int8``), checked to give
    bit-identical logits."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not int8_fits(model):
        raise RuntimeInputError(f"--precision int8 needs crossbar weights that fit int8; device "
                                f"{model.cmap.device.name!r} holds up to {model.cmap.device.qmax}")
    if calibration is None or len(calibration) == 0:
        raise RuntimeInputError("--precision int8 needs calibration images")

    if fixed_batch:  # the model takes exactly calibration_batch images per call
        calibration = calibration[:len(calibration) // calibration_batch * calibration_batch]
    if len(calibration) == 0:
        raise RuntimeInputError(f"--precision int8: the model takes batches of {calibration_batch} images; "
                                f"give at least that many calibration images")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{model.input_name: calibration[i:i + calibration_batch]}
                                 for i in range(0, len(calibration), calibration_batch)])

        def get_next(self):
            return next(self.batches, None)

    float_model = onnx.ModelProto.FromString(model.model_bytes_with(None))
    opset = next((o.version for o in float_model.opset_import if o.domain in ("", "ai.onnx")), 21)
    if opset < 21:  # onnxruntime's quantizer moves the model to opset 21: convert properly first
        from onnx import version_converter

        float_model = version_converter.convert_version(float_model, 21)
    # tag each mapped layer's node, to find it again after pre-processing and quantisation
    tags = []
    for i, (layer, wname) in enumerate(zip(model.cmap.layers, model.weight_names)):
        users = [n for n in float_model.graph.node if wname in n.input]
        nodes = [n for n in users if len(n.input) > 1 and n.input[1] == wname]
        if len(users) != 1 or len(nodes) != 1:
            kinds = ", ".join(sorted({n.op_type for n in users})) or "nothing"
            raise RuntimeInputError(f"int8: the weight of layer {layer.name!r} feeds {len(users)} node(s) ({kinds}); "
                                    f"--precision int8 takes a mapped weight used once, directly as the "
                                    f"weight input of its Conv/Gemm/MatMul: use --precision fp32")
        nodes[0].name = f"rram.crossbar.{i}"
        tags.append(nodes[0].name)

    def quantize(pre_process: bool) -> onnx.ModelProto:
        with tempfile.TemporaryDirectory(prefix="rram-int8-") as tmp:
            src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
            onnx.save(float_model, src)
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint as a warning
            try:
                if pre_process:  # onnxruntime's recommended shape inference + optimisation (faster int8 graph)
                    from onnxruntime.quantization.shape_inference import (
                        quant_pre_process,
                    )

                    pre = os.path.join(tmp, "pre.onnx")
                    quant_pre_process(src, pre)
                    src = pre
                quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax,
                                extra_options={"WeightSymmetric": True})
            finally:
                root.setLevel(level)
            return onnx.load(dst)

    def attempt(pre_process: bool) -> tuple[bytes, list[str]]:
        try:
            return _retarget(quantize(pre_process), model, tags)
        except RuntimeInputError:
            raise
        except Exception as e:  # onnxruntime's quantizer fails in assorted ways on unusual graphs
            raise RuntimeInputError(f"int8: onnxruntime's quantizer failed on {model.folder} "
                                    f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                                    f"use --precision fp32") from None

    try:
        qbytes, names = attempt(True)
    except RuntimeInputError:  # pre-processing fused something into a mapped layer: quantise the graph as it is
        qbytes, names = attempt(False)
    plain = Int8Graph(qbytes, names, model.input_name)
    if not streamline:
        return plain
    fast = streamline_int8(onnx.ModelProto.FromString(qbytes), names, model.input_name)
    difference = _logit_difference(plain, fast, model, calibration[:calibration_batch])
    if difference == 0.0:
        return fast
    # Without AVX512-VNNI (e.g. AVX2-only CPUs) onnxruntime's u8s8 kernels add products in int16
    # pairs that saturate, and the padded channel layout pairs them differently: the streamlined
    # graph is then not bit-exact. onnxruntime's own QDQ graph stays the reference: run it.
    import sys

    print(f"note: int8: the streamlined graph differs from onnxruntime's QDQ graph on this CPU (max logit "
          f"difference {difference:.3g}; its int8 kernels saturate without AVX512-VNNI): running the QDQ graph",
          file=sys.stderr)
    return plain


def _retarget(q: onnx.ModelProto, model: DeployedModel, tags: list[str]) -> tuple[bytes, list[str]]:
    """Point each mapped layer's weight DequantizeLinear at the crossbar integers and scales."""
    graph = q.graph
    producer = {o: n for n in graph.node for o in n.output}
    names, replaced = [], set()
    for layer, wname, tag in zip(model.cmap.layers, model.weight_names, tags):
        consumers = [n for n in graph.node if n.name == tag]
        if len(consumers) != 1 or len(consumers[0].input) < 2:
            raise RuntimeInputError(f"int8: cannot find the node of layer {layer.name!r} after quantisation")
        node = consumers[0]
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            raise RuntimeInputError(f"int8: onnxruntime left layer {layer.name!r} unquantised")
        axis = 1 if (len(layer.weight_shape) == 2 and not layer.transpose) else 0
        _check_quantized_weight(graph, dq, layer, model.cmap.device)
        _requantize_bias(graph, node, producer, layer, wname)
        qname, sname, zname = f"{wname}.crossbar", f"{wname}.crossbar_scale", f"{wname}.crossbar_zp"
        replaced.update(i for i in dq.input[:3])
        del dq.input[:]
        dq.input.extend([qname, sname, zname])
        for a in list(dq.attribute):
            if a.name == "axis":
                dq.attribute.remove(a)
        dq.attribute.append(onnx.helper.make_attribute("axis", axis))
        graph.initializer.extend([numpy_helper.from_array(layer.scales.astype(np.float32), sname),
                                  numpy_helper.from_array(np.zeros(len(layer.scales), np.int8), zname)])
        names.append(qname)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name not in replaced or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return q.SerializeToString(), names


def _check_quantized_weight(graph: onnx.GraphProto, dq, layer, device) -> None:
    """onnxruntime's own quantisation of a mapped weight must be that weight (within its rounding):
    its pre-processing folds a following BatchNormalization or Mul into the weight, and retargeting
    such a layer to the crossbar integers would silently drop that factor."""
    q, scale = initializer_array(graph, dq.input[0]), initializer_array(graph, dq.input[1])
    zero = initializer_array(graph, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    want = layer.float_weight(device)
    if q is None or scale is None or q.shape != want.shape:
        raise RuntimeInputError(f"int8: onnxruntime reshaped the weight of layer {layer.name!r}")
    ax = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[ax] = scale.size
    scale = scale.astype(np.float64).reshape(shape)
    zero = 0 if zero is None else zero.astype(np.float64).reshape(shape if zero.size > 1 else [1] * q.ndim)
    got = (q.astype(np.float64) - zero) * scale
    if np.any(np.abs(got - want) > 0.5 * scale * 1.01 + 1e-12):
        raise RuntimeInputError(f"int8: onnxruntime's quantizer changed the weights of layer {layer.name!r} "
                                f"(a BatchNormalization or Mul folded into it?)")


def _requantize_bias(graph: onnx.GraphProto, node, producer: dict, layer, wname: str) -> None:
    """A fused int8 Conv/Gemm reads its int32 bias in units of (input scale x weight scale): with
    the crossbar's weight scales instead of onnxruntime's (scale granularity layer/tile), the
    bias is re-expressed in those units (a no-op where the scales agree)."""
    if len(node.input) < 3 or not node.input[2]:
        return
    bdq, xdq = producer.get(node.input[2]), producer.get(node.input[0])
    if bdq is None or xdq is None or bdq.op_type != "DequantizeLinear" or xdq.op_type != "DequantizeLinear":
        return
    bq, bs = initializer_array(graph, bdq.input[0]), initializer_array(graph, bdq.input[1])
    bz = initializer_array(graph, bdq.input[2]) if len(bdq.input) > 2 and bdq.input[2] else None
    xs = initializer_array(graph, xdq.input[1])
    if bq is None or bs is None or xs is None or xs.size != 1 or bq.dtype != np.int32:
        return
    bias = (bq.astype(np.float64) - (0 if bz is None else bz.astype(np.float64))) * bs.astype(np.float64)
    scale = (float(xs.reshape(())) * layer.scales.astype(np.float64)).astype(np.float32)
    scale = np.broadcast_to(scale, bias.shape).copy()
    info = np.iinfo(np.int32)
    q = np.clip(np.rint(bias / np.where(scale > 0, scale, 1.0)), info.min, info.max).astype(np.int32)
    qname, sname, zname, out = (f"{wname}.crossbar_bias_q", f"{wname}.crossbar_bias_scale",
                                f"{wname}.crossbar_bias_zp", f"{wname}.crossbar_bias")
    graph.initializer.extend([numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname),
                              numpy_helper.from_array(np.zeros(q.shape, np.int32), zname)])
    graph.node.insert(0, onnx.helper.make_node("DequantizeLinear", [qname, sname, zname], [out], axis=0,
                                               name=f"{wname}.crossbar_bias_dq"))
    node.input[2] = out
    if not any(bdq.output[0] in n.input for n in graph.node):
        graph.node.remove(bdq)


def _logit_difference(plain: Int8Graph, fast: Int8Graph, model: DeployedModel, x: np.ndarray) -> float:
    """Max |logit difference| of the streamlined and the plain graph (clean weights); 0 = bit for bit."""
    clean = [lay.integer_weight(lay.levels, model.cmap.device) for lay in model.cmap.layers]
    outs = []
    for g, feed in ((plain, x), (fast, quantize_input(x, fast))):
        data = append_initializers(g.model, g.weight_names, g.layer_weights(clean))
        sess = make_session(data)
        outs.append(sess.run(None, {g.input_name: feed})[0])
    if outs[0].shape != outs[1].shape:
        return float("inf")
    return float(np.max(np.abs(outs[0] - outs[1]))) if outs[0].size else 0.0

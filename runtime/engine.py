"""Run a deployed artifact on onnxruntime under cell-level faults.

Preparation (once per model): the QDQ weight path (integer initializer -> DequantizeLinear ->
Conv/Gemm) of every mapped layer is folded into one float initializer, bit for bit the
DequantizeLinear output, under the name the consumer reads, and the model *without* those
initializers is serialised once. Per chip only the faulty weights are serialised, as a second
ModelProto holding just ``graph.initializer``, and appended to those bytes: protobuf merges
concatenated messages (repeated fields append), so the session sees one complete model with the
weights as constant initializers, which onnxruntime pre-packs and lays out (NCHWc) at full
optimisation. Measured alternatives (docs/runtime.md): weights as graph inputs cannot be
pre-packed (~60% slower runs); ``SessionOptions.add_initializer`` at ORT_ENABLE_ALL silently
computes with the *original* weights in some layers (onnxruntime 1.32: wrong accuracy), and at
ORT_ENABLE_EXTENDED it loses the NCHWc layout (~40% slower runs).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .artifact import CrossbarMap, file_sha256, load_map
from .crossbar import decode, dequantize_matrix, matrix_to_weight
from .errors import RuntimeInputError
from .faults import Chip, faulty_levels

MODEL_NAME = "model.onnx"


def default_providers() -> list[str]:
    """CUDA where onnxruntime-gpu and a GPU are present (unless RRAM_PROVIDER=cpu), the CPU
    provider otherwise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    # onnxruntime-gpu lists CUDA whether or not this machine has a GPU: look for the driver too
    gpu = any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia"))
    if "CUDAExecutionProvider" in available and gpu and os.environ.get("RRAM_PROVIDER", "").lower() != "cpu":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


_ENV_ARENA: bool | None = None


def shared_cpu_arena(ort) -> bool:
    """Register one process-wide CPU arena for all sessions (once). A fresh session per chip then
    reuses the activation memory of the previous one instead of growing its own arena (page faults)
    during its first run: measured, that first run was ~5-8% slower than a warmed session's."""
    global _ENV_ARENA
    if _ENV_ARENA is None:
        try:
            ort.create_and_register_allocator(ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT), None)
            _ENV_ARENA = True
        except Exception as e:  # already registered (by the host application), or unsupported
            _ENV_ARENA = "already" in str(e).lower()
    return bool(_ENV_ARENA)


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@dataclass
class DeployedModel:
    """One quantized folder: model.onnx + its conductance map, checked against each other."""
    folder: Path
    cmap: CrossbarMap
    base_bytes: bytes             # the prepared float model without the mapped weights
    weight_names: list[str]       # per mapped layer, the float initializer it becomes
    input_name: str
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)
    input_dims: tuple = ()        # the image input's dims, None where symbolic (e.g. batch)

    def __post_init__(self):
        self._clean = self.clean_weights()

    @property
    def normalization(self) -> dict | None:
        return read_normalization(self.metadata, self.folder / MODEL_NAME)

    @property
    def bn_rate(self) -> float | None:
        text = self.metadata.get("rram.bn_rate")
        try:
            return None if text is None else float(json.loads(text))
        except (ValueError, TypeError):
            raise RuntimeInputError(f"{self.folder / MODEL_NAME}: unreadable rram.bn_rate {text!r}") from None

    def model_bytes_with(self, weights: list[np.ndarray] | None = None) -> bytes:
        """The complete prepared model with these float weights (the clean ones when None)."""
        if weights is None:
            weights = self._clean
        if len(weights) != len(self.weight_names):
            raise RuntimeInputError(f"{len(weights)} weights for {len(self.weight_names)} mapped layers")
        return append_initializers(self.base_bytes, self.weight_names,
                                   [np.asarray(w, dtype=np.float32) for w in weights])

    def clean_weights(self) -> list[np.ndarray]:
        return [layer.float_weight(self.cmap.device) for layer in self.cmap.layers]

    def chip_weights(self, chip: Chip) -> list[np.ndarray]:
        """The float weights a faulty chip computes with (same decoder as the quantizer)."""
        device = self.cmap.device
        return [matrix_to_weight(dequantize_matrix(decode(lv, device), layer.scales), layer.weight_shape,
                                 transpose=layer.transpose)
                for layer, lv in zip(self.cmap.layers, faulty_levels(self.cmap, chip.codes))]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "DeployedModel":
        folder = Path(folder)
        path = folder / MODEL_NAME
        if not path.is_file():
            raise RuntimeInputError(f"{folder} is not a quantized artifact: no {MODEL_NAME}")
        cmap = load_map(folder)
        sha = file_sha256(path)
        if cmap.model_sha256 and cmap.model_sha256 != sha:
            raise RuntimeInputError(f"the conductance map in {folder} belongs to a different model.onnx "
                                    f"(sha256 {cmap.model_sha256[:12]}, file {sha[:12]})")
        try:
            model = onnx.load(str(path))
        except Exception as e:  # onnx raises DecodeError and friends
            raise RuntimeInputError(f"corrupt ONNX model {path}: {str(e).splitlines()[0][:200]}") from None
        inits = {t.name for t in model.graph.initializer}
        inputs = [i.name for i in model.graph.input if i.name not in inits]
        base_bytes, names = _fold_weights(model, cmap, path)
        if len(inputs) != 1:
            raise RuntimeInputError(f"{path}: expected one image input, found {inputs}")
        dims = next(i for i in model.graph.input if i.name == inputs[0]).type.tensor_type.shape.dim
        return cls(folder, cmap, base_bytes, names, inputs[0], sha, _meta(model),
                   tuple(d.dim_value if d.dim_value > 0 else None for d in dims))

    def fixed_batch(self, images_shape: tuple) -> int | None:
        """Check uint8 NHWC images against the model's input; the batch size the model fixes, if any."""
        dims = self.input_dims
        if len(dims) != 4 or len(images_shape) != 4:  # (normalize_images refuses non-NHWC images)
            return None
        got = (images_shape[3], images_shape[1], images_shape[2])
        if any(want is not None and want != g for want, g in zip(dims[1:], got)):
            show = "x".join("?" if d is None else str(d) for d in dims[1:])
            raise RuntimeInputError(f"{self.folder}: the model takes images of {show} (C x H x W), "
                                    f"the data holds {got[0]}x{got[1]}x{got[2]}")
        return dims[0]


def _fold_weights(model: onnx.ModelProto, cmap: CrossbarMap, path: Path) -> tuple[bytes, list[str]]:
    """Replace each mapped layer's DequantizeLinear by its float output; check that the map decodes
    to exactly the integer initializer and scales of the model."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    dq_of = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    names, drop_nodes, drop_inits = [], set(), set()
    for layer in cmap.layers:
        node = dq_of.get(layer.name)
        if layer.name not in inits or node is None:
            raise RuntimeInputError(f"the conductance map does not match {path}: no integer initializer "
                                    f"{layer.name!r} feeding a DequantizeLinear")
        q = numpy_helper.to_array(inits[layer.name])
        if tuple(q.shape) != tuple(layer.weight_shape) or not np.array_equal(
                q.astype(np.int64), layer.integer_weight(device=cmap.device).astype(np.int64)):
            raise RuntimeInputError(f"the conductance map does not match {path}: layer {layer.name!r} "
                                    f"decodes to other integers than the model holds")
        scale_name = node.input[1]
        scale = numpy_helper.to_array(inits[scale_name]) if scale_name in inits else None
        if scale is None or not np.array_equal(scale.astype(np.float32).ravel(), layer.scales.ravel()):
            raise RuntimeInputError(f"the conductance map does not match {path}: layer {layer.name!r} "
                                    f"scales differ from the model's")
        if len(node.input) > 2 and node.input[2] and node.input[2] in inits and \
                np.any(numpy_helper.to_array(inits[node.input[2]])):
            raise RuntimeInputError(f"{path}: layer {layer.name!r} has a non-zero zero point")
        names.append(node.output[0])
        drop_nodes.add(id(node))
        drop_inits.update({layer.name, scale_name})
        if len(node.input) > 2 and node.input[2]:
            drop_inits.add(node.input[2])
    # initializers still read by other nodes stay
    still_used = {i for n in graph.node if id(n) not in drop_nodes for i in n.input}
    kept_nodes = [n for n in graph.node if id(n) not in drop_nodes]
    kept_inits = [t for t in graph.initializer if t.name not in drop_inits or t.name in still_used]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return model.SerializeToString(), names


def read_normalization(metadata: dict[str, str], where) -> dict | None:
    """The input normalisation ``rram export`` records (metadata ``rram.normalization``), or None."""
    text = metadata.get("rram.normalization")
    if text is None:
        return None
    try:
        d = json.loads(text)
        mean, std = [float(x) for x in d["mean"]], [float(x) for x in d["std"]]
    except (ValueError, KeyError, TypeError):
        raise RuntimeInputError(f"{where}: unreadable rram.normalization {text!r}") from None
    return {"mean": mean, "std": std}


def normalize_images(images: np.ndarray, normalization: dict | None) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW, once, as one contiguous array."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise RuntimeInputError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    if normalization is not None:
        mean = np.asarray(normalization["mean"], np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(normalization["std"], np.float32).reshape(1, 3, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def append_initializers(base: bytes, names: list[str], arrays: list[np.ndarray]) -> bytes:
    """``base`` plus these initializers: protobuf merges a concatenated message into the first
    (repeated fields append), so only the weights are serialised per chip."""
    tail = onnx.ModelProto(graph=onnx.GraphProto(initializer=[
        numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in zip(names, arrays)]))
    return base + tail.SerializeToString()


PRECISIONS = ("fp32", "int8")


def int8_fits(model: DeployedModel) -> bool:
    """Every (faulty) integer weight fits int8: |q| <= 127 differential, 8-bit offset."""
    d = model.cmap.device
    return d.qmax <= 127 if d.encoding == "differential" else d.weight_bits <= 8


@dataclass
class Int8Graph:
    """The int8 model as the engine runs it (see ``prepare_int8``)."""
    model: bytes                      # without the crossbar integer weights (appended per chip)
    weight_names: list[str]           # one per mapped layer, int8
    input_name: str
    input_quant: tuple[float, int] | None = None  # (scale, zero point): input is uint8 NHWC, quantised once
    input_channels: int = 0           # channels of the uint8 input (zero-point padded to a multiple of 4)
    padded_layers: dict[int, int] = field(default_factory=dict)  # layer index -> zero input channels added

    def layer_weights(self, integers: list[np.ndarray]) -> list[np.ndarray]:
        """Per-layer int8 weights as this graph takes them (zero input channels appended)."""
        out = []
        for i, w in enumerate(integers):
            extra = self.padded_layers.get(i, 0)
            w = np.asarray(w, dtype=np.int8)
            out.append(np.pad(w, [(0, 0), (0, extra)] + [(0, 0)] * (w.ndim - 2)) if extra else w)
        return out


def prepare_int8(model: DeployedModel, calibration: np.ndarray, *, calibration_batch: int = 100,
                 fixed_batch: bool = False, streamline: bool = True) -> Int8Graph:
    """onnxruntime static quantisation (QDQ, uint8 activations as a DAC/ADC would see them,
    MinMax calibration on ``calibration`` = normalised float images), then each mapped layer's
    weight DequantizeLinear is pointed at the crossbar integers and scales (per output channel,
    symmetric) instead of onnxruntime's own weight quantisation. With ``streamline`` the graph
    then takes pre-quantised images and pads on integers (``streamline_int8``), checked to give
    bit-identical logits."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

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
                    from onnxruntime.quantization.shape_inference import quant_pre_process

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
    q, scale = _initializer_array(graph, dq.input[0]), _initializer_array(graph, dq.input[1])
    zero = _initializer_array(graph, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
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
    bq, bs = _initializer_array(graph, bdq.input[0]), _initializer_array(graph, bdq.input[1])
    bz = _initializer_array(graph, bdq.input[2]) if len(bdq.input) > 2 and bdq.input[2] else None
    xs = _initializer_array(graph, xdq.input[1])
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


def _initializer_array(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def streamline_int8(q: onnx.ModelProto, weight_names: list[str], input_name: str) -> Int8Graph:
    """Two exact rewrites of onnxruntime's QDQ graph that its optimiser does not make (measured,
    ResNet20: ~16% faster, docs/runtime.md):

    * DequantizeLinear -> Pad -> QuantizeLinear with one (scale, zero point) becomes a Pad on the
      integers with the zero point as pad value (the option-A shortcut's channel padding);
    * the float input's QuantizeLinear (the DAC) is done once per campaign, outside the graph: the
      graph takes uint8 NHWC, so the layout Transposes cancel. Where every consumer is a mapped
      Conv, the input channels are zero-padded to a multiple of 4 (the conv weights get zero input
      channels), because onnxruntime's fast symmetric int8 conv needs that (3 -> 4 for RGB).
    """
    graph = q.graph
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in graph.node for o in n.output}

    def params(node):
        return [None if (len(node.input) <= k or not node.input[k]) else _initializer_array(graph, node.input[k])
                for k in (1, 2)]

    def constant(name):  # an initializer, or the quantizer's DequantizeLinear of one
        node = producer.get(name)
        if node is None:
            return _initializer_array(graph, name)
        if node.op_type == "DequantizeLinear" and node.input[0] in {t.name for t in graph.initializer}:
            scale, zero = params(node)
            q = _initializer_array(graph, node.input[0]).astype(np.float64)
            return (q - (zero if zero is not None else 0)) * scale if scale is not None else None
        return None

    drop = set()
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        dq, after = producer.get(pad.input[0]), consumers.get(pad.output[0], [])
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or \
                after[0].op_type != "QuantizeLinear" or mode != b"constant":
            continue
        qn = after[0]
        (s_in, z_in), (s_out, z_out) = params(dq), params(qn)
        value = constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        if s_in is None or z_in is None or s_out is None or z_out is None or value is None or \
                s_in.size != 1 or not np.array_equal(s_in, s_out) or not np.array_equal(z_in, z_out) or \
                np.any(value != 0) or (len(pad.input) > 3 and pad.input[3]):
            continue
        zname = f"{pad.output[0]}.zero_point"
        graph.initializer.append(numpy_helper.from_array(z_in.reshape(()), zname))
        inputs = [dq.input[0], pad.input[1], zname]
        del pad.input[:]
        pad.input.extend(inputs)
        pad.output[0] = qn.output[0]
        drop.add(id(qn))
        if len(consumers[dq.output[0]]) == 1:
            drop.add(id(dq))

    spec = Int8Graph(b"", list(weight_names), input_name)
    first = consumers.get(input_name, [])
    inp = next((i for i in graph.input if i.name == input_name), None)
    dims = inp.type.tensor_type.shape.dim if inp is not None else []
    if len(first) == 1 and first[0].op_type == "QuantizeLinear" and len(dims) == 4 and dims[1].dim_value > 0:
        qn = first[0]
        scale, zero = params(qn)
        if scale is not None and zero is not None and scale.size == 1 and zero.size == 1 and zero.dtype == np.uint8:
            channels = int(dims[1].dim_value)
            padded = -(-channels // 4) * 4
            layer_of = {w: i for i, w in enumerate(weight_names)}
            targets = []
            for dq in consumers.get(qn.output[0], []):
                for conv in (consumers.get(dq.output[0], []) if dq.op_type == "DequantizeLinear" else [None]):
                    wdq = producer.get(conv.input[1]) if conv is not None and conv.op_type == "Conv" else None
                    group = next((a.i for a in conv.attribute if a.name == "group"), 1) if conv is not None else 0
                    targets.append(layer_of.get(wdq.input[0]) if wdq is not None and group == 1 else None)
            if padded == channels or not targets or None in targets:
                padded = channels
            spec.padded_layers = {i: padded - channels for i in targets} if padded != channels else {}
            spec.input_name = f"{input_name}.uint8_nhwc"
            spec.input_quant = (float(scale.reshape(())), int(zero.reshape(())))
            spec.input_channels = padded
            new_input = onnx.helper.make_tensor_value_info(
                spec.input_name, onnx.TensorProto.UINT8,
                [dims[0].dim_param or dims[0].dim_value or None, dims[2].dim_param or dims[2].dim_value or None,
                 dims[3].dim_param or dims[3].dim_value or None, padded])
            to_nchw = onnx.helper.make_node("Transpose", [spec.input_name], [qn.output[0]], perm=[0, 3, 1, 2],
                                            name=f"{input_name}.to_nchw")
            drop.add(id(qn))
            graph.input.remove(inp)
            graph.input.insert(0, new_input)
            graph.node.insert(0, to_nchw)
    kept = [n for n in graph.node if id(n) not in drop]
    # constants (DequantizeLinear of an initializer) nothing reads any more
    read = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "DequantizeLinear" or any(o in read for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    read = {i for n in kept for i in n.input}
    unused = [t for t in graph.initializer if t.name not in read]
    for t in unused:
        graph.initializer.remove(t)
    spec.model = q.SerializeToString()
    return spec


def quantize_input(x: np.ndarray, spec: Int8Graph, *, batch: int = 1000) -> np.ndarray:
    """Normalised float NCHW -> the uint8 NHWC input of a streamlined int8 graph, quantised by
    onnxruntime's own QuantizeLinear (bit for bit what the graph did itself)."""
    if spec.input_quant is None:
        return x
    import onnxruntime as ort

    scale, zero = spec.input_quant
    c = x.shape[1]
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         h.make_node("Transpose", ["q"], ["t"], perm=[0, 2, 3, 1]),
         h.make_node("Pad", ["t", "pads", "z"], ["y"])],
        "quantize_input", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, c, None, None])],
        [h.make_tensor_value_info("y", onnx.TensorProto.UINT8, [None, None, None, spec.input_channels])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(np.array(zero, np.uint8), "z"),
         numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 0, spec.input_channels - c], np.int64), "pads")])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(h.make_model(graph, opset_imports=[h.make_opsetid("", 21)]).SerializeToString(),
                                so, providers=["CPUExecutionProvider"])
    out = np.empty((x.shape[0], x.shape[2], x.shape[3], spec.input_channels), np.uint8)
    for s in range(0, len(x), batch):
        out[s:s + batch] = sess.run(None, {"x": x[s:s + batch]})[0]
    return out


def _logit_difference(plain: Int8Graph, fast: Int8Graph, model: DeployedModel, x: np.ndarray) -> float:
    """Max |logit difference| of the streamlined and the plain graph (clean weights); 0 = bit for bit."""
    import onnxruntime as ort

    clean = [lay.integer_weight(lay.levels, model.cmap.device) for lay in model.cmap.layers]
    outs = []
    for g, feed in ((plain, x), (fast, quantize_input(x, fast))):
        data = append_initializers(g.model, g.weight_names, g.layer_weights(clean))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {g.input_name: feed})[0])
    if outs[0].shape != outs[1].shape:
        return float("inf")
    return float(np.max(np.abs(outs[0] - outs[1]))) if outs[0].size else 0.0


class Engine:
    """Evaluates one prepared model on fixed images under any number of chips."""

    def __init__(self, model: DeployedModel, images: np.ndarray, labels: np.ndarray, *,
                 batch_size: int = 128, threads: int | None = None, providers: list[str] | None = None,
                 normalized: np.ndarray | None = None, precision: str = "fp32",
                 calibration: np.ndarray | None = None):
        """``calibration``: uint8 NHWC training images, for ``precision="int8"`` only."""
        import onnxruntime as ort

        if len(images) != len(labels) or len(labels) == 0:
            raise RuntimeInputError(f"{len(images)} images but {len(labels)} labels")
        self.ort = ort
        self.model = model
        self.x = normalized if normalized is not None else normalize_images(images, model.normalization)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        fixed = model.fixed_batch(images.shape)
        if fixed is not None:  # the model takes exactly this many images per call
            if len(labels) % fixed:
                raise RuntimeInputError(f"{model.folder}: the model takes batches of exactly {fixed} images; "
                                        f"{len(labels)} images are not a multiple of {fixed} (choose --images)")
            self.batch_size = fixed
        self.threads = threads or default_threads()
        self.providers = providers or default_providers()
        if precision not in PRECISIONS:
            raise RuntimeInputError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
        self.precision = precision
        self.feed_name, self.feed = model.input_name, self.x
        if precision == "int8":
            calib = normalize_images(calibration, model.normalization) if calibration is not None else None
            self.int8 = prepare_int8(model, calib, calibration_batch=fixed or 100, fixed_batch=fixed is not None)
            self.feed_name, self.feed = self.int8.input_name, quantize_input(self.x, self.int8)

    def weights(self, chip: Chip | None = None) -> list[np.ndarray]:
        """What the session needs per chip: float weights (fp32) or crossbar integers (int8)."""
        if self.precision == "fp32":
            return self.model.chip_weights(chip) if chip is not None else self.model.clean_weights()
        m = self.model
        levels = faulty_levels(m.cmap, chip.codes) if chip is not None else [lay.levels for lay in m.cmap.layers]
        return self.int8.layer_weights([lay.integer_weight(lv, m.cmap.device) for lay, lv in zip(m.cmap.layers, levels)])

    def session(self, weights: list[np.ndarray] | None = None):
        """A session with these per-layer weights (see ``weights``; fault-free when None)."""
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if self.providers == ["CPUExecutionProvider"] and shared_cpu_arena(self.ort):
            so.add_session_config_entry("session.use_env_allocators", "1")
        if self.precision == "fp32":
            data = self.model.model_bytes_with(weights)
        else:
            data = append_initializers(self.int8.model, self.int8.weight_names,
                                       weights if weights is not None else self.weights())
        return self.ort.InferenceSession(data, so, providers=self.providers)

    def accuracy_of(self, sess) -> float:
        correct = 0
        for start in range(0, len(self.labels), self.batch_size):
            logits = sess.run(None, {self.feed_name: self.feed[start:start + self.batch_size]})[0]
            correct += int(np.count_nonzero(logits.argmax(1) == self.labels[start:start + self.batch_size]))
        return correct / len(self.labels)

    def clean_accuracy(self) -> float:
        return self.accuracy_of(self.session())

    def chip_accuracy(self, chip: Chip) -> float:
        return self.accuracy_of(self.session(self.weights(chip)))

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
        return cls(folder, cmap, base_bytes, names, inputs[0], sha, _meta(model))


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


def prepare_int8(model: DeployedModel, calibration: np.ndarray, *, calibration_batch: int = 100) -> tuple[bytes, list[str]]:
    """onnxruntime static quantisation (QDQ, uint8 activations as a DAC/ADC would see them,
    MinMax calibration on ``calibration`` = normalised float images), then each mapped layer's
    weight DequantizeLinear is pointed at the crossbar integers and scales (per output channel,
    symmetric) instead of onnxruntime's own weight quantisation. Returns the model bytes without
    those integer weights and their names (appended per chip, int8)."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if not int8_fits(model):
        raise RuntimeInputError(f"--precision int8 needs crossbar weights that fit int8; device "
                                f"{model.cmap.device.name!r} holds up to {model.cmap.device.qmax}")
    if calibration is None or len(calibration) == 0:
        raise RuntimeInputError("--precision int8 needs calibration images")

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
        nodes = [n for n in float_model.graph.node if len(n.input) > 1 and n.input[1] == wname]
        if len(nodes) != 1:
            raise RuntimeInputError(f"int8: weight {wname!r} of layer {layer.name!r} feeds {len(nodes)} nodes")
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

    try:
        return _retarget(quantize(True), model, tags)
    except RuntimeInputError:  # pre-processing fused a mapped layer away: quantise the graph as it is
        return _retarget(quantize(False), model, tags)


def _retarget(q: onnx.ModelProto, model: DeployedModel, tags: list[str]) -> tuple[bytes, list[str]]:
    """Point each mapped layer's weight DequantizeLinear at the crossbar integers and scales."""
    graph = q.graph
    producer = {o: n for n in graph.node for o in n.output}
    names, replaced = [], set()
    for layer, wname, tag in zip(model.cmap.layers, model.weight_names, tags):
        consumers = [n for n in graph.node if n.name == tag]
        if len(consumers) != 1 or len(consumers[0].input) < 2:
            raise RuntimeInputError(f"int8: cannot find the node of layer {layer.name!r} after quantisation")
        dq = producer.get(consumers[0].input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            raise RuntimeInputError(f"int8: onnxruntime left layer {layer.name!r} unquantised")
        axis = 1 if (len(layer.weight_shape) == 2 and not layer.transpose) else 0
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
        self.threads = threads or default_threads()
        self.providers = providers or default_providers()
        if precision not in PRECISIONS:
            raise RuntimeInputError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
        self.precision = precision
        if precision == "int8":
            calib = normalize_images(calibration, model.normalization) if calibration is not None else None
            self.int8_base, self.int8_names = prepare_int8(model, calib)

    def weights(self, chip: Chip | None = None) -> list[np.ndarray]:
        """What the session needs per chip: float weights (fp32) or crossbar integers (int8)."""
        if self.precision == "fp32":
            return self.model.chip_weights(chip) if chip is not None else self.model.clean_weights()
        m = self.model
        levels = faulty_levels(m.cmap, chip.codes) if chip is not None else [lay.levels for lay in m.cmap.layers]
        return [lay.integer_weight(lv, m.cmap.device).astype(np.int8) for lay, lv in zip(m.cmap.layers, levels)]

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
            data = append_initializers(self.int8_base, self.int8_names,
                                       weights if weights is not None else self.weights())
        return self.ort.InferenceSession(data, so, providers=self.providers)

    def accuracy_of(self, sess) -> float:
        correct = 0
        name = self.model.input_name
        for start in range(0, len(self.labels), self.batch_size):
            logits = sess.run(None, {name: self.x[start:start + self.batch_size]})[0]
            correct += int(np.count_nonzero(logits.argmax(1) == self.labels[start:start + self.batch_size]))
        return correct / len(self.labels)

    def clean_accuracy(self) -> float:
        return self.accuracy_of(self.session())

    def chip_accuracy(self, chip: Chip) -> float:
        return self.accuracy_of(self.session(self.weights(chip)))

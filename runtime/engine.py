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
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .artifact import CrossbarMap, MappedLayer, file_sha256, load_map
from .crossbar import decode, dequantize_matrix, matrix_to_weight
from .errors import RuntimeInputError
from .faults import Chip, faulty_levels

MODEL_NAME = "model.onnx"


def default_providers() -> list[str]:
    """CUDA where onnxruntime-gpu and a GPU are present, the CPU provider otherwise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


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
        text = self.metadata.get("rram.normalization")
        if text is None:
            return None
        try:
            d = json.loads(text)
            mean, std = [float(x) for x in d["mean"]], [float(x) for x in d["std"]]
        except (ValueError, KeyError, TypeError):
            raise RuntimeInputError(f"{self.folder / MODEL_NAME}: unreadable rram.normalization {text!r}") from None
        return {"mean": mean, "std": std}

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
        tail = onnx.ModelProto(graph=onnx.GraphProto(initializer=[
            numpy_helper.from_array(np.ascontiguousarray(w, dtype=np.float32), n)
            for n, w in zip(self.weight_names, weights)]))
        return self.base_bytes + tail.SerializeToString()

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


class Engine:
    """Evaluates one prepared model on fixed images under any number of chips."""

    def __init__(self, model: DeployedModel, images: np.ndarray, labels: np.ndarray, *,
                 batch_size: int = 500, threads: int | None = None, providers: list[str] | None = None,
                 normalized: np.ndarray | None = None):
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

    def session(self, weights: list[np.ndarray] | None = None):
        """A session with the given float weights for the mapped layers (fault-free when None)."""
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return self.ort.InferenceSession(self.model.model_bytes_with(weights), so, providers=self.providers)

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
        return self.accuracy_of(self.session(self.model.chip_weights(chip)))

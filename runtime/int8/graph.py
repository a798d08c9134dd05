"""The int8 graph as the engine runs it, and the input quantisation of a streamlined graph."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..session import make_session


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


def initializer_array(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def quantize_input(x: np.ndarray, spec: Int8Graph, *, batch: int = 1000) -> np.ndarray:
    """Normalised float NCHW -> the uint8 NHWC input of a streamlined int8 graph, quantised by
    onnxruntime's own QuantizeLinear (bit for bit what the graph did itself)."""
    if spec.input_quant is None:
        return x
    scale, zero = spec.input_quant
    c = x.shape[1]
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         h.make_node("Transpose", ["q"], ["t"], perm=[0, 2, 3, 1]),
         h.make_node("Pad", ["t", "pads", "z"], ["y"])],
        "quantize_input", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, c, None, None])],
        [h.make_tensor_value_info("y", onnx.TensorProto.UINT8, [None, None, None, spec.input_channels])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(zero, np.uint8), "z"),
         numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 0, spec.input_channels - c], np.int64), "pads")])
    sess = make_session(h.make_model(graph, opset_imports=[h.make_opsetid("", 21)]).SerializeToString())
    out = np.empty((x.shape[0], x.shape[2], x.shape[3], spec.input_channels), np.uint8)
    for s in range(0, len(x), batch):
        out[s:s + batch] = sess.run(None, {"x": x[s:s + batch]})[0]
    return out

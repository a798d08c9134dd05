"""Per-chip calibration (runtime/calibration/) of the int8 graph: statistics measured on the
chip as deployed (quantised activations, the chip's crossbar integers), the digital scale and
offset applied where a periphery applies them, to the integer column output (docs/runtime.md).

* **Measured in int8.** The statistics graph is the prepared int8 graph itself with
  ``calibration.stats_model``'s in-graph batch statistics after each calibrated layer: every
  layer's input is quantised with the activation ranges of the deployed graph (the DAC/ADC), its
  weights are the chip's crossbar integers times the crossbar scales, and the calibrated layers
  feed the next ones through the same output quantisation. Only the calibrated layers' own
  products run in float there (their output goes to the statistics, not to a QuantizeLinear, so
  onnxruntime does not fuse them): the dequantised integers multiplied in float32, in the units
  of the BN targets (those of the float weights), so the affine is the fp32 calibrator's quantity,
  measured on the int8 chip's inputs.
* **Applied to the integer output.** The digital scale g multiplies the column output: the
  layer's weight DequantizeLinear scale becomes s_w * g (the integers stay the chip's), and the
  offset becomes the layer's int32 bias in units of x_scale * s_w * g. onnxruntime fuses this into
  its integer convolution exactly as it fused the uncalibrated layer (int32 accumulation, then
  one per-channel requantisation): the affine costs nothing per image. Per chip, only these
  scales and biases are appended with the crossbar integers.
* More calibration images than one batch holds are streamed (``calibration.Statistics``), the
  same way as in fp32.
* The output quantisation ranges stay those calibrated on the fault-free model: calibration
  brings each channel back to its BN target, i.e. to the distribution those ranges were set on."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .. import calibration as shared  # its in-graph batch statistics, shared with fp32
from ..calibration import BNTarget
from ..errors import RuntimeInputError
from .graph import Int8Graph, initializer_array

_INT32 = np.iinfo(np.int32)


class Int8ChipCalibrator:
    """``calibration.ChipCalibrator`` for the int8 graph: the same ``measure`` / ``evaluated`` /
    ``eval_base``, with the crossbar integers (``Int8Graph.layer_weights``) as the chip's weights."""

    def __init__(self, graph: Int8Graph, base: onnx.ModelProto, float_weight_names: list[str],
                 weight_shapes: list[tuple], layer_scales: list[np.ndarray], targets: dict[str, BNTarget],
                 calibration, session, *, batch: int = shared.CALIBRATION_BATCH, fixed: int | None = None):
        """``base``: the deployed float model (which layer each BN target belongs to);
        ``weight_shapes``: the int8 weights as ``graph`` takes them; ``layer_scales``: the
        crossbar scale of each output channel; ``calibration``: the calibration images in
        ``graph``'s input convention (``quantize_input``; ``calibration.CalibrationImages`` to
        prepare them batch by batch), None when the parameters come from a file;
        ``session(model_bytes) -> onnxruntime session``; ``batch``, ``fixed``: as
        ``calibration.ChipCalibrator`` (more than ``batch`` images are streamed)."""
        self.weight_names = list(graph.weight_names)
        self.session = session
        target_of = {}
        for node in base.graph.node:
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.output[0] in targets:
                target_of[node.input[1]] = node.output[0]
        q = onnx.ModelProto.FromString(graph.model)
        producer = {o: n for n in q.graph.node for o in n.output}
        by_name = {n.name: n for n in q.graph.node}
        # (layer index, its BN target's key, the node's output in the int8 graph, its input scale)
        self.layers = []
        for i, fname in enumerate(float_weight_names):
            if fname not in target_of:
                continue
            node = by_name.get(f"rram.crossbar.{i}")
            wdq = producer.get(node.input[1]) if node is not None and len(node.input) > 1 else None
            xdq = producer.get(node.input[0]) if node is not None else None
            if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] != self.weight_names[i] or \
                    xdq is None or xdq.op_type != "DequantizeLinear":
                raise RuntimeInputError(f"int8 calibration: cannot find the quantised layer of {fname!r}")
            xs = initializer_array(q.graph, xdq.input[1])
            if xs is None or xs.size != 1:
                raise RuntimeInputError(f"int8 calibration: the input of {fname!r} has no single scale")
            self.layers.append((i, target_of[fname], node.output[0], float(xs.reshape(()))))
        if not self.layers:
            raise RuntimeInputError("calibration: no mapped layer has a BN target")
        self.targets = {key: targets[key] for _, key, _, _ in self.layers}
        self.scales = {i: np.asarray(layer_scales[i], np.float64) for i, _, _, _ in self.layers}
        self._key_of = {out: key for _, key, out, _ in self.layers}

        # the statistics graph: the int8 graph as deployed, the chip's integers as inputs
        ranks = {by_name[f"rram.crossbar.{i}"].input[1]: len(weight_shapes[i]) for i, _, _, _ in self.layers}
        inputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT8, list(shape))
                  for name, shape in zip(self.weight_names, weight_shapes)]
        self.stats = shared.Statistics(q, {out: targets[key] for _, key, out, _ in self.layers}, inputs,
                                       calibration, session, weight_ranks=ranks, batch=batch, fixed=fixed)
        self.calibration, self.order = self.stats.calibration, self.stats.order
        self.stats_bytes = self.stats.stats_bytes

        # the evaluated graph: each calibrated layer's weight scale and int32 bias come per chip
        e = onnx.ModelProto()
        e.CopyFrom(q)
        g = e.graph
        producer = {o: n for n in g.node for o in n.output}
        nodes = {n.name: n for n in g.node}
        for i, _, _, _ in self.layers:
            node, wname = nodes[f"rram.crossbar.{i}"], self.weight_names[i]
            producer[node.input[1]].input[1] = f"{wname}.rram_scale"
            zname = f"{wname}.rram_offset_zp"
            g.initializer.append(numpy_helper.from_array(np.zeros(len(self.scales[i]), np.int32), zname))
            g.node.insert(0, onnx.helper.make_node(
                "DequantizeLinear", [f"{wname}.rram_offset_q", f"{wname}.rram_offset_scale", zname],
                [f"{wname}.rram_offset"], axis=0, name=f"{wname}.rram_offset_dq"))
            del node.input[2:]  # the layer's own bias becomes the calibrated offset
            node.input.append(f"{wname}.rram_offset")
        # drop what nothing reads any more (the old bias DequantizeLinear, scales and integers)
        while True:
            read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
            dead = [n for n in g.node if not any(o in read for o in n.output)]
            if not dead:
                break
            for n in dead:
                g.node.remove(n)
        kept = [t for t in g.initializer if t.name in read]
        del g.initializer[:]
        g.initializer.extend(kept)
        self.eval_base = e.SerializeToString()

    def measure(self, weights: list[np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{layer (the BN target's key): (scale, offset)} for a chip with these int8 weights."""
        stats = self.stats({n: np.asarray(w, np.int8) for n, w in zip(self.weight_names, weights)})
        return {self._key_of[out]: self.targets[self._key_of[out]].affine(*stats[out]) for out in self.order}

    def evaluated(self, weights: list[np.ndarray], affines: dict) -> tuple[list[str], list[np.ndarray]]:
        """(initializer names, arrays) to append to ``eval_base``: the chip's integers, and per
        calibrated layer the weight scale s_w * g and the offset as int32 in units x_s * s_w * g."""
        names = list(self.weight_names)
        arrays = [np.asarray(w, np.int8) for w in weights]
        for i, key, _, xs in self.layers:
            if key not in affines:
                raise RuntimeInputError(f"the chip's calibration has no entry for layer {key!r}")
            gain, offset = (np.asarray(a, np.float64) for a in affines[key])
            if gain.shape != self.scales[i].shape or offset.shape != gain.shape:
                raise RuntimeInputError(f"the chip's calibration of layer {key!r} has {gain.size} channels, "
                                        f"the layer {self.scales[i].size}")
            wscale = (self.scales[i] * gain).astype(np.float32)
            bscale = (xs * wscale.astype(np.float64)).astype(np.float32)
            bias = np.rint(offset / np.where(bscale > 0, bscale, 1.0).astype(np.float64))
            wname = self.weight_names[i]
            names += [f"{wname}.rram_scale", f"{wname}.rram_offset_q", f"{wname}.rram_offset_scale"]
            arrays += [wscale, np.clip(bias, _INT32.min, _INT32.max).astype(np.int32), bscale]
        return names, arrays

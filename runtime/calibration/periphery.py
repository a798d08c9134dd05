"""``ChipCalibrator``: a chip's per-channel digital scale and offset, measured from its faulty
weights on the calibration images."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import RuntimeInputError
from .stream import CALIBRATION_BATCH, Statistics
from .targets import BNTarget


def _channel_axis(node: onnx.NodeProto) -> int:
    """The weight axis of the output channels: 0 for Conv and Gemm(transB=1), 1 for Gemm(transB=0)."""
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return 1 if node.op_type == "Gemm" and not trans_b else 0


class ChipCalibrator:
    """Per-chip calibration for a deployed float model whose mapped weights are appended per chip
    (``base``: the model without those initializers, as the runtime engine keeps it).

    For each chip: one run of the ``stats_model`` on the calibration batch with the chip's weights
    measures every calibrated layer (more images than a batch: streamed, ``Statistics``); the
    digital (scale, offset) of each channel follow from its BN target; the evaluated model takes
    scale * weight as the layer's weight (the scale multiplies the column's output, so the product
    is the same) and the offset as its bias.

    With ``rewrite`` (DAC/ADC resolution, runtime/converters.py: graph -> graph) the statistics
    and evaluated graphs are rewritten too, so the chip is measured and evaluated behind its
    converters; the scale then multiplies the layer's digital sum of converted partial sums
    (a Mul after it, before the offset's Add), not the weight, which would change what the ADCs
    convert."""

    def __init__(self, base: onnx.ModelProto, weight_names: list[str], weight_shapes: list[tuple],
                 targets: dict[str, BNTarget], calibration, session, *, batch: int = CALIBRATION_BATCH,
                 fixed: int | None = None, rewrite=None):
        """``calibration``: the calibration images (``CalibrationImages``: uint8 images and their
        normalisation, prepared batch by batch; or a feed {input name: normalised images}), None
        when the chip's parameters come from a file (``measure`` then refuses);
        ``session(model_bytes) -> onnxruntime session``; ``batch``: the most images measured
        as one batch (more are streamed, ``Statistics``); ``fixed``: the batch size the model
        fixes, if any."""
        self.weight_names = list(weight_names)
        self.session = session
        by_weight = {}
        for node in base.graph.node:
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.output[0] in targets \
                    and node.input[1] in self.weight_names:
                by_weight[node.input[1]] = node
        if not by_weight:
            raise RuntimeInputError("calibration: no mapped layer has a BN target")
        self.layers = [(i, by_weight[w].output[0], _channel_axis(by_weight[w]))
                       for i, w in enumerate(self.weight_names) if w in by_weight]
        self.targets = {out: targets[out] for _, out, _ in self.layers}
        ranks = dict(zip(self.weight_names, (len(s) for s in weight_shapes)))
        # the chip's weights are inputs of the statistics graph: one session serves every chip
        inputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))
                  for name, shape in zip(self.weight_names, weight_shapes)]
        self.stats = Statistics(base, self.targets, inputs, calibration, session, weight_ranks=ranks,
                                batch=batch, fixed=fixed, rewrite=rewrite)
        self.calibration, self.order = self.stats.calibration, self.stats.order
        self.stats_bytes = self.stats.stats_bytes
        # the evaluated model: each calibrated layer reads its bias from a per-chip offset
        emodel = onnx.ModelProto()
        emodel.CopyFrom(base)
        # with converters: the scale as a per-channel Mul after the layer, in its broadcast shape
        self.after = None if rewrite is None else {
            out: [-1] + [1] * (len(weight_shapes[i]) - 2) for i, out, _ in self.layers}
        nodes = []
        for node in emodel.graph.node:
            nodes.append(node)
            if node.op_type in ("Conv", "Gemm") and node.output and node.output[0] in self.targets:
                out = node.output[0]
                del node.input[2:]
                if self.after is None:
                    node.input.append(f"{out}.rram_offset")
                    continue
                node.output[0] = f"{out}.rram_sum"
                h, p = onnx.helper, f"{out}.rram"
                nodes += [h.make_node("Mul", [f"{p}_sum", f"{p}_scale"], [f"{p}_scaled"]),
                          h.make_node("Add", [f"{p}_scaled", f"{p}_offset"], [out])]
        del emodel.graph.node[:]
        emodel.graph.node.extend(nodes)
        used = {i for n in emodel.graph.node for i in n.input}
        kept = [t for t in emodel.graph.initializer if t.name in used]
        del emodel.graph.initializer[:]
        emodel.graph.initializer.extend(kept)
        self.eval_model = emodel  # before the rewrite: the converters' ranges are measured on it
        self.eval_base = (emodel if rewrite is None else rewrite(emodel)).SerializeToString()

    def measure(self, weights: list[np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{layer output: (scale, offset)} for a chip computing with these float weights."""
        stats = self.stats({n: np.asarray(w, np.float32) for n, w in zip(self.weight_names, weights)})
        return {out: self.targets[out].affine(*stats[out]) for out in self.order}

    def evaluated(self, weights: list[np.ndarray], affines: dict) -> tuple[list[str], list[np.ndarray]]:
        """(initializer names, arrays) to append to ``eval_base``: weights with the digital scale
        folded in, and the offsets."""
        weights = [np.asarray(w, np.float32) for w in weights]
        names, arrays = list(self.weight_names), list(weights)
        for i, out, axis in self.layers:
            if out not in affines:
                raise RuntimeInputError(f"the chip's calibration has no entry for layer {out!r}")
            scale, offset = affines[out]
            if scale.shape != (weights[i].shape[axis],) or offset.shape != scale.shape:
                raise RuntimeInputError(f"the chip's calibration of layer {out!r} has {scale.size} channels, "
                                        f"the layer {weights[i].shape[axis]}")
            if self.after is not None:  # behind converters: the scale after the digital sum
                names += [f"{out}.rram_scale", f"{out}.rram_offset"]
                arrays += [np.asarray(scale, np.float32).reshape(self.after[out]),
                           np.asarray(offset, np.float32).reshape(self.after[out])]
                continue
            shape = [1] * weights[i].ndim
            shape[axis] = -1
            arrays[i] = (weights[i] * scale.reshape(shape)).astype(np.float32)
            names.append(f"{out}.rram_offset")
            arrays.append(np.asarray(offset, np.float32))
        return names, arrays

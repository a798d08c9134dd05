"""Targets measured on the fault-free deployed model, for layers without a recorded BN target
(a model whose exporter folded its BatchNorms, e.g. ``torch.onnx.export`` in eval mode, or one
without BN at all): each calibrated layer's per-channel output mean and variance on the same
calibration images the chips are calibrated on (``BNTarget.measured``). A chip is then brought
back to what the fault-free model computes on those images, where a BN target brings it back to
the training statistics BN recorded."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import RuntimeInputError
from .stream import CalibrationImages, _Moments
from .targets import BNTarget

MEASURE_BATCH = 128  # images per run: every calibrated layer's output is kept for a batch


def calibrated_layers(model: onnx.ModelProto, weight_names: list[str]) -> list[str]:
    """The output tensors of the mapped Conv and Gemm layers (weights in ``weight_names``), in
    network order: the layers calibration measures when the model records no BN target."""
    names = set(weight_names)
    return [n.output[0] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in names and n.output]


def measured_targets(model_bytes: bytes, layers: list[str], calibration: CalibrationImages, session, *,
                     fixed: int | None = None) -> dict[str, BNTarget]:
    """{layer: its measured target}: the complete fault-free model (``model_bytes``, weights
    included) run on the calibration images in batches (of the model's own size where it fixes
    one, the padding left out), each layer's output reduced per image and channel and merged
    across batches in float64 (``_Moments``, as the streamed statistics)."""
    if calibration is None or not len(calibration):
        raise RuntimeInputError("calibration: no calibration images to measure the targets on")
    if not layers:
        raise RuntimeInputError("calibration: the model has no mapped Conv or Gemm layer to calibrate")
    m = onnx.ModelProto.FromString(model_bytes)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                          for name in layers if name not in known)
    sess = session(m.SerializeToString())
    moments = {name: _Moments() for name in layers}
    n, step = len(calibration), int(fixed or MEASURE_BATCH)
    for start in range(0, n, step):
        stop = min(start + step, n)
        for name, y in zip(layers, sess.run(layers, calibration.feed(start, stop, fixed))):
            y = np.asarray(y)[:stop - start]
            if y.ndim > 2:  # a Conv: each image's mean and variance over its positions
                flat = y.reshape(len(y), y.shape[1], -1)
                moments[name].add(flat.mean(2, dtype=np.float64), flat.var(2, dtype=np.float64))
            else:  # a Gemm: one value per image and channel
                moments[name].add(y.astype(np.float64), None)
    return {name: BNTarget.measured(*moments[name].result()) for name in layers}

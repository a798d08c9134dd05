"""Per-chip calibration in onnxruntime (issue 12): the in-graph batch statistics of
runtime/calibration.stats_model against PyTorch's train-mode BN re-estimation."""
import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

import passes
from runtime.artifact.deployed import append_initializers
from runtime.calibration import BNTarget, ChipCalibrator
from runtime.metadata import BN_TARGETS_KEY
from toolchain.calibrate import calibrate_bn
from toolchain.recalibrate import bn_modules


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def _folded(model: nn.Module, path) -> onnx.ModelProto:
    torch.onnx.export(model.eval(), torch.zeros(1, 3, 8, 8), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False, do_constant_folding=False)
    return passes.run(onnx.load(str(path)), "standard", verify="end").model


def _targets(model: onnx.ModelProto) -> dict:
    import json

    meta = {p.key: p.value for p in model.metadata_props}
    return {k: BNTarget.from_dict(v) for k, v in json.loads(meta[BN_TARGETS_KEY]).items()}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def _calibrate(folded: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """What the runtime does per chip (ChipCalibrator): the Conv/Gemm weights are the chip's,
    appended per chip to a base model without them."""
    layers = [n for n in folded.graph.node if n.op_type in ("Conv", "Gemm")]
    names = [n.input[1] for n in layers]
    inits = {t.name: t for t in folded.graph.initializer}
    weights = [onnx.numpy_helper.to_array(inits[w]) for w in names]
    base = onnx.ModelProto()
    base.CopyFrom(folded)
    kept = [t for t in base.graph.initializer if t.name not in names]
    del base.graph.initializer[:]
    base.graph.initializer.extend(kept)
    session = lambda data: ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # noqa: E731
    cal = ChipCalibrator(base, names, [w.shape for w in weights], _targets(folded), {"x": x}, session)
    out_names, arrays = cal.evaluated(weights, cal.measure(weights))
    return onnx.ModelProto.FromString(append_initializers(cal.eval_base, out_names, arrays))


def _biased(model: nn.Module, n: int) -> None:
    """PyTorch stores the unbiased batch variance; the graph normalises with the biased one."""
    for _, m in bn_modules(model):
        m.running_var.mul_((n - 1) / n)


def test_fold_bn_records_every_folded_target(tmp_path):
    torch.manual_seed(0)
    folded = _folded(Net(), tmp_path / "n.onnx")
    targets = _targets(folded)
    assert len(targets) == 2 and all(len(t.gamma) in (8, 6) for t in targets.values())
    convs = [n.output[0] for n in folded.graph.node if n.op_type == "Conv"]
    assert sorted(targets) == sorted(convs)


def test_calibration_on_a_fault_free_chip_reproduces_the_folded_model(tmp_path):
    """BN statistics equal to the calibration batch's own: calibration must change nothing
    (tolerance 1e-4 relative: float32 mean/variance over 32 x 8 x 8 values)."""
    torch.manual_seed(1)
    net = Net()
    x = torch.randn(32, 3, 8, 8) * 1.5 + 0.3
    calibrate_bn(net, x)
    _biased(net, 32 * 8 * 8)
    folded = _folded(net, tmp_path / "n.onnx")
    xs = x.numpy()
    ref, got = _run(folded, xs), _run(_calibrate(folded, xs), xs)
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_calibration_on_a_faulty_chip_equals_pytorchs_reestimation(tmp_path):
    """Zero 30% of the weights (SA1): the graph's calibration gives PyTorch's train-mode BN
    re-estimation on the same faulty model (the reference of `rram eval --calibrate`)."""
    torch.manual_seed(2)
    net = Net()
    folded = _folded(net, tmp_path / "n.onnx")  # the deployed model, BN statistics from init
    x = torch.randn(64, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(m.weight.shape, generator=gen) < 0.3 for name, m in
             (("c1", net.c1), ("c2", net.c2), ("fc", net.fc))}
    with torch.no_grad():
        for name, mask in masks.items():
            getattr(net, name).weight.masked_fill_(mask, 0.0)
    # the same cells stuck in the deployed (folded) weights: SA1 reads 0 whatever the scale
    inits = {t.name: t for t in folded.graph.initializer}
    for node, mask in zip([n for n in folded.graph.node if n.op_type in ("Conv", "Gemm")], masks.values()):
        w = onnx.numpy_helper.to_array(inits[node.input[1]]).copy()
        w[mask.numpy()] = 0.0
        inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(w, node.input[1]))
    calibrate_bn(net, x)
    _biased(net, 64 * 8 * 8)
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    got = _run(_calibrate(folded, x.numpy()), x.numpy())
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))

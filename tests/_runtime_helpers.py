"""Artifacts for the runtime tests, built with the real quantizer (`rram quantize`,
runtime.quantize) from small torch models exported to ONNX."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from runtime.crossbar import DeviceConfig
from runtime.metadata import Normalization
from runtime.quantize import quantize_to_folder

from conftest import write_test_batch, x86_cpu_flags

NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    m = TinyNet()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.1, 0.1)
        m.bn1.running_var.uniform_(0.5, 1.5)
    return m.eval()


def export_torch(module, sample, path: str | os.PathLike) -> onnx.ModelProto:
    """Float ONNX from a torch module in eval mode (legacy exporter: folds BN into convs)."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and folding notices
        torch.onnx.export(module, sample, str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
                          opset_version=17)
    return onnx.load(str(path))


def quantize_onnx(model: onnx.ModelProto, out: str | os.PathLike, device: DeviceConfig, *,
                  normalization: Normalization | None = None, bn_rate: float | None = None) -> Path:
    """`rram quantize` on a float model, with the metadata `rram export` would have written."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if normalization is not None:
        model.metadata_props.add(key="rram.normalization", value=normalization.to_metadata())
    if bn_rate is not None:
        model.metadata_props.add(key="rram.bn_rate", value=json.dumps(bn_rate))
    quantize_to_folder(model, out, device)
    return Path(out)


def make_artifact(folder: Path, device: DeviceConfig, *, seed: int = 0, bn_rate: float | None = None,
                  size: int = 32) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    float_path = folder.parent / f".{folder.name}.float.onnx"
    onx = export_torch(tiny_model(seed), torch.zeros(1, 3, size, size), float_path)
    float_path.unlink()
    return quantize_onnx(onx, folder, device, normalization=NORM, bn_rate=bn_rate)


def bn_artifact(folder: Path, seed: int = 0, model: nn.Module | None = None, bn_rate: float | None = None) -> Path:
    """A model (default the tiny one) through export (BN kept), the standard passes (fold-bn
    records the BN targets) and quantize (`paper`): an artifact whose periphery can be calibrated."""
    import tempfile

    import passes
    from runtime.crossbar import preset

    with tempfile.TemporaryDirectory(prefix="rram-bn-artifact-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        path = Path(tmp) / "float.onnx"  # not beside the artifact: a multi-rate root holds folders only
        torch.onnx.export(model if model is not None else tiny_model(seed), torch.zeros(1, 3, 32, 32), str(path),
                          dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17,
                          do_constant_folding=False)
        folded = passes.run(onnx.load(str(path)), "standard").model
    return quantize_onnx(folded, folder, preset("paper"), normalization=NORM, bn_rate=bn_rate)


def make_images(n: int = 64, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images labelled by the fault-free deployed model itself would make 100% clean; we
    label them by the float tiny model so the clean accuracy is high but not trivially exact."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - 0.5) / 0.25
    with torch.no_grad():
        labels = tiny_model().eval()(x).argmax(1).numpy().astype(np.int64)
    return images, labels


# test_runtime.py imports the runtime tests' CIFAR writer from here; it is conftest's single one.
write_cifar_batches = write_test_batch



def int8_kernels_exact() -> bool:
    """onnxruntime's u8s8 int8 kernels add exactly on x86 only with VNNI; AVX2-only CPUs add
    products in saturating int16 pairs (docs/runtime.md), so int8-vs-fp32 closeness holds only there."""
    flags = x86_cpu_flags()
    return flags is None or bool(flags & {"avx512_vnni", "avx_vnni"})


def self_labelled_images(art, n: int = 64, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Images labelled by the artifact's fault-free model itself: its clean accuracy is 100%, so
    every drop a faulty chip causes shows (and faulty chips differ from each other)."""
    from runtime.artifact import DeployedModel
    from runtime.engine import Engine

    images, _ = make_images(n, seed=seed)
    engine = Engine(DeployedModel.load(art), images, np.zeros(n, np.int64))
    return images, engine.session().run(None, {engine.feed_name: engine.feed})[0].argmax(1)

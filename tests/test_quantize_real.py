"""The deployable (QDQ) ResNet20 against the float one on real CIFAR-10 test images (slow: needs
../shared or RRAM_DATA / RRAM_WEIGHTS)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from runtime.artifact import load_map
from runtime.crossbar import PRESETS
from runtime.quantize import quantize_to_folder

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
DATA = Path(os.environ.get("RRAM_DATA", SHARED / "data" / "cifar10-jpeg"))
WEIGHTS = Path(os.environ.get("RRAM_WEIGHTS", SHARED / "models")) / "resnet20-12fca82f.th"
STRIDE = 33  # ~300 images spread over all classes (the split is sorted by class)

pytestmark = pytest.mark.slow


def session(path):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    if not DATA.is_dir() or not WEIGHTS.is_file():
        pytest.fail(f"slow test needs {DATA} and {WEIGHTS}")
    from toolchain.checkpoints import load_checkpoint
    from toolchain.data import load_split, normalize, to_float_nchw

    ckpt = load_checkpoint(WEIGHTS)
    path = tmp_path_factory.mktemp("r20") / "resnet20.onnx"
    torch.onnx.export(ckpt.build(), torch.zeros(1, 3, 32, 32), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}})
    split = load_split(DATA, "test")
    images, labels = split.images[::STRIDE], split.labels[::STRIDE]
    assert len(np.unique(labels)) == 10
    x = normalize(to_float_nchw(torch.from_numpy(np.ascontiguousarray(images))), ckpt.normalization).numpy()
    return path, x, labels


def test_paper_deployable_model_matches_float_on_real_images(resnet20, tmp_path):
    path, x, labels = resnet20
    out = tmp_path / "deploy"
    report = quantize_to_folder(path, out, PRESETS["paper"])
    assert report["total"]["layers"] == 20  # 19 convs (BN folded) + the classifier
    ref = session(path).run(None, {"input": x})[0]
    got = session(out / "model.onnx").run(None, {"input": x})[0]
    # within the quantisation error: 7-bit magnitudes per column, ~42 dB weight SQNR
    rel = np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref ** 2))
    assert rel < 0.05, rel
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.97
    acc_ref, acc_got = np.mean(ref.argmax(1) == labels), np.mean(got.argmax(1) == labels)
    assert acc_ref > 0.7 and abs(acc_got - acc_ref) <= 0.02

    # the map is the deployed model: the float model with the decoded weights gives the same logits
    cmap = load_map(out)
    float_model = onnx.load(path)
    decoded = {layer.name.removesuffix("__q"): layer.float_weight(cmap.device) for layer in cmap.layers}
    for t in float_model.graph.initializer:
        if t.name in decoded:
            t.CopyFrom(numpy_helper.from_array(decoded[t.name], t.name))
    sub = tmp_path / "substituted.onnx"
    onnx.save(float_model, sub)
    np.testing.assert_allclose(session(sub).run(None, {"input": x})[0], got, rtol=1e-4, atol=1e-4)

"""Per-chip calibration streamed in batches (issue 33, bounded memory): beyond
``CALIBRATION_BATCH`` images, or with a model that fixes its batch size, the statistics are
measured one layer level per pass over the images (runtime/calibration.Statistics); the result is
the one-batch result to float rounding, in fp32 and int8."""
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import passes
from runtime.artifact import DeployedModel
from runtime.calibration import CALIBRATION_BATCH, Statistics
from runtime.crossbar import preset
from runtime.engine import Engine
from runtime.faults import run_seed, sample_chip

from _runtime_helpers import NORM, quantize_onnx
from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


class LevelNet(nn.Module):
    """Four calibrated layers on three levels: c1; then c2 and the shortcut sc, both reading c1's
    output (one level, measured in one pass); then c3 on c2; a residual sum and an uncalibrated fc."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.sc, self.bs = nn.Conv2d(8, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(x)))
        y = torch.relu(self.b3(self.c3(y)) + self.bs(self.sc(x)))
        return self.fc(y.mean((2, 3)))


def _net() -> LevelNet:
    torch.manual_seed(3)
    net = LevelNet()
    with torch.no_grad():
        for bn in (net.b1, net.b2, net.bs, net.b3):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return net.eval()


def _artifact(folder: Path, fixed: int | None = None) -> Path:
    """LevelNet through export (BN kept), the standard passes and quantize (`paper`); ``fixed``:
    exported for exactly that batch size."""
    dynamic = None if fixed else {"input": {0: "n"}, "logits": {0: "n"}}
    with tempfile.TemporaryDirectory(prefix="rram-stream-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "float.onnx"
        torch.onnx.export(_net(), torch.zeros(fixed or 1, 3, 16, 16), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"], dynamic_axes=dynamic,
                          opset_version=17, do_constant_folding=False)
        folded = passes.run(onnx.load(str(path)), "standard").model
    return quantize_onnx(folded, folder, preset("paper"), normalization=NORM)


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {"dynamic": _artifact(root / "dyn"), "fixed": _artifact(root / "fixed", fixed=16)}


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, n)


IMAGES, LABELS = _images(16, 0)
CALIB = _images(48, 1)[0]      # int8 activation ranges
CALIBRATE = _images(72, 2)[0]  # per-chip calibration images


def _engine(art, precision, **kw):
    extra = {"calibration": CALIB} if precision == "int8" else {}
    return Engine(DeployedModel.load(art), IMAGES, LABELS, precision=precision, calibrate=CALIBRATE,
                  threads=1, **extra, **kw)


def _chip(engine):
    cmap = engine.model.cmap
    return engine.weights(sample_chip(cmap.cell_count(), 0.2, 0.0, run_seed(0, 0.2, 0.0, 0)))


def _assert_same(a: dict, b: dict, rtol=1e-5):
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        for x, y in zip(a[key], b[key]):  # scale, offset
            assert x.shape == y.shape
            assert np.allclose(y, x, rtol=rtol, atol=1e-6 * np.max(np.abs(x))), key


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("batch", [1, 16, 71])
def test_streamed_calibration_equals_the_one_batch(arts, precision, batch):
    """72 images streamed in batches of 1, 16 (a short last batch) or 71 give the scales and
    offsets of one batch of 72 within 1e-5 relative; three levels, three passes."""
    one = _engine(arts["dynamic"], precision)
    streamed = _engine(arts["dynamic"], precision, calibrate_batch=batch)
    assert not one.calibrator.stats.streamed and streamed.calibrator.stats.streamed
    assert streamed.calibrator.calibration.images.dtype == np.uint8  # normalised one batch at a time
    w = _chip(one)
    a, b = one.calibrator.measure(w), streamed.calibrator.measure(w)
    _assert_same(a, b)
    assert [layers for _, layers, _ in streamed.calibrator.stats._levels] == [
        [streamed.calibrator.order[0]], streamed.calibrator.order[1:3], [streamed.calibrator.order[3]]]
    # the evaluated chip: the same accuracy either way
    assert one.chip_accuracy(sample_chip(one.model.cmap.cell_count(), 0.2, 0.0, run_seed(0, 0.2, 0.0, 0))) == \
        streamed.chip_accuracy(sample_chip(one.model.cmap.cell_count(), 0.2, 0.0, run_seed(0, 0.2, 0.0, 0)))


def test_up_to_a_batch_is_one_batch_as_before():
    """Today's numbers are kept: up to CALIBRATION_BATCH images run as one batch through the
    in-graph statistics (``stats_model``), unchanged."""
    assert CALIBRATION_BATCH == 2048
    base = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    stats = Statistics(base, {}, [], {"x": np.zeros((CALIBRATION_BATCH, 1), np.float32)}, None)
    assert not stats.streamed
    stats = Statistics(base, {}, [], {"x": np.zeros((CALIBRATION_BATCH + 1, 1), np.float32)}, None)
    assert stats.streamed


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_streamed_passes_given_the_one_batch_normalisers_reproduce_it(arts, precision):
    """The streamed passes normalise each layer with the statistics over all the images; given
    the one batch's own (float32, in-graph), they give its numbers to float rounding on every
    layer. (End to end, the streamed statistics are float64 merges: in int8, a last-bit
    difference in a normaliser can move an activation across a rounding step, which deep
    networks amplify: docs/runtime.md.)"""
    one = _engine(arts["dynamic"], precision)
    streamed = _engine(arts["dynamic"], precision, calibrate_batch=10)
    dtype = np.float32 if precision == "fp32" else np.int8
    w = {n: np.asarray(x, dtype) for n, x in zip(one.calibrator.weight_names, _chip(one))}
    a = one.calibrator.stats(w)
    b = streamed.calibrator.stats.stream(w, normalisers=a)
    for layer in a:
        for x, y in zip(a[layer], b[layer]):
            assert np.allclose(y, x, rtol=1e-5, atol=1e-6 * np.max(np.abs(x)))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_model_that_fixes_its_batch_size_is_calibrated_in_its_batches(arts, precision):
    """Refused before ("per-chip calibration runs all calibration images as one batch, and the
    model fixes its batch size"): now 72 images run in batches of the model's 16, the last one
    padded and the padding left out, giving the dynamic model's one-batch numbers."""
    fixed = _engine(arts["fixed"], precision)
    stats = fixed.calibrator.stats
    assert stats.fixed == 16 and stats.batch == 16 and stats.streamed
    one = _engine(arts["dynamic"], precision)
    w = _chip(one)
    _assert_same(one.calibrator.measure(w), fixed.calibrator.measure(w))
    chip = sample_chip(one.model.cmap.cell_count(), 0.2, 0.0, run_seed(0, 0.2, 0.0, 0))
    assert fixed.chip_accuracy(chip) == one.chip_accuracy(chip)

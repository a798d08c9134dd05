"""Per-chip calibration (issue 12), PyTorch side: `rram eval --sa1 P --calibrate N`, the reference
that the fault campaign is checked against, and the seed-only choice of calibration images."""
import json

import numpy as np
import pytest
import torch

from runtime.calibration import calibration_indices
from runtime.errors import RuntimeInputError
from toolchain.calibrate import calibrate_bn, restored_bn
from toolchain.cli import main
from toolchain.models import ModelSpec, build_model
from toolchain.recalibrate import bn_stats_of

from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)
SPEC = ModelSpec("resnet20", 0.25)


def test_calibration_images_depend_on_the_seed_only():
    a = calibration_indices(1000, 64, seed=3)
    assert np.array_equal(a, calibration_indices(1000, 64, seed=3))
    assert len(np.unique(a)) == 64 and a.min() >= 0 and a.max() < 1000 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, calibration_indices(1000, 64, seed=4))
    for bad in (0, 1001):
        with pytest.raises(RuntimeInputError, match=f"--calibrate {bad}: choose between 1 and the 1000"):
            calibration_indices(1000, bad, seed=0)


def test_calibrate_bn_sets_batch_statistics_and_restored_bn_puts_them_back():
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    before = bn_stats_of(model)
    x = torch.randn(32, 3, 32, 32) * 2 + 1
    with restored_bn(model):
        calibrate_bn(model, x)
        # the first BN sees conv1's output of exactly these images: its stats are that batch's
        z = model.conv1(x)
        assert torch.allclose(model.bn1.running_mean, z.mean((0, 2, 3)), atol=1e-5)
        assert torch.allclose(model.bn1.running_var, z.var((0, 2, 3), unbiased=True), rtol=1e-4)
        assert not model.training
    after = bn_stats_of(model)
    assert all(torch.equal(before[k], after[k]) for k in before) and model.bn1.momentum == 0.1


@pytest.fixture
def data(coloured_cifar):
    return coloured_cifar(test=64)


@pytest.fixture
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(SPEC)


def _eval(capsys, *args):
    code = main(["eval", *map(str, args), "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else out.err.strip())


def test_eval_calibrate_is_seeded_and_recorded(data, ckpt, capsys):
    base = ["--checkpoint", ckpt, "--data", data, "--no-cache", "--sa1", "0.2", "--runs", "2", "--calibrate", "16"]
    code, a = _eval(capsys, *base)
    assert code == 0 and a["calibrate"] == 16 and len(a["accuracies"]) == 2
    assert _eval(capsys, *base)[1]["accuracies"] == a["accuracies"]
    code, plain = _eval(capsys, *base[:-2])
    assert code == 0 and plain["calibrate"] is None


@pytest.mark.parametrize("args, message", [
    (["--calibrate", "16"], "--calibrate re-estimates BN statistics on each simulated chip: give --sa1 too"),
    (["--sa1", "0.1", "--calibrate", "0"], "--calibrate"),
    (["--sa1", "0.1", "--calibrate", "100000"], "--calibrate 100000: choose between 1 and the"),
])
def test_eval_calibrate_bad_input_is_one_line(data, ckpt, capsys, args, message):
    code, err = _eval(capsys, "--checkpoint", ckpt, "--data", data, "--no-cache", *args)
    assert code == 2 and err.count("\n") == 0 and message in err


@pytest.mark.slow
def test_calibration_raises_accuracy_of_faulty_chips_on_real_images(shared_data, shared_resnet20, capsys):
    """The pretrained ResNet20 at 10% SA1: about 40% without, about 70% with per-chip calibration
    (10 chips, 2000 images: 39.6% -> 70.7%); here 3 chips on 500 images."""
    base = ["--model", "resnet20", "--checkpoint", shared_resnet20, "--data", shared_data,
            "--sa1", "0.1", "--runs", "3", "--images", "500"]
    _, plain = _eval(capsys, *base)
    _, calibrated = _eval(capsys, *base, "--calibrate", "256")
    assert calibrated["mean"] >= plain["mean"] + 0.15 and calibrated["mean"] >= 0.6

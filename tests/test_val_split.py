"""The validation split (issue 36; docs/RESULTS.md): one image in ten of the training split, fixed by
VAL_SEED, selectable as --split val, held out of training with --hold-out-val and of every
--calibrate draw."""
import hashlib
import json

import numpy as np
import pytest

from toolchain.cli import main
from toolchain.commands.common import calibration_pool
from toolchain.data import VAL_SEED, load_split, training_indices, validation_indices
from toolchain.training import LAST

from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)

# sha256 of CIFAR-10's 5,000 validation indices as little-endian int64 (docs/RESULTS.md): every choice
# made on the validation split depends on these; a numpy that drew other ones would fail here
CIFAR10_VAL_SHA256 = "d0ce07650e54774f7a5cb09ca9db2b8a41cd21c4a4adeb1d66f097b65a6315f5"


def test_the_cifar10_validation_split_is_pinned():
    val, rest = validation_indices(50000), training_indices(50000)
    assert VAL_SEED == 36 and len(val) == 5000 and len(rest) == 45000
    assert hashlib.sha256(val.astype("<i8").tobytes()).hexdigest() == CIFAR10_VAL_SHA256
    assert np.array_equal(np.union1d(val, rest), np.arange(50000)) and not np.intersect1d(val, rest).size
    assert np.all(np.diff(val) > 0) and np.all(np.diff(rest) > 0)
    # spread over the split (ImageFolder order is sorted by class): every tenth of it holds some
    assert all(300 < n < 700 for n in np.bincount(val // 5000))


@pytest.mark.parametrize("total", [0, 9, 10, 320, 1001])
def test_small_splits(total):
    val = validation_indices(total)
    assert len(val) == total // 10 and len(training_indices(total)) == total - total // 10


def test_split_val_loads_the_held_out_training_images(coloured_cifar):
    data = coloured_cifar()
    train, val = load_split(data, "train", use_cache=False), load_split(data, "val", use_cache=False)
    idx = validation_indices(len(train))
    assert len(val) == 32 and np.array_equal(val.images, train.images[idx])
    assert np.array_equal(val.labels, train.labels[idx])


def test_calibration_images_never_come_from_the_validation_split():
    val = set(validation_indices(50000).tolist())
    for seed in range(3):
        drawn = calibration_pool(50000, 2048, seed)
        assert len(set(drawn.tolist())) == 2048 and not val & set(drawn.tolist())
    assert np.array_equal(calibration_pool(50000, 256, 0), calibration_pool(50000, 256, 0))


def test_eval_takes_split_val(coloured_cifar, tiny_checkpoint, tmp_path, capsys):
    data = coloured_cifar()
    ckpt = tiny_checkpoint()
    assert main(["eval", str(ckpt), "--data", str(data), "--no-cache", "--split", "val", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "val" and out["images"] == 32
    assert out["provenance"]["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert main(["eval", str(ckpt), "--data", str(data), "--split", "holdout"]) == 2
    assert "invalid choice: 'holdout' (choose from 'test', 'val', 'train')" in capsys.readouterr().err


def test_hold_out_val_trains_on_the_rest_and_measures_each_epoch_on_val(coloured_cifar, tmp_path, capsys):
    data = coloured_cifar()
    out = tmp_path / "run"
    base = ["train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.2", "--epochs", "1",
            "--batch-size", "32", "--data", str(data), "--no-cache", "--out", str(out), "--json"]
    assert main([*base, "--hold-out-val"]) == 0
    log = json.loads(capsys.readouterr().out)
    entry = log["epochs"][0]
    assert log["config"]["hold_out_val"] is True
    assert "val_acc" in entry and "test_acc" not in entry
    assert entry["images"] == (320 - 32) // 32 * 32  # whole batches of the 288 training images left
    # a resume must keep it: the same folder without --hold-out-val is another run
    assert main([*base, "--resume", "--epochs", "1"]) != 0
    assert "hold_out_val=True, not False" in capsys.readouterr().err


def test_a_run_recorded_before_hold_out_val_resumes_without_it(coloured_cifar, tmp_path, capsys):
    import torch

    data = coloured_cifar()
    out = tmp_path / "old"
    base = ["train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.2", "--images", "64",
            "--eval-images", "32", "--batch-size", "32", "--data", str(data), "--no-cache", "--out", str(out)]
    assert main([*base, "--epochs", "1"]) == 0
    raw = torch.load(out / LAST, weights_only=True)
    del raw["meta"]["config"]["hold_out_val"]  # as written before the option existed
    torch.save(raw, out / LAST)
    assert main([*base, "--epochs", "1", "--resume"]) == 0  # finished: nothing to do, no refusal
    assert "nothing to do" in capsys.readouterr().err


def test_recalibrate_leaves_the_validation_images_out_for_a_model_trained_without_them(
        coloured_cifar, tiny_checkpoint, tmp_path):
    """A checkpoint trained with --hold-out-val gets its BN statistics from the training split less
    the validation images (its accuracy there must not be optimistic); another one only when asked."""
    import torch

    from toolchain.checkpoints import load_checkpoint

    data = coloured_cifar()
    base = ["--bn-rate", "0", "--data", str(data), "--no-cache"]

    def recalibrated(ckpt, out, *extra):
        assert main(["recalibrate", str(ckpt), *base, "--out", str(tmp_path / out), *extra]) == 0
        return load_checkpoint(str(tmp_path / out / "recalibrated.pt"))

    plain = tiny_checkpoint()
    every, asked = recalibrated(plain, "every"), recalibrated(plain, "asked", "--hold-out-val")
    assert every.meta["recalibration"]["images"] == 320 and every.meta["recalibration"]["hold_out_val"] is False
    assert asked.meta["recalibration"]["images"] == 288 and asked.meta["recalibration"]["hold_out_val"] is True
    assert any(not torch.equal(a, b) for a, b in zip(every.bn_stats["0.0"].values(), asked.bn_stats["0.0"].values()))
    # trained with --hold-out-val (the record in its meta): held out without asking
    raw = torch.load(plain, weights_only=True)
    raw["meta"].setdefault("config", {})["hold_out_val"] = True
    torch.save(raw, tmp_path / "trained.pt")
    inherited = recalibrated(tmp_path / "trained.pt", "inherited")
    assert inherited.meta["recalibration"]["images"] == 288 and inherited.meta["recalibration"]["hold_out_val"] is True
    for a, b in zip(inherited.bn_stats["0.0"].values(), asked.bn_stats["0.0"].values()):
        assert torch.equal(a, b)
    # ... unless told otherwise: a recalibration made before this default reproduces exactly
    before = recalibrated(tmp_path / "trained.pt", "before", "--no-hold-out-val")
    assert before.meta["recalibration"]["images"] == 320 and before.meta["recalibration"]["hold_out_val"] is False
    for a, b in zip(before.bn_stats["0.0"].values(), every.bn_stats["0.0"].values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("hold_out", [False, True])
def test_the_pipeline_passes_train_hold_out_val(tmp_path, hold_out):
    """train.hold_out_val = true becomes rram train --hold-out-val; left at false, the step's settings
    are those recorded before the key existed (run folders stay up to date)."""
    from toolchain.pipeline.actions import commands
    from toolchain.pipeline.config import load_config
    from toolchain.pipeline.plan import Pipeline

    from conftest import make_cifar

    make_cifar(tmp_path / "data", per_batch=8, test=16)
    (tmp_path / "p.toml").write_text('out = "run"\ndata = "data"\n[model]\narch = "resnet20"\n'
                                     '[train]\ndrop_rate = 0.1\nepochs = 1\n'
                                     + ("hold_out_val = true\n" if hold_out else "")
                                     + "[recalibrate]\nrates = [0.0]\n[validate]\nsa1 = [0.0]\n")
    pipe = Pipeline(load_config(tmp_path / "p.toml"))
    step = next(s for s in pipe.steps if s.stage == "train")
    assert ("--hold-out-val" in commands(pipe, step)[0]) == hold_out
    assert ("hold_out_val" in step.settings) == hold_out

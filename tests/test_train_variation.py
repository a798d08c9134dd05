"""rram train --variation SIGMA [--programming-model M] (issue 37, "training for them"): each
weight's effective value perturbed as the chip's programming would perturb it, a fresh draw every
step from (seed, rank, epoch, step); zero = today's training; the spread; seeded and resumable;
recorded (a resume with another setting refused, old records resume as none); bad input."""
import json
import math

import pytest
import torch
import torch.nn as nn

from toolchain.checkpoints import load_checkpoint
from toolchain.cli import main
from toolchain.dropconnect import DropConnect, sample_sa1_masks, weight_modules
from toolchain.errors import UserError
from toolchain.models import ModelSpec
from toolchain.training import LAST, TrainConfig, train
from toolchain.variation import G_MAX, G_MIN, WeightNoise, _program, varied_chip_weights

from conftest import one_thread

SPEC = ModelSpec("resnet20", 0.25)
_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture
def data(coloured_cifar):
    return coloured_cifar()


def cfg(data, out, **kw):
    base = dict(spec=SPEC, drop_rate=0.1, epochs=1, out=str(out), data=str(data), batch_size=32,
                images=96, eval_images=32, use_cache=False, progress=False, device="cpu", lr=0.05)
    base.update(kw)
    return TrainConfig(**base)


def weights(out):
    return load_checkpoint(out / "model.pt").state_dict


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_error_has_the_spread_of_its_setting():
    """Every weight at half its column's top: the active plane's error is N(0, sigma) of the range
    (no clipping at 0.5 +- 4 sd), the idle plane's (at G_min) a normal clipped at 0, so
    (w' - w) / top has mean -sigma/sqrt(2 pi) and sd sigma sqrt(1 + 1/2 - 1/(2 pi))."""
    sigma = 0.05
    w = torch.full((200, 1000), 0.5)
    w[:, 0] = 1.0  # each row's (output channel's) top: 1
    err = WeightNoise(sigma, "additive", torch.Generator().manual_seed(0))(w)[:, 1:]
    assert err.mean().item() == pytest.approx(-sigma / math.sqrt(2 * math.pi), rel=0.02)
    assert err.std().item() == pytest.approx(sigma * math.sqrt(1.5 - 1 / (2 * math.pi)), rel=0.01)
    # lognormal (each plane programmed as the reference's): ln G of a cell at mid-range moves by sigma
    g = torch.full((200_000,), 0.5, dtype=torch.float32)
    big = G_MIN + _program(g, 0.1, "lognormal", torch.Generator().manual_seed(1)) * (G_MAX - G_MIN)
    assert torch.log(big / (G_MIN + 0.5 * (G_MAX - G_MIN))).std().item() == pytest.approx(0.1, rel=0.01)
    # a fresh draw per call, none for sigma 0
    gen = torch.Generator().manual_seed(2)
    noise = WeightNoise(sigma, "additive", gen)
    assert not torch.equal(noise(w), noise(w))
    assert torch.count_nonzero(WeightNoise(0.0, "additive", gen)(w)) == 0


def test_dropconnect_with_noise_keeps_its_masks_and_dropped_weights_and_passes_gradients():
    w = nn.Parameter(torch.randn(64, 50))
    plain = DropConnect(0.3, torch.Generator().manual_seed(5))(w)
    dc = DropConnect(0.3, torch.Generator().manual_seed(5), WeightNoise(0.05, "additive",
                                                                        torch.Generator().manual_seed(6)))
    noisy = dc(w)
    dropped = plain == 0
    assert torch.equal(noisy[dropped], plain[dropped])  # the same mask; a dropped weight stays 0
    assert (noisy[~dropped] != plain[~dropped]).float().mean() > 0.99
    noisy.sum().backward()  # straight-through: each kept weight's gradient 1, a dropped one's 0
    assert torch.equal(w.grad, (~dropped).float())
    assert torch.equal(dc.eval()(w), w)  # evaluation: the stored weight


def test_zero_variation_is_todays_training_and_noise_is_seeded_and_resumable(data, tmp_path):
    today = train(cfg(data, tmp_path / "today"))
    zero = train(cfg(data, tmp_path / "zero", variation=0.0, programming_model="lognormal"))
    assert same(weights(tmp_path / "today"), weights(tmp_path / "zero"))
    assert today["config"] == zero["config"]  # the model recorded as the default: it shaped nothing
    assert zero["config"]["variation"] == 0.0 and zero["config"]["programming_model"] == "additive"
    a = train(cfg(data, tmp_path / "a", variation=0.05, epochs=2))
    train(cfg(data, tmp_path / "b", variation=0.05, epochs=2))
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))  # same seed, same weights
    assert a["config"]["variation"] == 0.05
    one = load_checkpoint(tmp_path / "a" / "model.pt").state_dict
    train(cfg(data, tmp_path / "c", variation=0.05, epochs=2, seed=1))
    assert not same(one, weights(tmp_path / "c"))  # another seed, other draws
    train(cfg(data, tmp_path / "d", variation=0.05, epochs=2, programming_model="wan2022"))
    assert not same(one, weights(tmp_path / "d"))

    def crash(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(data, tmp_path / "cut", variation=0.05, epochs=2), step_callback=crash)
    with pytest.raises(UserError, match="variation=0.05, not 0.1"):
        train(cfg(data, tmp_path / "cut", variation=0.1, epochs=2, resume=True))
    train(cfg(data, tmp_path / "cut", variation=0.05, epochs=2, resume=True))
    assert same(one, weights(tmp_path / "cut"))  # the resumed run drew the same noise


def test_noise_without_dropconnect_trains_other_weights(data, tmp_path):
    train(cfg(data, tmp_path / "plain", drop_rate=0.0))
    train(cfg(data, tmp_path / "noisy", drop_rate=0.0, variation=0.05))
    assert not same(weights(tmp_path / "plain"), weights(tmp_path / "noisy"))


def test_a_run_recorded_before_the_option_resumes_without_noise(data, tmp_path):
    out = tmp_path / "old"

    def crash(epoch, step):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(data, out, epochs=2), step_callback=crash)
    raw = torch.load(out / LAST, weights_only=True)
    for key in ("variation", "programming_model"):
        del raw["meta"]["config"][key]  # as written before --variation existed
    torch.save(raw, out / LAST)
    with pytest.raises(UserError, match="variation=0.0, not 0.02"):
        train(cfg(data, out, epochs=2, resume=True, variation=0.02))
    log = train(cfg(data, out, epochs=2, resume=True))
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]


@pytest.mark.parametrize("args, message", [
    (["--variation", "-0.1"], "programming variation must be a finite number >= 0"),
    (["--variation", "nan"], "programming variation must be a finite number >= 0"),
    (["--variation", "0.1", "--programming-model", "gauss"], "invalid choice"),
])
def test_bad_variation_one_line_nothing_written(data, tmp_path, capsys, args, message):
    code = main(["train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.1", "--epochs", "1",
                 "--data", str(data), "--no-cache", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()


def test_cli_records_the_setting_and_tests_each_epoch_on_a_varied_chip(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RRAM_PROGRESS_SECONDS", "1000")
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.1", "--epochs", "1",
                 "--train-images", "64", "--eval-images", "32", "--batch-size", "32", "--data", str(data),
                 "--no-cache", "--out", str(out), "--variation", "0.03", "--programming-model", "lognormal"]) == 0
    log = json.loads((out / "log.json").read_text())
    assert (log["config"]["variation"], log["config"]["programming_model"]) == (0.03, "lognormal")
    (entry,) = log["epochs"]
    assert (entry["test_variation"], entry["test_variation_model"]) == (0.03, "lognormal")
    assert "10% of weights stuck at 0, programming variation 0.03 lognormal" in capsys.readouterr().err


def test_the_epoch_test_chip_is_programmed_with_the_variation():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    masks = sample_sa1_masks(model, 0.2, torch.Generator().manual_seed(0))
    a = varied_chip_weights(model, masks, 0.05, "additive", torch.Generator().manual_seed(1))
    b = varied_chip_weights(model, masks, 0.05, "additive", torch.Generator().manual_seed(1))
    for name, m in weight_modules(model):
        assert torch.equal(a[name], b[name])  # seeded
        stuck = masks[name]
        assert stuck.any() and torch.count_nonzero(a[name][stuck]) == 0  # SA1 weights read 0
        # the others off their targets (a column's top stays when both its planes clip: 1 in 4)
        assert (a[name][~stuck] != m.weight[~stuck]).float().mean() > 0.85

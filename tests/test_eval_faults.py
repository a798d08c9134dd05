"""rram eval --sa1 (reference fault evaluation) and --rate-stats."""
import json

import pytest
import torch

from toolchain.cli import main
from toolchain.models import ModelSpec
from toolchain.recalibrate import bn_stats_of

from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)
SPEC = ModelSpec("resnet20", 0.25)


def with_rate_stats(c, m):
    """Statistics of BN rate 0.1 far from the model's own (so --rate-stats shows)."""
    c.bn_stats = {"0.1": {k: v * 3 + 0.5 for k, v in bn_stats_of(m).items()}}


@pytest.fixture
def data(coloured_cifar):
    return coloured_cifar(test=256)


@pytest.fixture
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(SPEC, with_rate_stats)


def ev(capsys, *args):
    code = main(["eval", *map(str, args), "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_sa1_runs_report_mean_std_min_max_and_are_reproducible(data, ckpt, capsys):
    base = ["--checkpoint", ckpt, "--data", data, "--no-cache", "--sa1", "0.3", "--runs", "3"]
    code, a = ev(capsys, *base, "--seed", "5")
    assert code == 0
    assert len(a["accuracies"]) == 3 and a["runs"] == 3 and a["images"] == 256
    assert a["accuracy"] == pytest.approx(a["mean"]) == pytest.approx(sum(a["accuracies"]) / 3)
    assert a["min"] == min(a["accuracies"]) and a["max"] == max(a["accuracies"])
    assert a["std"] >= 0
    _, b = ev(capsys, *base, "--seed", "5")
    assert a["accuracies"] == b["accuracies"]
    _, c = ev(capsys, *base, "--seed", "6")
    assert c["accuracies"] != a["accuracies"]


def test_plain_eval_keeps_its_keys_and_sa1_zero_equals_it(data, ckpt, capsys):
    _, plain = ev(capsys, "--checkpoint", ckpt, "--data", data, "--no-cache")
    assert {"accuracy", "images"} <= set(plain) and "mean" not in plain
    _, zero = ev(capsys, "--checkpoint", ckpt, "--data", data, "--no-cache", "--sa1", "0", "--runs", "2")
    assert zero["accuracies"] == [plain["accuracy"]] * 2 and zero["std"] == 0


def test_rate_stats_selects_recalibrated_statistics(data, ckpt, capsys):
    args = ["--checkpoint", ckpt, "--data", data, "--no-cache", "--batch-size", "256"]
    import toolchain.commands.eval as ev_mod

    seen = []
    real = ev_mod.accuracy
    ev_mod.accuracy = lambda model, *a, **k: seen.append(model.bn1.running_var.clone()) or real(model, *a, **k)
    try:
        ev(capsys, *args)
        ev(capsys, *args, "--rate-stats", "0.1")
    finally:
        ev_mod.accuracy = real
    assert not torch.equal(seen[0], seen[1])
    code, err = ev(capsys, *args, "--rate-stats", "0.2")
    assert code == 2 and "no BN statistics for rate 0.2" in err


@pytest.mark.parametrize("flag, value, allowed", [("--sa1", "1.5", "[0, 1]"), ("--sa1", "-0.1", "[0, 1]"),
                                                  ("--rate-stats", "1.0", "[0, 1)"), ("--rate-stats", "2", "[0, 1)")])
def test_bad_rates(data, ckpt, capsys, flag, value, allowed):
    # a chip's SA1 rate may be 1 (as in rram validate); a recalibration rate may not
    code, err = ev(capsys, "--checkpoint", ckpt, "--data", data, "--no-cache", f"{flag}={value}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and allowed in err


@pytest.mark.slow
def test_pretrained_resnet20_collapses_under_sa1(capsys, monkeypatch, shared_data, shared_resnet20):
    monkeypatch.setenv("RRAM_WEIGHTS", str(shared_resnet20.parent))
    # the whole test split: the ImageFolder order is sorted by class
    code, r = ev(capsys, "--checkpoint", "resnet20-akamaster", "--data", shared_data,
                 "--sa1", "0.1", "--runs", "1", "--seed", "0")
    assert code == 0 and r["images"] == 10000
    assert r["max"] < 0.7  # 81% fault-free: 10% SA1 costs a lot without fault-aware training

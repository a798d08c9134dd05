"""BN re-alignment (UpdateVar): per-rate statistics, cumulative averages, the CLI."""
import pytest
import torch

from toolchain.checkpoints import load_checkpoint
from toolchain.cli import main
from toolchain.data import CIFAR10_NORM, iterate_batches, load_split
from toolchain.models import ModelSpec, build_model
from toolchain.recalibrate import bn_stats_of, recalibrate_bn

from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)
SPEC = ModelSpec("resnet20", 0.25)


@pytest.fixture(scope="module")
def data(coloured_cifar):
    return coloured_cifar()


@pytest.fixture(scope="module")
def split(data):
    return load_split(data, "train", use_cache=False)


def model():
    torch.manual_seed(0)
    return build_model(SPEC).eval()


def test_rate_zero_gives_the_exact_cumulative_statistics(split):
    m = model()
    stats = recalibrate_bn(m, split, CIFAR10_NORM, 0.0, batch_size=64)
    # cumulative average over equal batches == mean of the per-batch means of bn1's input
    means = [m.conv1(x).mean(dim=(0, 2, 3)) for x, _ in
             iterate_batches(split, 64, CIFAR10_NORM)]
    with torch.no_grad():
        assert torch.allclose(stats["bn1.running_mean"], torch.stack(means).mean(0), atol=1e-5)


def test_recalibration_changes_stats_depends_on_rate_and_leaves_the_model(split):
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s0 = recalibrate_bn(m, split, CIFAR10_NORM, 0.0, batch_size=64, seed=1)
    s3 = recalibrate_bn(m, split, CIFAR10_NORM, 0.3, batch_size=64, seed=1)
    s3b = recalibrate_bn(m, split, CIFAR10_NORM, 0.3, batch_size=64, seed=1)
    s3c = recalibrate_bn(m, split, CIFAR10_NORM, 0.3, batch_size=64, seed=2)
    assert set(s0) == set(bn_stats_of(m)) and len(s0) == 2 * 19
    assert not torch.allclose(s0["layer1.0.bn1.running_var"], before["layer1.0.bn1.running_var"])
    # dropping 30% of the unscaled weights shrinks the pre-BN variance
    assert s3["layer1.0.bn1.running_var"].mean() < 0.9 * s0["layer1.0.bn1.running_var"].mean()
    assert all(torch.equal(s3[k], s3b[k]) for k in s3)  # same seed, same numbers
    assert not torch.equal(s3["layer3.2.bn2.running_var"], s3c["layer3.2.bn2.running_var"])
    after = m.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before) and not m.training
    assert not any("parametrizations" in k for k in after)


def test_batches_limits_the_pass(split):
    m = model()
    full = recalibrate_bn(m, split, CIFAR10_NORM, 0.1, batch_size=32)
    two = recalibrate_bn(m, split, CIFAR10_NORM, 0.1, batch_size=32, batches=2)
    assert not torch.equal(full["bn1.running_mean"], two["bn1.running_mean"])


def trained_with_drop_connect(c, m):
    c.meta = {"drop_rate": 0.2}


def test_cli_recalibrate_stores_each_rate(data, tmp_path, capsys, tiny_checkpoint):
    ck = tiny_checkpoint(SPEC, trained_with_drop_connect)
    assert main(["recalibrate", str(ck), "--rates", "0,0.1,0.3", "--data", str(data), "--no-cache",
                 "--batches", "2", "--batch-size", "32", "--out", str(tmp_path / "r")]) == 0
    out = load_checkpoint(tmp_path / "r" / "recalibrated.pt")
    assert sorted(out.bn_stats) == ["0.0", "0.1", "0.3"]
    assert not torch.equal(out.bn_stats["0.0"]["bn1.running_var"], out.bn_stats["0.3"]["bn1.running_var"])
    assert out.meta["recalibration"]["rates"] == ["0.0", "0.1", "0.3"]
    # state dict (training statistics) unchanged
    src = load_checkpoint(ck)
    assert all(torch.equal(src.state_dict[k], out.state_dict[k]) for k in src.state_dict)


@pytest.mark.parametrize("rates", ["0,1.0", "-0.2", "0.1,abc", "1.5"])
def test_cli_bad_rates(data, tmp_path, capsys, rates, tiny_checkpoint):
    ck = tiny_checkpoint(SPEC)
    code = main(["recalibrate", str(ck), f"--rates={rates}", "--data", str(data), "--no-cache",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("rram: error: ")
    assert not (tmp_path / "r").exists()


def test_cli_recalibrate_prints_progress_lines_off_a_terminal(data, tmp_path, capsys, tiny_checkpoint, monkeypatch):
    """`make demo > log` showed nothing for 2.3 minutes of recalibration (issue 35)."""
    import runtime.progress

    monkeypatch.setattr(runtime.progress, "PROGRESS_SECONDS", 0.0)
    ck = tiny_checkpoint(SPEC, trained_with_drop_connect)
    assert main(["recalibrate", str(ck), "--bn-rate", "0,0.1", "--data", str(data), "--no-cache",
                 "--batches", "2", "--batch-size", "32", "--out", str(tmp_path / "r")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recalibrate p'=")]
    assert [line.split(":")[0] + " " + line.split()[2] for line in lines] == \
        ["recalibrate p'=0 1/2", "recalibrate p'=0 2/2", "recalibrate p'=0.1 1/2", "recalibrate p'=0.1 2/2"]

"""`rram eval --sa1 P --place` (toolchain/placement.py): the PyTorch reference of a placed chip,
written apart from the runtime's placement and checked against it: the same layout of every
layer, the same loss on the same tile, the same weight error and accuracy in distribution (on
real images: slow); a fault-free chip is plain eval; the placed loss is never above the fixed
mapping's on any tile; the same seed gives the same numbers."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from runtime.crossbar import decode, preset
from runtime.faults import OK, SA1
from runtime.placement import place_tile
from toolchain.cli import main
from toolchain.models import ModelSpec
from toolchain.placement import TILE_ROWS, PlacedReferenceChips, layer_layouts, place_tile_reference

from conftest import one_line_error, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def uneven_bn(c, m):
    """BN statistics far from the identity, some gammas negative: the fold must show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.1)
                mod.weight.copy_(torch.rand(n, generator=g) * 3 - 1)
    c.state_dict = m.state_dict()


@pytest.fixture
def model_and_art(tiny_checkpoint, tmp_path):
    """A ResNet20 (width 0.25: layers of one and of two row bands) and its artifact through the
    standard flow (BN folded, `paper`)."""
    from toolchain.checkpoints import load_checkpoint

    from _runtime_helpers import bn_artifact

    model = load_checkpoint(tiny_checkpoint(ModelSpec("resnet20", 0.25), uneven_bn)).build().eval()
    return model, bn_artifact(tmp_path / "art", model=model)


def test_each_layer_is_laid_out_as_the_runtimes_map(model_and_art):
    from runtime.artifact import DeployedModel

    model, art = model_and_art
    cmap = DeployedModel.load(art).cmap
    layouts = layer_layouts(model, torch.zeros(1, 3, 32, 32))
    assert len(layouts) == len(cmap.layers)
    assert any(lay.bands > 1 for lay in layouts) and any(lay.matrix.shape[0] % TILE_ROWS for lay in layouts)
    for lay, layer in zip(layouts, cmap.layers):
        deployed = decode(layer.levels, cmap.device) * layer.scales.astype(np.float64)[None, :]
        assert deployed.shape == lay.matrix.shape, lay.name
        # the same weight in every cell, up to the quantisation step (BN fold and its sign included)
        assert (np.abs(deployed - lay.matrix) <= 0.5001 * layer.scales[None, :]).all(), lay.name


def test_the_placed_chips_lose_what_the_runtimes_lose(model_and_art):
    """Other chips, same device: the relative squared weight error of the fixed mapping and of the
    placement agree in distribution (three combined standard errors)."""
    from runtime.artifact import DeployedModel
    from runtime.chips import PlacedChips, RandomChips

    model, art = model_and_art
    cmap, runs = DeployedModel.load(art).cmap, 8
    runtime = PlacedChips(cmap, RandomChips.of(cmap, 0.3, 0.0, 0))
    reference = PlacedReferenceChips(layer_layouts(model, torch.zeros(1, 3, 32, 32)), 0.3, 0)
    ours = [runtime.sample(r).info for r in range(runs)]
    ref = [reference.sample(r).info for r in range(runs)]
    for key in ("weight_error_fixed", "weight_error_placed"):
        a, b = np.array([x[key] for x in ours]), np.array([x[key] for x in ref])
        se = math.sqrt(a.var(ddof=1) / runs + b.var(ddof=1) / runs)
        assert abs(a.mean() - b.mean()) <= 3 * se, (key, a, b)
    assert np.mean([x["weight_error_placed"] for x in ref]) < 0.2 * np.mean([x["weight_error_fixed"] for x in ref])


def test_on_one_tile_the_reference_and_the_runtime_lose_the_same():
    """The same tile, SA1 only, integers on the `paper` device: the runtime's decoder-based error
    and the reference's dropped weight, for the fixed mapping and placed."""
    device, rng = preset("paper"), np.random.default_rng(0)
    for _ in range(60):
        rows, cols = rng.integers(1, 20), rng.integers(1, 12)
        q = rng.integers(-device.qmax, device.qmax + 1, (rows, cols))
        stuck = rng.random((2, rows + rng.integers(0, 6), cols)) < rng.choice([0.05, 0.3, 0.6])
        codes = np.where(stuck, SA1, OK).astype(np.uint8)[:, None]
        rt, ref = place_tile(q, np.ones(cols), codes, device), place_tile_reference(q.astype(np.float64), stuck)
        assert ref.lost_fixed == pytest.approx(rt.error_fixed) and ref.lost_placed == pytest.approx(rt.error_placed)


def test_the_placed_loss_is_at_most_the_fixed_mappings_on_every_tile(model_and_art):
    model, _ = model_and_art
    chips = PlacedReferenceChips(layer_layouts(model, torch.zeros(1, 3, 32, 32)), 0.2, 3)
    for run in range(3):
        chip = chips.sample(run)
        assert chip.tiles and all(t.lost_placed <= t.lost_fixed for _, _, _, t in chip.tiles)
        assert sum(t.lost_placed for *_, t in chip.tiles) < 0.5 * sum(t.lost_fixed for *_, t in chip.tiles)
        for _, _, _, t in chip.tiles:  # the rows are distinct physical rows of the tile
            assert len(set(t.rows.tolist())) == len(t.rows) and t.rows.max() < TILE_ROWS
        # the masks are the weights the tiles drop
        assert sum(int(m.sum()) for m in chip.masks.values()) == sum(int(t.lost.sum()) for *_, t in chip.tiles)


def test_rows_alone_are_the_best_assignment_and_spares_are_used():
    rng = np.random.default_rng(1)
    for _ in range(10):
        d = rng.normal(size=(3, 4))
        stuck = rng.random((2, 5, 4)) < 0.3
        best = min(float((d * d * (((d > 0) & stuck[0, list(r)]) | ((d < 0) & stuck[1, list(r)]))).sum())
                   for r in itertools.permutations(range(5), 3))  # every injective map of 3 rows onto 5
        assert place_tile_reference(d, stuck, orient=False).lost_placed == pytest.approx(best)
    d = np.full((3, 4), 0.5)
    stuck = np.zeros((2, 5, 4), bool)
    stuck[0, 1] = True  # row 1's positive cells stuck: its weights would be dropped
    t = place_tile_reference(d, stuck, orient=False)
    assert t.lost_fixed > 0 and t.lost_placed == 0 and 1 not in t.rows and t.rows.max() >= 3


# ------------------------------------------------------------------ the command

@pytest.fixture
def data(coloured_cifar):
    return coloured_cifar(test=128)


def ev(capsys, *args):
    code = main(["eval", *map(str, args), "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def with_rate_stats(c, m):
    from toolchain.recalibrate import bn_stats_of

    uneven_bn(c, m)
    c.bn_stats = {"0.1": {k: v * 2 + 0.1 for k, v in bn_stats_of(m).items()}}


def test_a_fault_free_chip_placed_is_plain_eval(data, tiny_checkpoint, capsys):
    ckpt = tiny_checkpoint(ModelSpec("resnet20", 0.25), uneven_bn)
    base = ["--checkpoint", ckpt, "--data", data, "--no-cache"]
    _, plain = ev(capsys, *base)
    code, placed = ev(capsys, *base, "--sa1", "0", "--runs", "2", "--place")
    assert code == 0 and placed["place"] is True
    assert placed["accuracies"] == [plain["accuracy"]] * 2
    assert placed["weight_error_fixed"] == placed["weight_error_placed"] == [0.0, 0.0]


def test_same_seed_same_numbers_and_placement_helps(data, tiny_checkpoint, capsys):
    ckpt = tiny_checkpoint(ModelSpec("resnet20", 0.25), with_rate_stats)
    base = ["--checkpoint", ckpt, "--data", data, "--no-cache", "--runs", "2", "--bn-rate", "0.1", "--calibrate", "16"]
    code, a = ev(capsys, *base, "--sa1", "0.1,0.3", "--place", "--seed", "4")
    assert code == 0 and a["place"] is True and a["calibrate"] == 16 and len(a["rates"]) == 2
    _, b = ev(capsys, *base, "--sa1", "0.1,0.3", "--place", "--seed", "4")
    assert a["rates"] == b["rates"]
    _, c = ev(capsys, *base, "--sa1", "0.3", "--place", "--seed", "5")
    assert c["weight_error_placed"] != a["rates"][1]["weight_error_placed"]
    _, fixed = ev(capsys, *base, "--sa1", "0.3", "--seed", "4")
    assert fixed["place"] is False and "weight_error_placed" not in fixed
    for r in a["rates"]:
        assert all(0 < p < f for f, p in zip(r["weight_error_fixed"], r["weight_error_placed"]))
    code = main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--no-cache", "--sa1", "0.3", "--place"])
    assert code == 0 and "SA1 0.3, placed, 1 chips" in capsys.readouterr().out


def test_place_without_sa1_is_a_one_line_error(data, tiny_checkpoint, capsys):
    code = main(["eval", "--checkpoint", str(tiny_checkpoint()), "--data", str(data), "--no-cache", "--place"])
    assert code == 2 and "give --sa1 too" in one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------------ real images

@pytest.mark.slow
def test_the_runtimes_placed_chips_agree_with_the_pytorch_reference(tmp_path, shared_data, shared_resnet20,
                                                                    shared_paper_artifact, capsys, monkeypatch,
                                                                    real_data_cache):
    """Pretrained ResNet20 (standard flow, `paper`), SA1 0.3, 10 chips each, 1,000 test images,
    per-chip calibration on 256 images (it narrows the chips' spread to about one point, so the
    test can see a few points): `rram validate --place` and `rram eval --place` agree on the mean
    accuracy within three combined standard errors, and on the weight error too."""
    monkeypatch.setenv("RRAM_CACHE", str(real_data_cache))
    art = shared_paper_artifact()
    common = ["--data", str(shared_data), "--sa1", "0.3", "--images", "1000", "--runs", "10", "--calibrate", "256",
              "--place"]
    assert main(["validate", str(art), *common, "--out", str(tmp_path / "p.json")]) == 0
    rate = json.loads((tmp_path / "p.json").read_text())["rates"][0]
    campaign = rate["summary"]
    capsys.readouterr()
    assert main(["eval", "--model", "resnet20", "--checkpoint", str(shared_resnet20), *common, "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert campaign["mean"] >= 0.70 and ref["mean"] >= 0.70  # the fixed mapping: about 43%
    se = math.hypot(campaign["std"] / math.sqrt(10), ref["std"] / math.sqrt(10))
    assert abs(campaign["mean"] - ref["mean"]) <= 3 * se, (campaign["mean"], ref["mean"], se)
    for key in ("weight_error_fixed", "weight_error_placed"):
        a, b = np.array([run[key] for run in rate["runs"].values()]), np.array(ref[key])
        se = math.hypot(a.std(ddof=1), b.std(ddof=1)) / math.sqrt(10)
        assert abs(a.mean() - b.mean()) <= 3 * se, (key, a.mean(), b.mean(), se)

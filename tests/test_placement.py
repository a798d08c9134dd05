"""Fault-aware placement (runtime/placement.py, `rram validate --place`): the placed error is the
decoder's, never above the fixed mapping's on any tile, optimal rows for the rows' own cost, spare
rows taken when they help, fault-free chips unchanged, the same seed the same numbers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime.campaign import validate
from runtime.crossbar import DeviceConfig, decode, preset
from runtime.faults import OK, SA0, SA1, Chip, sample_chip
from runtime.placement import PhysicalChip, faulty_integers, place_chip, place_tile, placed_codes, sample_spares
from runtime.results import merge

from _runtime_helpers import make_images

DEVICES = {"paper": preset("paper"), "mlc4": preset("mlc4"), "slc8": preset("slc8"),
           "offset": DeviceConfig(bits_per_cell=4, cells_per_weight=2, encoding="offset", name="offset4")}
SMALL = DeviceConfig(tile_rows=16, tile_cols=16, name="small")  # several bands and column tiles


def random_tile(device: DeviceConfig, rng, rows=6, physical=9, cols=5, p1=0.2, p0=0.05):
    q = rng.integers(-device.qmax, device.qmax + 1, (rows, cols))
    u = rng.random((device.planes, device.cells_per_weight, physical, cols))
    codes = np.where(u < p1, SA1, np.where(u < p1 + p0, SA0, OK)).astype(np.uint8)
    return q, rng.random(cols) + 0.1, codes


def decoder_error(q, s2, codes, rows, flip, device) -> np.ndarray:
    """The squared weight error per column by the decoder itself."""
    return s2 * ((faulty_integers(q, codes[:, :, rows], flip, device) - q).astype(np.float64) ** 2).sum(axis=0)


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_a_placed_tile_reports_the_decoders_error_and_never_exceeds_the_fixed_mapping(name):
    device, rng = DEVICES[name], np.random.default_rng(0)
    for _ in range(30):
        q, s2, codes = random_tile(device, rng)
        tp = place_tile(q, s2, codes, device)
        n = q.shape[0]
        assert sorted(tp.rows) == sorted(set(tp.rows)) and tp.rows.max() < codes.shape[2]  # injective
        fixed = decoder_error(q, s2, codes, np.arange(n), np.zeros(q.shape[1], bool), device).sum()
        placed = decoder_error(q, s2, codes, tp.rows, tp.flip, device).sum()
        assert tp.error_fixed == pytest.approx(fixed, rel=1e-12, abs=1e-12)
        assert tp.error_placed == pytest.approx(placed, rel=1e-12, abs=1e-12)
        assert placed <= fixed + 1e-12
        if device.planes == 1:
            assert not tp.flip.any()  # orientation is a differential pair's choice only


@pytest.mark.parametrize("name", ["paper", "mlc4", "offset"])
def test_rows_alone_are_the_best_assignment(name):
    """Without orientation the rows are the exact optimum (brute force over every injective map)."""
    device, rng = DEVICES[name], np.random.default_rng(1)
    for _ in range(10):
        q, s2, codes = random_tile(device, rng, rows=3, physical=5, cols=4, p1=0.3, p0=0.1)
        flip = np.zeros(4, bool)
        best = min(decoder_error(q, s2, codes, np.array(rows), flip, device).sum()
                   for rows in itertools.permutations(range(5), 3))
        assert place_tile(q, s2, codes, device, orient=False).error_placed == pytest.approx(best, abs=1e-9)


def test_spare_rows_are_used_when_they_help():
    device = DEVICES["paper"]
    q = np.full((3, 4), 50)
    codes = np.zeros((2, 1, 5, 4), np.uint8)
    codes[0, 0, 1] = SA1  # row 1's positive cells stuck at G_min: its weights would read 0
    tp = place_tile(q, np.ones(4), codes, device, orient=False)
    assert tp.error_fixed > 0 and tp.error_placed == 0 and 1 not in tp.rows and tp.rows.max() >= 3
    no_spares = place_tile(q, np.ones(4), codes[:, :, :3], device, orient=False)
    assert no_spares.error_placed == no_spares.error_fixed > 0  # nowhere better to go


def test_orientation_turns_a_stuck_pair_to_its_healthy_side():
    device = DEVICES["paper"]
    q = np.array([[40, -3]])
    codes = np.zeros((2, 1, 1, 2), np.uint8)
    codes[0, 0, 0, 0] = SA1  # the positive cell of column 0: 40 would read 0; flipped, it holds the 0
    tp = place_tile(q, np.ones(2), codes, device)
    assert tp.flip.tolist() == [True, False] and tp.error_placed == 0


@pytest.fixture
def small_art(make_tiny_artifact):
    return make_tiny_artifact(SMALL)


def test_a_placed_chip_computes_the_weights_its_placement_reports(small_art):
    from runtime.artifact import DeployedModel

    cmap = DeployedModel.load(small_art).cmap
    assert any(layer.matrix_shape[0] > 16 and layer.matrix_shape[0] % 16 for layer in cmap.layers)  # spares
    used = sample_chip(cmap.cell_count(), 0.2, 0.05, 3)
    physical = PhysicalChip(used, sample_spares(cmap, 0.2, 0.05, 0, 3))
    placement = place_chip(cmap, physical)
    logical = placed_codes(cmap, physical, placement)
    assert logical.codes.shape == used.codes.shape and logical.codes.any()
    error = fixed = energy = 0.0
    from runtime.faults import apply_faults, split_codes

    for layer, codes, plain in zip(cmap.layers, split_codes(cmap, logical.codes), split_codes(cmap, used.codes)):
        q = decode(layer.levels, cmap.device).astype(np.float64)
        s2 = layer.scales.astype(np.float64) ** 2
        placed_q = decode(apply_faults(layer.levels, codes, cmap.device.levels - 1), cmap.device)
        fixed_q = decode(apply_faults(layer.levels, plain, cmap.device.levels - 1), cmap.device)
        error += float((s2 * (placed_q - q) ** 2).sum())
        fixed += float((s2 * (fixed_q - q) ** 2).sum())
        energy += float((s2 * q ** 2).sum())
    assert error == pytest.approx(placement.error_placed, rel=1e-9)
    assert fixed == pytest.approx(placement.error_fixed, rel=1e-9)
    assert energy == pytest.approx(placement.energy, rel=1e-12) and error < fixed
    # no fault: nothing moves
    clean = PhysicalChip(Chip(np.zeros_like(used.codes)), np.zeros_like(physical.spare))
    assert not placed_codes(cmap, clean, place_chip(cmap, clean)).codes.any()


def test_placed_campaigns_repeat_shard_and_leave_fault_free_chips_alone(small_art, tmp_path):
    images, labels = make_images(16)
    kw = dict(sa1=[0.0, 0.2], runs=4, seed=6, progress=False)
    placed = validate(small_art, images, labels, place=True, **kw)
    plain = validate(small_art, images, labels, **kw)
    assert placed["config"]["place"]["version"] == 1 and "place" not in plain["config"]
    for r, run in placed["rates"][0]["runs"].items():  # fault-free: the clean accuracy, nothing moved
        assert run == {**plain["rates"][0]["runs"][r], "weight_error_fixed": 0.0, "weight_error_placed": 0.0}
    for run in placed["rates"][1]["runs"].values():
        assert 0 <= run["weight_error_placed"] <= run["weight_error_fixed"]
    assert validate(small_art, images, labels, place=True, **kw)["rates"] == placed["rates"]
    shards = [tmp_path / "a.json", tmp_path / "b.json"]
    for k, out in enumerate(shards, 1):
        validate(small_art, images, labels, place=True, shard=(k, 2), out=out, **kw)
    assert merge(shards)["rates"] == placed["rates"]


def test_sensitivity_with_placement_measures_what_remains_after_it(small_art):
    from runtime.sensitivity import sensitivity

    images, labels = make_images(16)
    kw = dict(sa1=[0.3], runs=2, seed=1, progress=False)
    plain = sensitivity(small_art, images, labels, **kw)
    placed = sensitivity(small_art, images, labels, place=True, **kw)
    assert "place" in placed["config"] and "place" not in plain["config"]
    drops = [(a["drop"], b["drop"]) for a, b in zip(plain["rates"][0]["layers"], placed["rates"][0]["layers"])]
    assert sum(b for _, b in drops) < sum(a for a, _ in drops)  # placement leaves less to lose

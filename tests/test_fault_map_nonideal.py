"""Device non-idealities on a measured chip (issue 37: `rram validate --fault-map` with
--variation/--read-noise/--nonideal and --dac-bits/--adc-bits): none gives today's chip exactly;
converters as a campaign's chip computes behind them; programming variation and read noise drawn
once from --seed, the map's stuck cells at their levels; what stays refused, one line each."""
import json

import numpy as np
import pytest

from runtime.artifact import DeployedModel
from runtime.campaign import validate_fault_map
from runtime.chips import MeasuredChip
from runtime.engine import Engine
from runtime.faults import Chip, faulty_levels, measured_seed, run_seed, sample_chip, save_fault_map, split_codes
from runtime.variation import Nonideal
from toolchain import api
from toolchain.cli import main

from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture
def chip_map(paper_art, tmp_path):
    cmap = DeployedModel.load(paper_art).cmap
    chip = sample_chip(cmap.cell_count(), 0.1, 0.02, run_seed(5, 0.1, 0.02, 0))
    save_fault_map(tmp_path / "chip.npz", cmap, chip)
    return tmp_path / "chip.npz", chip


def _numbers(doc):
    return doc["clean"], doc["chip"]


def test_no_nonideality_is_todays_chip_and_16_bits_change_no_decision(paper_art, paper_data, small_images, chip_map):
    images, labels = paper_data
    path, _ = chip_map
    today = validate_fault_map(paper_art, images, labels, path)
    for ideal in (Nonideal(), Nonideal(adc_range="full-scale", name="ideal")):
        doc = validate_fault_map(paper_art, images, labels, path, nonideal=ideal, seed=9)
        doc["info"].pop("provenance"), today["info"].pop("provenance", None)
        assert doc == today  # the same file: no nonideal, no seed recorded
    assert "nonideal" not in today["config"] and "seed" not in today["config"]
    calib = small_images(32, seed=4)[0]
    wide = validate_fault_map(paper_art, images, labels, path, nonideal=Nonideal(dac_bits=16, adc_bits=16),
                              engine_kw={"calibration": calib})
    assert _numbers(wide) == _numbers(today)
    assert wide["config"]["nonideal"]["adc_bits"] == 16 and "calibration_sha256" in wide["config"]
    assert "seed" not in wide["config"]  # converters draw nothing


def test_variation_and_read_noise_drawn_once_from_the_seed(paper_art, paper_data, chip_map):
    images, labels = paper_data
    path, chip = chip_map
    ni = Nonideal(programming_sigma=0.15, read_sigma=0.02)
    one = validate_fault_map(paper_art, images, labels, path, nonideal=ni, seed=1)
    assert one["config"]["nonideal"] == ni.to_dict() and one["config"]["seed"] == 1
    again = validate_fault_map(paper_art, images, labels, path, nonideal=ni, seed=1)
    assert _numbers(again) == _numbers(one)
    other = validate_fault_map(paper_art, images, labels, path, nonideal=ni, seed=2)
    assert other["chip"]["accuracy"] != one["chip"]["accuracy"]
    assert other["clean"] == one["clean"]  # the ideal chip's, as in a campaign
    dm = DeployedModel.load(paper_art)  # the engine's chip with its own reference of the seed
    want = Engine(dm, images, labels).chip_accuracy(Chip(chip.codes, nonideal=ni, seed=measured_seed(1)))
    assert one["chip"]["accuracy"] == want
    assert measured_seed(1).entropy == [1, 0x3EA5ED]  # the documented derivation


def test_the_maps_stuck_cells_keep_their_levels(paper_art, chip_map):
    path, chip = chip_map
    dm = DeployedModel.load(paper_art)
    ni = Nonideal(programming_sigma=0.1)
    varied = MeasuredChip(path, _artifact(paper_art), nonideal=ni, seed=3).sample()
    np.testing.assert_array_equal(varied.codes, chip.codes)
    got = dm.chip_levels(varied)
    for lv, codes, stuck_lv in zip(got, split_codes(dm.cmap, chip.codes), faulty_levels(dm.cmap, chip.codes)):
        stuck = codes != 0
        assert stuck.any() and lv.dtype == np.float32
        np.testing.assert_array_equal(lv[stuck], stuck_lv[stuck])
        assert np.mean(lv[~stuck] != stuck_lv[~stuck]) > 0.5  # the working cells are off their targets
    placed = MeasuredChip(path, _artifact(paper_art), place=True, nonideal=ni, seed=3).sample()
    assert placed.nonideal == ni and placed.seed.entropy == measured_seed(3).entropy


def _artifact(path):
    from runtime.artifact import Artifact

    return Artifact.load(path)


def _err(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rram: error:"), err
    return err


def _data(root, test, train):
    """A CIFAR-10 folder: ``test`` (images, labels) as its test split, ``train`` images as its
    training split (where the converters' range images come from)."""
    from conftest import CIFAR10_CLASSES, write_cifar_python

    def rows(images):
        return images.transpose(0, 3, 1, 2).reshape(len(images), -1)

    batches = {f"data_batch_{i + 1}": (rows(part), np.zeros(len(part), np.int64))
               for i, part in enumerate(np.array_split(train, 5))}
    batches["test_batch"] = (rows(test[0]), test[1])
    write_cifar_python(root / "cifar-10-batches-py", batches, CIFAR10_CLASSES)
    return root


def test_cli_adc_equals_the_campaigns_chip_and_refusals(paper_art, paper_data, small_images, tmp_path, capsys):
    data = _data(tmp_path / "cifar", paper_data, small_images(40, seed=4)[0])
    base = ["validate", str(paper_art), "--data", str(data), "--no-cache", "--range-images", "40"]
    campaign = tmp_path / "campaign.json"
    assert main([*base, "--sa1", "0.05", "--runs", "2", "--seed", "4", "--adc-bits", "3", "--out", str(campaign)]) == 0
    cmap = DeployedModel.load(paper_art).cmap
    save_fault_map(tmp_path / "chip.npz", cmap, sample_chip(cmap.cell_count(), 0.05, 0.0, run_seed(4, 0.05, 0.0, 1)))
    out = tmp_path / "chip.json"
    chip_args = [*base, "--fault-map", str(tmp_path / "chip.npz")]
    assert main([*chip_args, "--adc-bits", "3", "--out", str(out)]) == 0
    assert "ADC 3 bits" in capsys.readouterr().out
    doc, want = json.loads(out.read_text()), json.loads(campaign.read_text())
    assert doc["chip"]["accuracy"] == want["rates"][0]["runs"]["1"]["accuracy"]
    assert doc["clean"] == want["clean"]["."] < 1  # the ideal chip behind the same converters: 3 bits cost
    plain = validate_fault_map(paper_art, *paper_data, tmp_path / "chip.npz")
    assert plain["chip"]["accuracy"] != doc["chip"]["accuracy"]  # the converters acted on the chip too
    assert doc["config"]["nonideal"] == want["config"]["nonideal"]
    assert doc["config"]["calibration_sha256"] == want["config"]["calibration_sha256"]  # the same range images
    # the API returns the chip's document too (not a campaign's reader refusing it)
    via_api = api.validate(paper_art, tmp_path / "api.json", fault_map=tmp_path / "chip.npz", adc_bits=3,
                           data=data, no_cache=True, range_images=40)
    assert via_api["chip"] == doc["chip"] and via_api["format"] == doc["format"]

    bad = tmp_path / "bad.json"
    for extra, words in [
        (["--variation", "0.05", "--chip-calibration", str(tmp_path / "cal.json")], "--chip-calibration FILE is"),
        (["--adc-bits", "6", "--chip-calibration", str(tmp_path / "cal.json")], "--chip-calibration FILE is"),
        (["--read-noise", "0.01", "--precision", "int8"], "int8"),
        (["--dac-bits", "8", "--precision", "int8"], "fp32"),
        (["--variation", "-1"], ">= 0"),
        (["--variation", "0.05", "--sa1", "0.1"], "--sa1 is for campaigns"),
    ]:
        assert words in _err(capsys, [*chip_args, *extra, "--out", str(bad)])
        assert not bad.exists() and not bad.with_name("bad.json.lock").exists()


def test_calibrated_behind_the_converters_as_the_campaigns_chip(paper_art, paper_data, small_images, tmp_path):
    """--calibrate N with --adc-bits on a measured chip: the campaign's chip of the same codes,
    calibrated and evaluated behind the same converters (ranges on the calibrated ideal chip)."""
    from runtime.campaign import validate

    images, labels = paper_data
    calib, calibrate = small_images(32, seed=4)[0], small_images(16, seed=6)[0]
    ni = Nonideal(adc_bits=4)
    doc = validate(paper_art, images, labels, sa1=[0.1], runs=1, seed=2, progress=False, nonideal=ni,
                   calibration=calib, calibrate=calibrate)
    cmap = DeployedModel.load(paper_art).cmap
    save_fault_map(tmp_path / "c.npz", cmap, sample_chip(cmap.cell_count(), 0.1, 0.0, run_seed(2, 0.1, 0.0, 0)))
    chip = validate_fault_map(paper_art, images, labels, tmp_path / "c.npz", nonideal=ni, calibrate=calibrate,
                              engine_kw={"calibration": calib})
    assert chip["chip"]["accuracy"] == doc["rates"][0]["runs"]["0"]["accuracy"]
    assert chip["clean"] == doc["clean"]["."] and chip["config"]["calibrate"] == 16

"""Device non-idealities on more paths (issue 37): `rram sensitivity --variation/--read-noise`
(every chip varied on all its layers, the same stuck cells as without, recorded), `rram
calibrate` refusing them (a measured chip's programming errors are physical), and --images auto
seeing a read-noise chip's real preparation cost."""
import json

import numpy as np
import pytest

from runtime.artifact import DeployedModel
from runtime.engine import Engine
from runtime.faults import Chip, run_seed, sample_chip
from runtime.sensitivity import sensitivity
from runtime.variation import Nonideal
from toolchain.cli import main

from conftest import one_thread, write_test_batch

_one_thread = pytest.fixture(autouse=True)(one_thread)


def varied(chip: Chip, start: int, stop: int, nonideal: Nonideal, seed) -> Chip:
    """The chip's stuck cells in [start, stop) alone, with the non-idealities drawn from ``seed``
    (the test's own reference of a sensitivity chip)."""
    codes = np.zeros_like(chip.codes)
    codes[start:stop] = chip.codes[start:stop]
    return Chip(codes, nonideal=nonideal, seed=seed)


@pytest.mark.parametrize("nonideal", [Nonideal(programming_sigma=0.05), Nonideal(read_sigma=0.03)],
                         ids=["variation", "read-noise"])
def test_sensitivity_varies_every_chip_on_the_same_stuck_cells(paper_art, paper_data, nonideal):
    images, labels = paper_data
    doc = sensitivity(paper_art, images, labels, sa1=[0.05], runs=2, seed=3, progress=False, nonideal=nonideal)
    (entry,) = doc["rates"]
    assert doc["config"]["nonideal"] == nonideal.to_dict()
    dm = DeployedModel.load(paper_art)
    engine = Engine(dm, images, labels)
    bounds = np.cumsum([0] + [layer.levels.size for layer in dm.cmap.layers])
    seeds = [run_seed(3, 0.05, 0.0, r) for r in range(2)]
    for k, e in enumerate(entry["layers"]):
        accs = [engine.chip_accuracy(varied(sample_chip(dm.cmap.cell_count(), 0.05, 0.0, seeds[r]),
                                            bounds[k], bounds[k + 1], nonideal, seeds[r])) for r in range(2)]
        assert e["accuracies"] == accs and e["drop"] == pytest.approx(entry["clean"] - np.mean(accs))
    alone = [engine.chip_accuracy(Chip(np.zeros(dm.cmap.cell_count(), np.uint8), nonideal=nonideal, seed=s))
             for s in seeds]
    assert entry["nonideal_alone"]["accuracies"] == alone
    assert entry["nonideal_alone"]["mean"] == pytest.approx(np.mean(alone))
    assert min(alone) < entry["clean"]  # the non-ideality costs the chips something on its own


def test_sensitivity_without_a_nonideality_is_todays_report(paper_art, paper_data):
    images, labels = paper_data
    today = sensitivity(paper_art, images, labels, sa1=[0.1], runs=2, seed=1, progress=False)
    ideal = sensitivity(paper_art, images, labels, sa1=[0.1], runs=2, seed=1, progress=False, nonideal=Nonideal())
    for doc in (today, ideal):
        doc.pop("seconds", None)
        doc["info"].pop("provenance")
    assert today == ideal and "nonideal" not in ideal["config"] and "nonideal_alone" not in ideal["rates"][0]


def _err(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rram: error:"), err
    return err


def test_cli_sensitivity_records_variation_and_refuses_converters(paper_art, paper_data, tmp_path, capsys):
    images, labels = paper_data
    root = write_test_batch(tmp_path / "cifar", images, labels)
    base = ["sensitivity", str(paper_art), "--data", str(root), "--no-cache", "--sa1", "0.1", "--runs", "1"]
    out = tmp_path / "s.json"
    assert main([*base, "--variation", "0.04", "--programming-model", "lognormal", "--out", str(out)]) == 0
    assert "the same chips without a stuck cell" in capsys.readouterr().out
    config = json.loads(out.read_text())["config"]["nonideal"]
    assert (config["programming_sigma"], config["programming_model"]) == (0.04, "lognormal")
    for args, message in ((["--adc-bits", "6"], "not built yet"), (["--variation", "-1"], "must be a finite"),
                          (["--nonideal", "nope"], "unknown non-ideality preset")):
        err = _err(capsys, [*base, *args, "--out", str(tmp_path / "bad.json")])
        assert message in err
        assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("flag", [["--variation", "0.05"], ["--read-noise", "0.01"], ["--nonideal", "wan2022"]])
def test_calibrate_refuses_simulated_noise_on_a_measured_chip(paper_art, tmp_path, capsys, flag):
    out = tmp_path / "cal"
    err = _err(capsys, ["calibrate", str(paper_art), "--fault-map", str(tmp_path / "chip.npz"), "--data",
                        str(tmp_path), "--out", str(out), *flag])
    assert f"{flag[0]}: rram calibrate measures a real chip" in err
    assert not out.exists()


class FakeClock:
    """``time.perf_counter`` that moves only where the test says: the programmed levels cost 5 s
    per chip, a session 1 s (so the split is exact, not timed)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_images_auto_sees_a_read_noise_chips_preparation(paper_art, paper_data, monkeypatch):
    """A read-noise chip is prepared once (programmed levels, calibration) and gets a session per
    batch: the first is the chip's cost, the sessions grow with the images. It used to report all
    of it as evaluation (preparation 0 s), which the subset-size rule reads as "chips are free"."""
    import time

    from runtime.artifact import DeployedModel as DM
    from runtime.campaign import validate
    from runtime.campaign.chip import measure_chip
    from runtime.chips import RandomChips

    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    levels, session = DM.chip_levels, Engine.session

    def slow_levels(self, chip):
        clock.now += 5.0
        return levels(self, chip)

    def slow_session(self, *args, **kw):
        clock.now += 1.0
        return session(self, *args, **kw)

    monkeypatch.setattr(DM, "chip_levels", slow_levels)
    monkeypatch.setattr(Engine, "session", slow_session)
    images, labels = paper_data
    dm = DeployedModel.load(paper_art)
    engine = Engine(dm, images, labels, batch_size=8)
    chips = RandomChips.of(dm.cmap, 0.05, 0.0, 0, nonideal=Nonideal(read_sigma=0.02))
    record, ran = measure_chip(lambda name: engine, dm.cmap, chips, 0, "m", 1.0, subset_size=20, images=len(labels))
    assert ran and record["_costs"] == (5.0, 3.0, 20)  # 5 s once, 3 batches of 8 a session each
    # a chip without read noise: its one session is preparation (as before)
    plain = RandomChips.of(dm.cmap, 0.05, 0.0, 0, nonideal=Nonideal(programming_sigma=0.02))
    assert measure_chip(lambda name: engine, dm.cmap, plain, 0, "m", 1.0, 20, len(labels))[0]["_costs"] == \
        (6.0, 0.0, 20)
    # the campaign's size rule gets the split: 5 s per chip, 1/8 s per image
    doc = validate(paper_art, images, labels, sa1=[0.1], runs=4, seed=0, progress=False, images_auto=True,
                   pilot_images=16, min_images=8, min_runs=2, ci=0.001, nonideal=Nonideal(read_sigma=0.02),
                   engine_kw={"batch_size": 8})
    auto = doc["rates"][0]["images_auto"]
    assert auto["chip_seconds"] == 5.0 and auto["image_seconds"] == pytest.approx(1 / 8)


def test_images_auto_counts_noisy_chips_without_stuck_cells_as_run(paper_art, paper_data, tmp_path):
    """At SA1 0 a read-noise chip has no stuck cell but runs on its own subset: the summary's
    images and the merged timing count it (they counted chips with stuck cells only)."""
    from runtime.campaign import validate
    from runtime.results import merge

    images, labels = paper_data
    doc = validate(paper_art, images, labels, sa1=[0.0], runs=3, seed=0, progress=False, images_auto=True,
                   pilot_images=16, min_images=8, min_runs=2, ci=0.001, nonideal=Nonideal(read_sigma=0.02),
                   out=tmp_path / "r.json")
    (entry,) = doc["rates"]
    sizes = [v["images"] for v in entry["runs"].values()]
    assert all(v["stuck_fraction"] == 0 for v in entry["runs"].values()) and max(sizes) < len(labels)
    assert entry["summary"]["images_evaluated"] == sum(sizes)
    merged = merge([tmp_path / "r.json"])
    assert merged["timing"]["ran"] == 3 and merged["timing"]["images"] == sum(sizes)

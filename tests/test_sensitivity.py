"""Per-layer sensitivity (`rram sensitivity`) and protected layers (`rram validate --protect`), issue 12."""
import json

import numpy as np
import pytest

from runtime.artifact import Artifact, DeployedModel
from runtime.campaign import validate
from runtime.engine import Engine
from runtime.errors import RuntimeInputError
from runtime.faults import Chip, layer_names, run_seed, sample_chip
from runtime.plot import plot_sensitivity
from runtime.sensitivity import sensitivity
from toolchain.cli import main

from conftest import one_thread, write_test_batch

_one_thread = pytest.fixture(autouse=True)(one_thread)


def test_each_layer_alone_and_fully_stuck_layers_lead(paper_art, paper_data, tmp_path):
    images, labels = paper_data
    doc = sensitivity(paper_art, images, labels, sa1=[0.05, 1.0], runs=3, seed=1, progress=False,
                      out=tmp_path / "s.json")
    low, full = doc["rates"]
    dm = DeployedModel.load(paper_art)
    assert low["clean"] == 1.0 and [e["name"] for e in low["layers"]] == layer_names(dm.cmap)
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(doc))
    assert sum(e["cell_share"] for e in low["layers"]) == pytest.approx(1.0)
    # the drop of layer k is measured on the same chips with faults in layer k alone
    engine = Engine(dm, images, labels)
    bounds = np.cumsum([0] + [layer.levels.size for layer in dm.cmap.layers])  # each layer's flat cells
    for k, e in enumerate(low["layers"]):
        accs = [engine.chip_accuracy(only_in(sample_chip(dm.cmap.cell_count(), 0.05, 0.0, run_seed(1, 0.05, 0.0, r)),
                                             bounds[k], bounds[k + 1])) for r in range(3)]
        assert e["accuracies"] == accs and e["drop"] == pytest.approx(1.0 - np.mean(accs))
        assert e["drop_ci95"][0] <= e["drop"] <= e["drop_ci95"][1]
    # a layer whose cells are all stuck drops more than any layer at 5%
    worst_low = max(e["drop"] for e in low["layers"])
    assert all(f["drop"] >= worst_low for f in full["layers"]) and min(f["drop"] for f in full["layers"]) > 0.5
    assert plot_sensitivity(tmp_path / "s.json", tmp_path / "s.png").is_file()


def test_protect_leaves_exactly_those_layers_fault_free(paper_art, paper_data):
    images, labels = paper_data
    dm = DeployedModel.load(paper_art)
    names = layer_names(dm.cmap)
    doc = validate(paper_art, images, labels, sa1=[0.3], runs=3, seed=2, progress=False, protect=[names[0]])
    assert doc["config"]["protect"] == [names[0]]
    share = dm.cmap.layers[0].levels.size / dm.cmap.cell_count()
    assert doc["config"]["protected_cells"] == pytest.approx(share)
    engine = Engine(dm, images, labels)
    for r, run in doc["rates"][0]["runs"].items():
        chip = sample_chip(dm.cmap.cell_count(), 0.3, 0.0, run_seed(2, 0.3, 0.0, int(r)))
        n0 = dm.cmap.layers[0].levels.size
        kept = only_in(chip, n0, chip.codes.size)
        assert not kept.codes[:n0].any() and np.array_equal(kept.codes[n0:], chip.codes[n0:])
        assert run["accuracy"] == engine.chip_accuracy(kept) and run["stuck_fraction"] == kept.stuck_fraction


def only_in(chip, start: int, stop: int):
    """The chip with its faults in the flat cells [start, stop) alone (written here, apart from
    the runtime's chip sources, as the test's own reference)."""
    codes = np.zeros_like(chip.codes)
    codes[start:stop] = chip.codes[start:stop]
    return Chip(codes)


def _err(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rram: error:")
    return err


def test_bad_input(paper_art, paper_data, tmp_path, capsys, monkeypatch):
    images, labels = paper_data
    root = write_test_batch(tmp_path / "cifar", images, labels)
    out = tmp_path / "r.json"
    base = ["--data", str(root), "--no-cache", "--split", "test"]
    err = _err(capsys, ["validate", str(paper_art), *base, "--sa1", "0.1", "--runs", "1", "--protect", "nope",
                        "--out", str(out)])
    assert "unknown layer 'nope'" in err and layer_names(DeployedModel.load(paper_art).cmap)[0] in err
    assert not out.exists()
    empty = Artifact.load(paper_art)
    monkeypatch.setattr(empty.first.cmap, "layers", [])
    with pytest.raises(RuntimeInputError, match="no mapped layer"):
        sensitivity(empty, images, labels, sa1=[0.1], runs=1, progress=False)


def test_cli_sensitivity_and_plot(paper_art, paper_data, tmp_path, capsys):
    images, labels = paper_data
    root = write_test_batch(tmp_path / "cifar", images, labels)
    out = tmp_path / "s.json"
    assert main(["sensitivity", str(paper_art), "--data", str(root), "--no-cache", "--sa1", "0.1,0.2", "--runs", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in layer_names(DeployedModel.load(paper_art).cmap))
    assert main(["plot", str(out), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000

"""`rram place`, `--placement`, `--place` on measured chips (issue 34): the file round-trips, a reader
written from docs/crossbar-format.md alone applies it exactly, and bad input is one line with
nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.artifact import DeployedModel
from runtime.crossbar import DeviceConfig, decode
from runtime.faults import SA0, SA1, sample_chip, save_fault_map
from runtime.placement import PhysicalChip, sample_spares, save_physical_fault_map

from conftest import one_line_error, run_cli

SMALL = DeviceConfig(tile_rows=16, tile_cols=16, name="small")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_tiny_artifact, cifar_test_batch, small_images):
    root = tmp_path_factory.mktemp("place")
    art, other = make_tiny_artifact(SMALL), make_tiny_artifact(SMALL, seed=1)
    cifar = cifar_test_batch(*small_images(16))
    cmap = DeployedModel.load(art).cmap
    physical = PhysicalChip(sample_chip(cmap.cell_count(), 0.2, 0.05, 1), sample_spares(cmap, 0.2, 0.05, 0, 1))
    save_physical_fault_map(root / "full.npz", cmap, physical)
    save_fault_map(root / "used.npz", cmap, physical.used)
    other_chip = PhysicalChip(sample_chip(cmap.cell_count(), 0.2, 0.05, 2), sample_spares(cmap, 0.2, 0.05, 0, 2))
    save_physical_fault_map(root / "other.npz", cmap, other_chip)
    return {"root": root, "art": art, "other": other, "cifar": cifar, "cmap": cmap, "physical": physical}


def read_from_the_spec(placement_path, fault_map_path, levels: list, tile_rows: int, planes: int) -> list:
    """docs/crossbar-format.md, "Placement file" and "Fault maps of full tiles", alone: per layer,
    the logical levels forced by the codes of the physical cells they are placed on."""
    place, faults = np.load(placement_path), np.load(fault_map_path)
    meta = json.loads(place["meta"].tobytes().decode())
    out = []
    for layer, lv in zip(meta["layers"], levels):
        key = layer["key"]
        rows, flip, codes = place[f"{key}.rows"], place[f"{key}.flip"], faults[key]
        faulty = lv.copy()
        P, S, R, C = lv.shape
        for k, (c0, c1) in enumerate(layer["column_tiles"]):
            for r in range(R):
                b = r // tile_rows
                for c in range(c0, c1):
                    for p in range(P):
                        pp = (planes - 1 - p) if flip[b, c] else p
                        code = codes[pp, :, b * tile_rows + rows[r, k], c]
                        faulty[p, :, r, c] = np.where(code == SA1, 0, np.where(code == SA0, 127, lv[p, :, r, c]))
        out.append(faulty)
    return out


def test_place_writes_a_file_a_spec_reader_applies_exactly(setup, capsys, tmp_path):
    s = setup
    code, out, err = run_cli(capsys, "place", s["art"], "--fault-map", s["root"] / "full.npz", "--out", tmp_path / "p")
    assert code == 0, err
    assert "with the spare rows" in out
    path = tmp_path / "p" / "placement.npz"
    meta = json.loads(np.load(path)["meta"].tobytes().decode())
    assert meta["spares"] and meta["weight_error_placed"] < meta["weight_error_fixed"]
    cmap = s["cmap"]
    by_spec = read_from_the_spec(path, s["root"] / "full.npz", [layer.levels for layer in cmap.layers],
                                 SMALL.tile_rows, SMALL.planes)
    # the runtime's placed chip: validate with the file equals validate placing here, and both are
    # the weights the spec reader computes
    from runtime.artifact import Artifact
    from runtime.faults import apply_faults, split_codes
    from runtime.fileio import file_sha256
    from runtime.placement_file import measured_chip

    artifact = Artifact.load(s["art"])
    _, chip = measured_chip(artifact, s["root"] / "full.npz", "auto", placement=path)
    for layer, codes, spec in zip(cmap.layers, split_codes(cmap, chip.codes), by_spec):
        assert np.array_equal(decode(apply_faults(layer.levels, codes, 127), SMALL), decode(spec, SMALL))
    _, here = measured_chip(artifact, s["root"] / "full.npz", "auto", place=True)
    assert np.array_equal(here.codes, chip.codes)
    base = ["validate", s["art"], "--data", s["cifar"], "--no-cache", "--fault-map", s["root"] / "full.npz", "--json"]
    code, a, err = run_cli(capsys, *base, "--placement", path, "--out", tmp_path / "a.json")
    assert code == 0, err
    code, b, err = run_cli(capsys, *base, "--place", "--out", tmp_path / "b.json")
    assert code == 0, err
    a, b = json.loads(a), json.loads(b)
    assert a["chip"] == b["chip"] and a["config"]["placement_sha256"] == file_sha256(path)


def test_calibration_runs_on_the_placed_chip(capsys, tmp_path):
    """`rram calibrate --placement`: the periphery is calibrated for the chip as placed, and
    validating with that calibration and placement runs."""
    from _runtime_helpers import bn_artifact
    from conftest import write_cifar_batches as with_train  # calibration images come from a train split

    art = bn_artifact(tmp_path / "art")
    cmap = DeployedModel.load(art).cmap
    save_physical_fault_map(tmp_path / "chip.npz", cmap, PhysicalChip(sample_chip(cmap.cell_count(), 0.2, 0.0, 4),
                                                                       sample_spares(cmap, 0.2, 0.0, 0, 4)))
    data = with_train(tmp_path / "data", n_train=20)
    assert run_cli(capsys, "place", art, "--fault-map", tmp_path / "chip.npz", "--out", tmp_path / "p")[0] == 0
    placement = tmp_path / "p" / "placement.npz"
    chip = ["--fault-map", tmp_path / "chip.npz", "--placement", placement, "--data", data, "--no-cache"]
    code, _, err = run_cli(capsys, "calibrate", art, *chip, "--calibrate", "8", "--out", tmp_path / "cal")
    assert code == 0, err
    placed = json.loads((tmp_path / "cal" / "chip-calibration.json").read_text())
    code, _, err = run_cli(capsys, "calibrate", art, *chip[:2], *chip[4:], "--calibrate", "8", "--out", tmp_path / "fx")
    assert code == 0, err
    fixed = json.loads((tmp_path / "fx" / "chip-calibration.json").read_text())
    assert placed["layers"] != fixed["layers"]  # the placed chip's faulty weights, not the fixed mapping's


def test_a_map_of_used_cells_only_places_without_spares(setup, capsys, tmp_path):
    s = setup
    code, out, err = run_cli(capsys, "place", s["art"], "--fault-map", s["root"] / "used.npz", "--out", tmp_path / "p")
    assert code == 0, err
    assert "without spare rows" in out
    meta = json.loads(np.load(tmp_path / "p" / "placement.npz")["meta"].tobytes().decode())
    assert meta["spares"] is False and meta["weight_error_placed"] < meta["weight_error_fixed"]
    rows, n = np.load(tmp_path / "p" / "placement.npz")["L0000.rows"], s["cmap"].layers[0].matrix_shape[0]
    assert n % 16 and rows[n - n % 16:].max() < n % 16  # the last band's rows stay off its unknown spares


def _bad(capsys, argv, expected, out_path):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and expected in one_line_error(err), err
    assert not out_path.exists()


def test_bad_placement_inputs_are_one_line_and_write_nothing(setup, capsys, tmp_path):
    s = setup
    assert run_cli(capsys, "place", s["art"], "--fault-map", s["root"] / "full.npz", "--out", tmp_path / "p")[0] == 0
    good = tmp_path / "p" / "placement.npz"
    out = tmp_path / "r.json"
    base = ["validate", s["art"], "--data", s["cifar"], "--no-cache", "--out", out]
    _bad(capsys, base + ["--placement", good, "--sa1", "0.1"], "--placement belongs to one measured chip", out)
    _bad(capsys, base + ["--fault-map", s["root"] / "other.npz", "--placement", good], "places another chip", out)
    _bad(capsys, ["validate", s["other"], "--data", s["cifar"], "--no-cache", "--out", out, "--fault-map",
                  s["root"] / "full.npz", "--placement", good], "places another model", out)
    _bad(capsys, base + ["--fault-map", s["root"] / "full.npz", "--placement", good, "--place"], "give one", out)
    z = dict(np.load(good))
    z["L0000.rows"] = np.zeros_like(z["L0000.rows"])  # every row on physical row 0
    np.savez(tmp_path / "edited.npz", **z)
    _bad(capsys, base + ["--fault-map", s["root"] / "full.npz", "--placement", tmp_path / "edited.npz"],
         "not a placement", out)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    _bad(capsys, base + ["--fault-map", s["root"] / "full.npz", "--placement", tmp_path / "junk.npz"],
         "not a placement file", out)
    cmap = s["cmap"]
    wrong = {f"L{i:04d}": np.zeros((2, 1, layer.matrix_shape[0] + 3, layer.matrix_shape[1]), np.uint8)
             for i, layer in enumerate(cmap.layers)}
    np.savez(tmp_path / "wrong.npz", **wrong)  # neither the used cells nor full tiles
    _bad(capsys, ["place", s["art"], "--fault-map", tmp_path / "wrong.npz", "--out", tmp_path / "w"], "shape",
         tmp_path / "w" / "placement.npz")

"""ONNX from anywhere (issue 35): a small CNN exported by ``torch.onnx.export`` with its defaults
(BN folded in eval mode, a fixed batch size), not by the toolchain, and one without any BN, through
passes, quantize, validate and validate --calibrate (targets measured on the fault-free model),
from the command line and from the pipeline; --mean/--std for a model that records no
normalisation; 1x1 padding only where it helps, its cell cost reported either way."""
import json
import shutil
import warnings

import numpy as np
import onnx
import pytest

from runtime.artifact import Artifact
from runtime.metadata import BN_TARGETS_KEY, NORMALIZATION_KEY, read_metadata
from runtime.results import read_results

from conftest import make_cifar, one_line_error, one_thread, run_cli

_one_thread = pytest.fixture(autouse=True)(one_thread)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
BATCH = 8  # the exported models' fixed batch size
FLAGS = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]


def _cnn(bn: bool):
    import torch.nn as nn

    def block(i, o, k, s):
        return [nn.Conv2d(i, o, k, s, k // 2, bias=not bn), *([nn.BatchNorm2d(o)] if bn else []), nn.ReLU()]

    return nn.Sequential(*block(3, 8, 3, 1), *block(8, 16, 3, 2), *block(16, 16, 1, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _export(data, path, bn: bool):
    """The CNN trained a few steps on the class-coloured images (so that faults cost accuracy),
    then exported by torch.onnx.export with its defaults only."""
    import torch

    from toolchain.data import load_split

    train = load_split(data, "train", use_cache=False, progress=False)
    x = (torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255 - MEAN[0]) / STD[0]
    y = torch.from_numpy(train.labels)
    torch.manual_seed(0)
    model = _cnn(bn)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(60):
        idx = torch.arange(step * 32, step * 32 + 32) % len(y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(BATCH, 3, 32, 32),), str(path))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("anywhere")
    data = make_cifar(root / "data", per_batch=32, test=64)
    return {"data": data, "bn": _export(data, root / "bn.onnx", True),
            "plain": _export(data, root / "plain.onnx", False)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RRAM_CACHE", str(tmp_path / "cache"))


def test_the_exports_are_what_the_issue_describes(world):
    for kind in ("bn", "plain"):
        m = onnx.load(str(world[kind]))
        assert "BatchNormalization" not in {n.op_type for n in m.graph.node}  # folded (bn) or never there
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == BATCH  # a fixed batch size
        assert NORMALIZATION_KEY not in read_metadata(m)


@pytest.mark.parametrize("kind", ["bn", "plain"])
def test_command_line_flow(world, kind, tmp_path, capsys):
    data, src = world["data"], world[kind]
    passed, art = tmp_path / "p.onnx", tmp_path / "art"
    code, out, _ = run_cli(capsys, "passes", src, passed, "--passes", "standard", *FLAGS)
    assert code == 0 and "1x1 padding not applied" in out
    meta = read_metadata(onnx.load(str(passed)))
    assert json.loads(meta[NORMALIZATION_KEY]) == {"mean": list(MEAN), "std": list(STD)}
    assert BN_TARGETS_KEY not in meta  # the exporter folded BN (or there was none): nothing to record
    assert run_cli(capsys, "quantize", passed, art)[0] == 0
    common = ["--data", data, "--sa1", "0,0.2", "--runs", "3"]
    assert run_cli(capsys, "validate", art, *common, "--out", tmp_path / "v.json")[0] == 0
    assert run_cli(capsys, "validate", art, *common, "--calibrate", "20", "--out", tmp_path / "c.json")[0] == 0
    plain, calibrated = read_results(tmp_path / "v.json"), read_results(tmp_path / "c.json")
    cfg = calibrated["config"]
    assert cfg["calibrate"] == 20 and cfg["calibration_targets"] == "measured" and "normalization" not in cfg
    # measured targets leave a fault-free chip as it is; a faulty one is changed
    assert calibrated["clean"] == plain["clean"] and plain["clean"]["."] > 0.3
    runs = [[r["accuracy"] for r in d["rates"][1]["runs"].values()] for d in (plain, calibrated)]
    assert runs[0] != runs[1]
    if kind == "plain":  # measured targets in the deployed int8 graph too
        assert run_cli(capsys, "validate", art, "--data", data, "--sa1", "0.2", "--runs", "1", "--images", "32",
                       "--precision", "int8", "--calibration-images", "32", "--calibrate", "16",
                       "--out", tmp_path / "i.json")[0] == 0
        assert read_results(tmp_path / "i.json")["config"]["calibration_targets"] == "measured"


def test_a_model_without_normalisation_takes_mean_and_std(world, tmp_path, capsys):
    art = tmp_path / "art"
    assert run_cli(capsys, "quantize", world["plain"], art)[0] == 0  # straight from the exporter
    base = ["--data", world["data"], "--sa1", "0.1", "--runs", "2", "--images", "32"]
    code, _, err = run_cli(capsys, "validate", art, *base, "--out", tmp_path / "x.json")
    assert code == 2 and "--mean" in one_line_error(err) and not (tmp_path / "x.json").exists()
    assert run_cli(capsys, "validate", art, *base, *FLAGS, "--calibrate", "8", "--out", tmp_path / "v.json")[0] == 0
    cfg = read_results(tmp_path / "v.json")["config"]
    assert cfg["normalization"] == {"mean": list(MEAN), "std": list(STD)} and cfg["calibration_targets"] == "measured"
    code, _, err = run_cli(capsys, "validate", art, *base, "--mean", "0.4,0.5,0.5", "--std", "1,1,1",
                           "--out", tmp_path / "y.json")
    assert code == 0  # another normalisation is another campaign: it runs and says so
    assert read_results(tmp_path / "y.json")["config"]["normalization"]["mean"] == [0.4, 0.5, 0.5]
    assert run_cli(capsys, "sensitivity", art, "--data", world["data"], "--sa1", "0.1", "--runs", "1", "--images",
                   "16", "--calibrate", "8", *FLAGS, "--out", tmp_path / "s.json")[0] == 0
    assert json.loads((tmp_path / "s.json").read_text())["config"]["normalization"]["std"] == list(STD)
    # a model that records its own normalisation refuses another
    recorded = tmp_path / "r.onnx"
    assert run_cli(capsys, "passes", world["plain"], recorded, *FLAGS)[0] == 0
    assert run_cli(capsys, "quantize", recorded, tmp_path / "art2")[0] == 0
    code, _, err = run_cli(capsys, "validate", tmp_path / "art2", *base, "--mean", "0.1,0.1,0.1", "--std", "1,1,1",
                           "--out", tmp_path / "z.json")
    assert code == 2 and "records its own input normalisation" in one_line_error(err)


def test_a_measured_chip_calibration_file_round_trips(world, tmp_path, capsys):
    from runtime.faults import run_seed, sample_chip, save_fault_map

    passed, art = tmp_path / "p.onnx", tmp_path / "art"
    assert run_cli(capsys, "passes", world["bn"], passed, *FLAGS)[0] == 0
    assert run_cli(capsys, "quantize", passed, art)[0] == 0
    cmap = Artifact.load(art).first.cmap
    save_fault_map(tmp_path / "chip.npz", cmap, sample_chip(cmap.cell_count(), 0.2, 0.0, run_seed(1, 0.2, 0.0, 0)))
    data = ["--data", world["data"], "--fault-map", tmp_path / "chip.npz"]
    assert run_cli(capsys, "calibrate", art, *data, "--calibrate", "16", "--out", tmp_path / "cal")[0] == 0
    doc = json.loads((tmp_path / "cal" / "chip-calibration.json").read_text())
    assert doc["targets"] == "measured" and len(doc["layers"]) == len(cmap.layers)  # every mapped layer
    assert run_cli(capsys, "validate", art, *data, "--chip-calibration", tmp_path / "cal" / "chip-calibration.json",
                   "--out", tmp_path / "a.json")[0] == 0
    assert run_cli(capsys, "validate", art, *data, "--calibrate", "16", "--out", tmp_path / "b.json")[0] == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["chip"]["accuracy"] == b["chip"]["accuracy"]
    code, _, err = run_cli(capsys, "validate", art, *data, "--calibrate", "16", "--calibration-targets", "bn",
                           "--out", tmp_path / "c.json")
    assert code == 2 and "records no BN targets" in one_line_error(err)


def test_measured_targets_bring_a_faulty_chip_back_to_the_fault_free_statistics(world, tmp_path, capsys):
    """On the calibration images, every calibrated layer of a calibrated faulty chip has the
    fault-free model's per-channel mean and variance (the definition of a measured target)."""
    from runtime.artifact.deployed import append_initializers
    from runtime.calibration import CalibrationImages, calibrated_layers, measured_targets
    from runtime.engine import Engine
    from runtime.faults import sample_chip
    from runtime.metadata import Normalization, normalize_images
    from runtime.session import make_session

    passed, art = tmp_path / "p.onnx", tmp_path / "art"
    assert run_cli(capsys, "passes", world["plain"], passed, *FLAGS)[0] == 0
    assert run_cli(capsys, "quantize", passed, art)[0] == 0
    model = Artifact.load(art).first
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    engine = Engine(model, calib[:8], np.zeros(8, np.int64), calibrate=calib)
    assert engine.targets_kind == "measured"
    weights = engine.weights(sample_chip(model.cmap.cell_count(), 0.2, 0.0, 5))
    names, arrays = engine.calibrator.evaluated(weights, engine.calibrator.measure(weights))
    chip = append_initializers(engine.calibrator.eval_base, names, arrays)
    norm = Normalization(MEAN, STD)
    images = CalibrationImages(model.input_name, calib, lambda x: normalize_images(x, norm))
    layers = calibrated_layers(model.base_model(), model.weight_names)
    assert len(layers) == len(model.cmap.layers) == 4
    got = measured_targets(chip, layers, images, make_session, fixed=BATCH)
    want = engine.calibrator.targets
    for layer in layers:
        np.testing.assert_allclose(got[layer].beta, want[layer].beta, rtol=1e-3, atol=1e-4)  # the mean
        np.testing.assert_allclose(got[layer].gamma, want[layer].gamma, rtol=1e-3, atol=1e-4)  # sqrt(var + floor)


@pytest.mark.parametrize("kind", ["bn", "plain"])
def test_pipeline_flow(world, kind, tmp_path, capsys):
    shutil.copytree(world["data"], tmp_path / "data")
    for f in world[kind].parent.glob(world[kind].name + "*"):  # the exporter keeps the weights in NAME.onnx.data
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "p.toml").write_text(f"""\
out = "run"
data = "data"

[model]
onnx = "{world[kind].name}"
mean = {list(MEAN)}
std = {list(STD)}

[validate]
sa1 = [0.0, 0.2]
runs = 2
images = 32
calibrate = 16
""")
    code, out, _ = run_cli(capsys, "pipeline", tmp_path / "p.toml")
    assert code == 0, out
    run = tmp_path / "run"
    plain, calibrated = (read_results(run / "model" / f) for f in ("results.json", "results-calibrated.json"))
    assert calibrated["config"]["calibration_targets"] == "measured" and calibrated["clean"] == plain["clean"]
    report = (run / "report.md").read_text()
    assert f"the ONNX model `{world[kind].name}`" in report and "**BN re-alignment**" not in report
    assert f"| model | {100 * plain['clean']['.']:.2f}% |" in report
    code, out, _ = run_cli(capsys, "pipeline", tmp_path / "p.toml")  # nothing changed: nothing runs
    assert code == 0 and "0 of 4 steps ran" in out


def test_pipeline_config_of_an_onnx_model_is_checked(world, tmp_path, capsys):
    head = f'out = "run"\ndata = "."\n\n[model]\nonnx = "{world["plain"]}"\n'
    tail = "\n[validate]\nsa1 = [0.1]\n"
    for extra, words in (('checkpoint = "x.pt"\n', "drop model.checkpoint"),
                         ("mean = [0.5, 0.5, 0.5]\n", "model.mean and model.std go together"),
                         ("mean = [0.5]\nstd = [1.0]\n", "three numbers each")):
        (tmp_path / "p.toml").write_text(head + extra + tail)
        code, _, err = run_cli(capsys, "pipeline", tmp_path / "p.toml", "--dry-run")
        assert code == 2 and words in one_line_error(err)
    (tmp_path / "p.toml").write_text(head + tail + "\n[recalibrate]\nrates = [0.0]\n")
    code, _, err = run_cli(capsys, "pipeline", tmp_path / "p.toml", "--dry-run")
    assert code == 2 and "drop recalibrate" in one_line_error(err)


def test_padding_only_where_it_helps_and_its_cost_reported_either_way(world, tmp_path, capsys):
    src = world["plain"]
    code, out, _ = run_cli(capsys, "passes", src, tmp_path / "a.onnx", "--json")
    assert code == 0
    pad = json.loads(out)["padding"]
    # 3x3x3x8 + 8x3x3x16 + 16x16 (the 1x1) + 16x10 weights, two cells each (paper preset)
    assert pad["convs_1x1"] == 1 and pad["cells"] == 2 * (216 + 1152 + 256 + 160) and not pad["applied"]
    assert pad["cells_padded"] == pad["cells"] + 2 * 8 * 256
    kernels = {tuple(a.ints) for n in onnx.load(str(tmp_path / "a.onnx")).graph.node for a in n.attribute
               if a.name == "kernel_shape"}
    assert (1, 1) in kernels
    code, out, _ = run_cli(capsys, "passes", src, tmp_path / "b.onnx", "--pad-1x1")
    assert code == 0 and "1x1 padding applied (requested)" in out and "3,568 to 7,664" in out
    kernels = {tuple(a.ints) for n in onnx.load(str(tmp_path / "b.onnx")).graph.node for a in n.attribute
               if a.name == "kernel_shape"}
    assert kernels == {(3, 3)}
    # a model that `rram export` recorded as trained padded is padded by default
    m = onnx.load(str(src))
    m.metadata_props.add(key="rram.model", value=json.dumps({"name": "resnet20", "padded": True}))
    onnx.save(m, str(tmp_path / "padded.onnx"))
    code, out, _ = run_cli(capsys, "passes", tmp_path / "padded.onnx", tmp_path / "c.onnx")
    assert code == 0 and "1x1 padding applied (trained padded" in out


# --- the README's "Bring your own ONNX" block runs as written (smaller sizes) ----------------------

BYO_SMALLER = [("--runs 10 --images 2000 --calibrate 256", "--runs 2 --images 200 --calibrate 64")]


def byo_block() -> str:
    import re

    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    return re.search(r"```sh\n(.*?)```", text[text.index("### Bring your own ONNX"):], re.S).group(1)


def test_the_byo_block_holds_what_the_test_shrinks():
    block = byo_block()
    for old, _ in BYO_SMALLER:
        assert old in block


@pytest.mark.slow
def test_readme_bring_your_own_onnx_runs_as_written(tmp_path, shared_data, shared_resnet20, real_data_cache):
    from conftest import run_readme_block

    work = run_readme_block(byo_block(), BYO_SMALLER, tmp_path, real_data_cache)
    doc = read_results(work / "byo" / "r20.json")
    assert doc["config"]["calibrate"] == 64 and doc["config"]["calibration_targets"] == "measured"
    assert doc["clean"]["."] > 0.7 and doc["complete"]  # a working model, calibrated to measured targets

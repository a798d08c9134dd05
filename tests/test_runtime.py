"""Fault model, onnxruntime engine and validate campaigns on a tiny artifact (fast)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from runtime.artifact import (
    Artifact,
    DeployedModel,
    append_initializers,
    load_map,
    save_map,
)
from runtime.campaign import validate, validate_fault_map
from runtime.crossbar import (
    PRESETS,
    SA1_LEVEL,
    DeviceConfig,
    preset,
    sa0_level,
)
from runtime.engine import Engine
from runtime.errors import RuntimeInputError
from runtime.faults import (
    OK,
    SA0,
    SA1,
    Chip,
    apply_faults,
    faulty_levels,
    load_fault_map,
    run_seed,
    sample_chip,
    save_fault_map,
    split_codes,
)
from runtime.fileio import file_sha256
from runtime.int8 import prepare_int8, quantize_input, streamline_int8
from runtime.metadata import normalize_images
from runtime.results import merge, read_results
from toolchain.cli import main
from toolchain.data import subset_indices

from _runtime_helpers import (
    NORM,
    export_torch,
    int8_kernels_exact,
    make_artifact,
    make_images,
    quantize_onnx,
    tiny_model,
    write_cifar_batches,
)


@pytest.fixture
def art(paper_art):
    return paper_art


@pytest.fixture
def data(small_images):
    return small_images(48)


def identity(doc):
    return {k: doc[k] for k in ("config", "clean", "rates", "complete")}


# ------------------------------------------------------------------ fault model

@pytest.mark.parametrize("p1,p0", [(0.1, 0.0), (0.02, 0.05), (0.3, 0.2)])
def test_stuck_fraction_matches_rate(p1, p0):
    n = 400_000
    chip = sample_chip(n, p1, p0, run_seed(7, p1, p0, 3))
    for got, p in ((chip.sa1_fraction, p1), (chip.sa0_fraction, p0), (chip.stuck_fraction, p1 + p0)):
        assert abs(got - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (got, p)


def test_same_seed_same_chip_and_rates_distinct():
    a = sample_chip(10_000, 0.1, 0.01, run_seed(1, 0.1, 0.01, 0))
    b = sample_chip(10_000, 0.1, 0.01, run_seed(1, 0.1, 0.01, 0))
    c = sample_chip(10_000, 0.1, 0.01, run_seed(1, 0.1, 0.01, 1))
    assert np.array_equal(a.codes, b.codes) and not np.array_equal(a.codes, c.codes)


@pytest.mark.parametrize("name", sorted(PRESETS) + ["offset"])
def test_stuck_cells_sit_at_gmin_and_gmax_exactly(name):
    """SA1 cells at level 0 (G_min), SA0 cells at level L-1 (G_max: runtime/crossbar.py maps the
    level to the conductance linearly), every other cell unchanged."""
    device = DeviceConfig(bits_per_cell=4, cells_per_weight=2, encoding="offset") if name == "offset" else preset(name)
    rng = np.random.default_rng(0)
    levels = rng.integers(0, device.levels, (device.planes, device.cells_per_weight, 20, 30), dtype=np.uint8)
    codes = rng.choice(np.array([OK, SA1, SA0], np.uint8), size=levels.shape, p=[0.6, 0.2, 0.2])
    faulty = apply_faults(levels, codes, sa0_level(device))
    assert SA1_LEVEL == 0 and sa0_level(device) == device.levels - 1
    assert np.all(faulty[codes == SA1] == 0)
    assert np.all(faulty[codes == SA0] == device.levels - 1)
    assert np.array_equal(faulty[codes == OK], levels[codes == OK])


def test_differential_sa1_zeroes_only_through_the_active_cell(art):
    dm = DeployedModel.load(art)
    layer = dm.cmap.layers[1]
    q = layer.integer_weight(device=dm.cmap.device)
    codes = np.full(dm.cmap.cell_count(), SA1, np.uint8)  # every cell at G_min
    w = dm.chip_weights(Chip(codes))
    assert all(not np.any(x) for x in w)
    # SA1 on the inactive plane only: nothing changes
    per_layer = [np.zeros(lay.levels.shape, np.uint8) for lay in dm.cmap.layers]
    inactive = np.where(layer.levels[0, 0] > 0, 1, 0)  # positive weights: plane 1 (G-) is inactive
    per_layer[1][1, 0][layer.levels[0, 0] > 0] = SA1
    per_layer[1][0, 0][layer.levels[1, 0] > 0] = SA1  # and G+ of negative weights
    assert inactive.any()
    w = dm.chip_weights(Chip(np.concatenate([c.ravel() for c in per_layer])))
    assert all(np.array_equal(a, b) for a, b in zip(w, dm.clean_weights()))
    # SA0 on the inactive cell of a positive weight: q - qmax
    per_layer = [np.zeros(lay.levels.shape, np.uint8) for lay in dm.cmap.layers]
    per_layer[1][1, 0][layer.levels[0, 0] > 0] = SA0
    lv = faulty_levels(dm.cmap, np.concatenate([c.ravel() for c in per_layer]))[1]
    got = layer.integer_weight(lv, dm.cmap.device)
    pos = q > 0
    assert np.array_equal(got[pos], q[pos] - dm.cmap.device.qmax)


# ------------------------------------------------------------------ engine

def test_engine_matches_the_qdq_model(art, data):
    images, labels = data
    dm = DeployedModel.load(art)
    x = normalize_images(images, NORM)
    ref = ort.InferenceSession(str(art / "model.onnx")).run(None, {dm.input_name: x})[0]
    eng = Engine(dm, images, labels, batch_size=16)
    got = eng.session().run(None, {dm.input_name: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert eng.clean_accuracy() == pytest.approx(float(np.mean(ref.argmax(1) == labels)))


def test_chip_weights_reach_onnxruntime(art, data):
    """The per-chip model computes with exactly the faulty weights (checked against a model with the
    faulty weights re-serialised as ordinary initializers)."""
    images, labels = data
    dm = DeployedModel.load(art)
    chip = sample_chip(dm.cmap.cell_count(), 0.3, 0.05, run_seed(0, 0.3, 0.05, 0))
    w = dm.chip_weights(chip)
    m = onnx.ModelProto.FromString(dm.model_bytes_with(None))
    for t in m.graph.initializer:
        if t.name in dm.weight_names:
            t.CopyFrom(onnx.numpy_helper.from_array(w[dm.weight_names.index(t.name)], t.name))
    x = normalize_images(images, NORM)
    ref = ort.InferenceSession(m.SerializeToString()).run(None, {dm.input_name: x})[0]
    got = Engine(dm, images, labels).session(w).run(None, {dm.input_name: x})[0]
    np.testing.assert_array_equal(got, ref)
    clean = Engine(dm, images, labels).session().run(None, {dm.input_name: x})[0]
    assert not np.allclose(got, clean)


# ------------------------------------------------------------------ campaigns

def test_same_seed_same_numbers(art, data, tmp_path):
    a = validate(art, *data, sa1=[0.0, 0.2], sa0=0.01, runs=3, seed=5, progress=False)
    b = validate(art, *data, sa1=[0.0, 0.2], sa0=0.01, runs=3, seed=5, progress=False)
    c = validate(art, *data, sa1=[0.0, 0.2], sa0=0.01, runs=3, seed=6, progress=False)
    assert identity(a) == identity(b)
    assert identity(a)["rates"] != identity(c)["rates"]
    s = a["rates"][1]["summary"]
    accs = [v["accuracy"] for v in a["rates"][1]["runs"].values()]
    assert s["n"] == 3 and s["mean"] == pytest.approx(np.mean(accs)) and s["min"] == min(accs)
    assert s["std"] == pytest.approx(np.std(accs, ddof=1))
    assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    assert a["clean"]["."] > 0.5


def test_shards_merged_equal_one_run(art, data, tmp_path):
    kw = dict(sa1=[0.1, 0.3], runs=3, seed=1, progress=False)
    full = validate(art, *data, out=tmp_path / "full.json", **kw)
    for k in (1, 2, 3):
        validate(art, *data, shard=(k, 3), out=tmp_path / f"s{k}.json", **kw)
    assert not read_results(tmp_path / "s1.json")["complete"]
    merged = merge([tmp_path / f"s{k}.json" for k in (3, 1, 2)])
    assert identity(merged) == identity(full)
    assert identity(read_results(tmp_path / "full.json")) == identity(full)
    # the CLI writes the same
    assert main(["merge", *(str(tmp_path / f"s{k}.json") for k in (1, 2, 3)), "--out", str(tmp_path / "m.json")]) == 0
    assert identity(read_results(tmp_path / "m.json")) == identity(full)


def test_resume_after_kill_loses_no_finished_run(art, data, tmp_path, monkeypatch):
    kw = dict(sa1=[0.1, 0.2], runs=3, seed=2, progress=False)
    full = validate(art, *data, **kw)
    out = tmp_path / "r.json"
    real, calls = Engine.chip_accuracy, []

    def dying(self, chip):
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed in the middle of the fifth chip
        calls.append(1)
        return real(self, chip)

    monkeypatch.setattr(Engine, "chip_accuracy", dying)
    with pytest.raises(KeyboardInterrupt):
        validate(art, *data, out=out, **kw)
    partial = read_results(out)
    assert sum(len(e["runs"]) for e in partial["rates"]) == 4 and not partial["complete"]
    monkeypatch.setattr(Engine, "chip_accuracy", real)
    with pytest.raises(RuntimeInputError, match="--resume"):
        validate(art, *data, out=out, **kw)
    calls.clear()
    monkeypatch.setattr(Engine, "chip_accuracy", lambda self, chip: calls.append(1) or real(self, chip))
    resumed = validate(art, *data, out=out, resume=True, **kw)
    assert len(calls) == 2  # only the missing chips ran
    assert identity(resumed) == identity(full)


def test_stats_rate_picks_the_nearest_recalibrated_model(tmp_path, data):
    root = tmp_path / "multi"
    for r in (0.0, 0.1, 0.3):
        make_artifact(root / f"rate-{r}", preset("paper"), seed=0, bn_rate=r)
    a = Artifact.load(root)
    assert [a.select(p, "auto") for p in (0.0, 0.04, 0.06, 0.2, 0.25, 1.0)] == \
        ["rate-0.0", "rate-0.0", "rate-0.1", "rate-0.1", "rate-0.3", "rate-0.3"]
    assert a.select(0.3, 0.1) == "rate-0.1"
    with pytest.raises(RuntimeInputError, match="no model for stats rate"):
        a.select(0.3, 0.2)
    doc = validate(a, *data, sa1=[0.0, 0.25], runs=1, progress=False)
    assert [e["model"] for e in doc["rates"]] == ["rate-0.0", "rate-0.3"]
    assert set(doc["clean"]) == {"rate-0.0", "rate-0.3"}


def test_measured_fault_map_is_applied_cell_for_cell(art, data, tmp_path):
    dm = DeployedModel.load(art)
    chip = sample_chip(dm.cmap.cell_count(), 0.15, 0.05, run_seed(3, 0.15, 0.05, 0))
    save_fault_map(tmp_path / "chip.npz", dm.cmap, chip)
    loaded = load_fault_map(tmp_path / "chip.npz", dm.cmap)
    assert np.array_equal(loaded.codes, chip.codes)
    # per cell: every SA1 cell reads level 0, every SA0 cell L-1, the rest unchanged
    for layer, codes, lv in zip(dm.cmap.layers, split_codes(dm.cmap, chip.codes), faulty_levels(dm.cmap, chip.codes)):
        assert np.all(lv[codes == SA1] == SA1_LEVEL) and np.all(lv[codes == SA0] == sa0_level(dm.cmap.device))
        assert np.array_equal(lv[codes == OK], layer.levels[codes == OK])
    # keyed by initializer name works too
    by_name = {lay.name: c for lay, c in zip(dm.cmap.layers, split_codes(dm.cmap, chip.codes))}
    np.savez(tmp_path / "named.npz", **by_name)
    assert np.array_equal(load_fault_map(tmp_path / "named.npz", dm.cmap).codes, chip.codes)
    doc = validate_fault_map(art, *data, tmp_path / "chip.npz")
    assert doc["chip"]["accuracy"] == Engine(dm, *data).chip_accuracy(chip)
    assert doc["chip"]["stuck_fraction"] == chip.stuck_fraction


def test_cli_validate_merge_plot(art, data, tmp_path):
    root = write_cifar_batches(tmp_path / "cifar", *data)
    out = tmp_path / "res.json"
    args = ["validate", str(art), "--data", str(root), "--no-cache", "--sa1", "0,0.2", "--runs", "2",
            "--seed", "3", "--out", str(out)]
    assert main(args) == 0
    doc = read_results(out)
    assert doc["complete"] and doc["config"]["images"] == len(data[1])
    assert identity(doc) == identity(validate(art, *data, sa1=[0.0, 0.2], runs=2, seed=3, progress=False))
    assert main(["plot", str(out), str(out), "--labels", "a,b", "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args[:-2] + ["--images", "10", "--out", str(tmp_path / "ten.json")]) == 0
    assert read_results(tmp_path / "ten.json")["config"]["images"] == 10
    assert list(subset_indices(100, 4)) == [0, 25, 50, 75]


# ------------------------------------------------------------------ bad input

def _err(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("rram: error:") and "\n" not in err, err
    return err


def test_bad_inputs_one_line_error_nothing_overwritten(art, data, tmp_path, capsys, make_tiny_artifact):
    root = write_cifar_batches(tmp_path / "cifar", *data)
    out = tmp_path / "res.json"
    base = ["validate", str(art), "--data", str(root), "--no-cache", "--runs", "1", "--out", str(out)]
    assert "[0, 1]" in _err(capsys, base + ["--sa1", "0.1,1.5"])
    assert "[0, 1]" in _err(capsys, base + ["--sa1", "-0.1"])
    assert "exceed 1" in _err(capsys, base + ["--sa1", "0.6", "--sa0", "0.5"])
    assert "at least 1" in _err(capsys, base[:-4] + ["--runs", "0", "--out", str(out)])
    assert not out.exists()

    assert main(base + ["--sa1", "0.1", "--seed", "1"]) == 0
    before = out.read_bytes()
    assert "--resume" in _err(capsys, base + ["--sa1", "0.1", "--seed", "1"])
    assert "different configuration" in _err(capsys, base + ["--sa1", "0.1", "--seed", "2", "--resume"])
    assert out.read_bytes() == before

    other = tmp_path / "other.json"
    assert main(base[:-1] + [str(other), "--sa1", "0.2", "--seed", "1"]) == 0
    merged = tmp_path / "merged.json"
    assert "different configuration" in _err(capsys, ["merge", str(out), str(other), "--out", str(merged)])
    assert not merged.exists()

    # artifact without a conductance map / map of another model
    bare = tmp_path / "bare"
    shutil.copytree(art, bare)
    (bare / "crossbars.npz").unlink()
    assert "no conductance map" in _err(capsys, base[:1] + [str(bare)] + base[2:] + ["--sa1", "0.1"])
    other_art = make_tiny_artifact(seed=1)
    mixed = tmp_path / "mixed"
    shutil.copytree(art, mixed)
    shutil.copy(other_art / "model.onnx", mixed / "model.onnx")
    assert "different model.onnx" in _err(capsys, base[:1] + [str(mixed)] + base[2:] + ["--sa1", "0.1"])
    cmap = load_map(mixed)  # same map with a forged hash: the content check still catches it
    cmap.model_sha256 = file_sha256(mixed / "model.onnx")
    save_map(cmap, mixed)
    assert "does not match" in _err(capsys, base[:1] + [str(mixed)] + base[2:] + ["--sa1", "0.1"])
    assert out.read_bytes() == before  # no failed call above touched the --out file

    # fault map of the wrong shape
    dm = DeployedModel.load(art)
    codes = split_codes(dm.cmap, np.zeros(dm.cmap.cell_count(), np.uint8))
    codes[0] = codes[0][..., :-1]
    np.savez(tmp_path / "bad.npz", **{f"L{i:04d}": c for i, c in enumerate(codes)})
    chip_out = tmp_path / "chip.json"
    chip = base[:5] + ["--out", str(chip_out)]  # one measured chip: no campaign options (--runs is refused)
    assert "shape" in _err(capsys, chip + ["--fault-map", str(tmp_path / "bad.npz")])
    codes[0] = np.full(dm.cmap.layers[0].levels.shape, 3, np.uint8)
    np.savez(tmp_path / "bad3.npz", **{f"L{i:04d}": c for i, c in enumerate(codes)})
    assert "codes must be" in _err(capsys, chip + ["--fault-map", str(tmp_path / "bad3.npz")])
    assert not chip_out.exists()
    assert "not found" in _err(capsys, ["merge", str(tmp_path / "nope.json"), "--out", str(merged)])
    assert "k/n" in _err(capsys, base + ["--sa1", "0.1", "--shard", "3/2", "--resume"])


# ------------------------------------------------------------------ int8 path

def test_int8_engine_computes_with_the_crossbar_integers(art, data, tmp_path, make_tiny_artifact):
    images, labels = data
    dm = DeployedModel.load(art)
    calib = make_images(64, seed=1)[0]
    e8 = Engine(dm, images, labels, precision="int8", calibration=calib)
    e32 = Engine(dm, images, labels)
    streamlined = e8.int8.input_quant is not None  # False where the CPU's int8 kernels saturate (no VNNI)
    assert streamlined == int8_kernels_exact()
    if streamlined:  # exact integer arithmetic: int8 tracks fp32 (saturating kernels: see the logits below)
        assert abs(e8.clean_accuracy() - e32.clean_accuracy()) <= 0.1
    chip = sample_chip(dm.cmap.cell_count(), 0.2, 0.05, run_seed(0, 0.2, 0.05, 0))
    w8 = e8.weights(chip)
    if streamlined:  # RGB input padded to 4 channels for onnxruntime's fast int8 conv: conv1 gets a zero channel
        assert e8.int8.padded_layers == {0: 1} and e8.feed.dtype == np.uint8 and e8.feed.shape[1:] == (32, 32, 4)
    else:
        assert e8.int8.padded_layers == {} and e8.feed is e8.x
    for layer, lv, w in zip(dm.cmap.layers, faulty_levels(dm.cmap, chip.codes), w8):
        q = layer.integer_weight(lv, dm.cmap.device)
        assert w.dtype == np.int8 and np.array_equal(w[:, :q.shape[1]], q) and not np.any(w[:, q.shape[1]:])
    # the quantized graph dequantises exactly those integers with the crossbar scales
    m = onnx.ModelProto.FromString(e8.int8.model)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    for layer, name in zip(dm.cmap.layers, e8.int8.weight_names):
        dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == name)
        assert np.array_equal(inits[dq.input[1]], layer.scales)
    out8 = e8.session(w8).run(None, {e8.feed_name: e8.feed})[0]
    out32 = e32.session(dm.chip_weights(chip)).run(None, {dm.input_name: e32.x})[0]
    assert np.corrcoef(out8.ravel(), out32.ravel())[0, 1] > 0.95
    # the graph the engine runs (streamlined: uint8 NHWC input quantised once) equals onnxruntime's
    # own QDQ graph bit for bit, on a faulty chip too
    plain = prepare_int8(dm, normalize_images(calib, NORM), streamline=False)
    assert plain.input_quant is None and plain.input_name == dm.input_name
    ref = ort.InferenceSession(append_initializers(plain.model, plain.weight_names, plain.layer_weights(
        [lay.integer_weight(lv, dm.cmap.device)
         for lay, lv in zip(dm.cmap.layers, faulty_levels(dm.cmap, chip.codes))])))
    assert np.array_equal(out8, ref.run(None, {dm.input_name: e32.x})[0])
    doc = validate(art, images, labels, sa1=[0.1], runs=1, progress=False, precision="int8", calibration=calib)
    assert doc["config"]["precision"] == "int8"
    wide = make_tiny_artifact("mlc4")  # int16 weights, opset 21
    assert validate(wide, images, labels, sa1=[0.0], runs=1, progress=False)["rates"][0]["summary"]["mean"] \
        == Engine(DeployedModel.load(wide), images, labels).clean_accuracy()


class OptionAShortcut(torch.nn.Module):
    """ResNet20's downsampling block: the shortcut subsamples and zero-pads channels (Slice + Pad)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        short = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8), "constant", 0)
        x = torch.relu(self.conv2(x) + short)
        return self.fc(x.mean((2, 3)))


def test_int8_streamlining_pads_on_integers_and_keeps_logits(tmp_path):
    onx = export_torch(OptionAShortcut().eval(), torch.zeros(1, 3, 32, 32), tmp_path / "f.onnx")
    art = quantize_onnx(onx, tmp_path / "art", preset("paper"), normalization=NORM)
    dm = DeployedModel.load(art)
    calib = normalize_images(make_images(64, seed=2)[0], NORM)
    plain = prepare_int8(dm, calib, streamline=False)
    fast = streamline_int8(onnx.ModelProto.FromString(plain.model), plain.weight_names, plain.input_name)
    g = onnx.ModelProto.FromString(fast.model).graph
    pads = [n for n in g.node if n.op_type == "Pad"]
    producer = {o: n.op_type for n in g.node for o in n.output}
    assert len(pads) == 1 and producer.get(pads[0].input[0]) != "DequantizeLinear"
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == dm.input_name for n in g.node)
    x = normalize_images(make_images(16, seed=4)[0], NORM)
    clean = [lay.integer_weight(device=dm.cmap.device) for lay in dm.cmap.layers]
    outs = [ort.InferenceSession(append_initializers(s.model, s.weight_names, s.layer_weights(clean)))
            .run(None, {s.input_name: quantize_input(x, s)})[0] for s in (plain, fast)]
    assert np.ptp(outs[0]) > 0
    # the engine runs the streamlined graph only where it is bit-exact on this CPU (AVX512-VNNI);
    # elsewhere onnxruntime's saturating int8 kernels make it differ, and the plain QDQ graph runs
    chosen = prepare_int8(dm, calib)
    if chosen.input_quant is not None:
        assert np.array_equal(*outs)
    else:
        assert not np.array_equal(*outs)


def test_offset_encoding_faults_push_weights_to_the_extremes():
    """The README's table for the offset encoding (k = 1): SA1 -> most negative, SA0 -> most positive."""
    from runtime.crossbar import decode, encode

    device = DeviceConfig(bits_per_cell=4, cells_per_weight=1, encoding="offset")
    q = np.arange(-device.qmax, device.qmax + 1, dtype=np.int32).reshape(1, -1)
    levels = encode(q, device)
    assert np.all(decode(apply_faults(levels, np.full(levels.shape, SA1, np.uint8), sa0_level(device)), device) == -8)
    assert np.all(decode(apply_faults(levels, np.full(levels.shape, SA0, np.uint8), sa0_level(device)), device) == 7)


def test_sigkill_mid_campaign_then_resume(art, data, tmp_path):
    """A real kill -9 of `rram validate`: the results file stays valid and --resume completes it
    to exactly the uninterrupted result."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = write_cifar_batches(tmp_path / "cifar", *data)
    out = tmp_path / "k.json"
    args = [sys.executable, "-m", "toolchain", "validate", str(art), "--data", str(root), "--no-cache",
            "--sa1", "0.1,0.3", "--runs", "60", "--seed", "4", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists():
            done = sum(len(e["runs"]) for e in read_results(out)["rates"])
            if done >= 3:
                break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_results(out)  # never a half-written file
    finished = {(e["sa1"], r): v for e in killed["rates"] for r, v in e["runs"].items()}
    assert 3 <= len(finished) < 120, len(finished)
    assert main(args[3:] + ["--resume"]) == 0
    resumed = read_results(out)
    for e in resumed["rates"]:
        for r, v in e["runs"].items():
            assert finished.get((e["sa1"], r), v) == v  # finished runs kept as they were
    assert identity(resumed) == identity(validate(art, *data, sa1=[0.1, 0.3], runs=60, seed=4, progress=False))


def test_resume_and_merge_follow_content_not_paths(art, data, tmp_path):
    """A moved artifact folder is the same artifact: shards run from two copies merge."""
    copy = tmp_path / "moved"
    shutil.copytree(art, copy)
    kw = dict(sa1=[0.2], runs=2, seed=8, progress=False)
    validate(art, *data, shard=(1, 2), out=tmp_path / "a.json", **kw)
    validate(copy, *data, shard=(2, 2), out=tmp_path / "b.json", **kw)
    assert identity(merge([tmp_path / "a.json", tmp_path / "b.json"])) == identity(validate(art, *data, **kw))


def test_review_bad_inputs_are_one_line_errors(tmp_path, capsys, paper_art):
    """Inputs found by review to crash with a traceback: a corrupt map, malformed results, an
    unknown figure type, an output path blocked by a file, two models for one BN rate, an
    artifact without input normalisation."""
    art = paper_art
    images, labels = make_images(16)
    root = write_cifar_batches(tmp_path / "data", images, labels)
    out = tmp_path / "res.json"
    base = ["validate", str(art), "--data", str(root), "--no-cache", "--runs", "1", "--sa1", "0.1"]

    assert main(base + ["--out", str(out)]) == 0
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in _err(capsys, base + ["--out", str(tmp_path / "file" / "r.json")])
    assert "cannot write a figure" in _err(capsys, ["plot", str(out), "--out", str(tmp_path / "f.xyz")])
    assert not (tmp_path / "f.xyz").exists()

    doc = json.loads(out.read_text())
    doc["rates"][0]["runs"] = [1, 2]
    (tmp_path / "broken.json").write_text(json.dumps(doc))
    broken = str(tmp_path / "broken.json")
    assert "malformed results" in _err(capsys, ["merge", broken, "--out", str(tmp_path / "m.json")])
    assert "malformed results" in _err(capsys, ["plot", broken, "--out", str(tmp_path / "p.png")])

    corrupt = tmp_path / "corrupt"
    shutil.copytree(art, corrupt)
    (corrupt / "crossbars.json").write_text("[]")
    c_out = ["--out", str(tmp_path / "c.json")]
    assert "not a crossbar map" in _err(capsys, ["validate", str(corrupt)] + base[2:] + c_out)
    doc = json.loads((art / "crossbars.json").read_text())
    doc["layers"][0]["tiles"] = [[0]]
    (corrupt / "crossbars.json").write_text(json.dumps(doc))
    assert "corrupt conductance map" in _err(capsys, ["validate", str(corrupt)] + base[2:] + c_out)

    multi = tmp_path / "multi"
    make_artifact(multi / "a", preset("paper"), bn_rate=0.1)
    make_artifact(multi / "b", preset("paper"), bn_rate=0.1)
    with pytest.raises(RuntimeInputError, match="same BN rate"):
        Artifact.load(multi)

    bare = tmp_path / "bare"
    onx = export_torch(tiny_model(), torch.zeros(1, 3, 32, 32), tmp_path / "f.onnx")
    quantize_onnx(onx, bare, preset("paper"))  # no rram.normalization metadata
    n_out = ["--out", str(tmp_path / "n.json")]
    assert "no input normalisation" in _err(capsys, ["validate", str(bare)] + base[2:] + n_out)
    assert not (tmp_path / "n.json").exists() and not (tmp_path / "c.json").exists()


def _export_keep_bn(module, path, batch=None, size=32):
    """Float ONNX with BatchNormalization kept (as `rram export` writes it); fixed batch if given."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(batch or 1, 3, size, size), str(path), dynamo=False,
                          do_constant_folding=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes=None if batch else {"input": {0: "n"}, "logits": {0: "n"}},
                          opset_version=17)
    return onnx.load(str(path))


def test_int8_keeps_a_batchnorm_that_follows_a_mapped_conv(tmp_path):
    """onnxruntime's pre-processing folds BN into the conv weight; pointing that weight at the
    crossbar integers would drop the BN factor (review: 10% accuracy). The weight check catches
    it and the graph is quantised without pre-processing."""
    model = tiny_model()
    with torch.no_grad():  # a BN far from the identity
        model.bn1.weight.copy_(torch.linspace(0.2, 3.0, 8))
        model.bn1.bias.copy_(torch.linspace(-0.5, 0.5, 8))
    onx = _export_keep_bn(model, tmp_path / "f.onnx")
    assert "BatchNormalization" in [n.op_type for n in onx.graph.node]
    art = quantize_onnx(onx, tmp_path / "art", preset("paper"), normalization=NORM)
    dm = DeployedModel.load(art)
    images, labels = make_images(48)
    e8 = Engine(dm, images, labels, precision="int8", calibration=make_images(64, seed=1)[0])
    e32 = Engine(dm, images, labels)
    assert "BatchNormalization" in [n.op_type for n in onnx.ModelProto.FromString(e8.int8.model).graph.node]
    out8 = e8.session().run(None, {e8.feed_name: e8.feed})[0]
    out32 = e32.session().run(None, {e32.feed_name: e32.feed})[0]
    assert np.corrcoef(out8.ravel(), out32.ravel())[0, 1] > 0.999  # 0.962 with the BN factor dropped


@pytest.mark.skipif(not int8_kernels_exact(), reason="onnxruntime's int8 kernels saturate on this CPU (no VNNI)")
def test_int8_bias_follows_the_crossbar_scales(tmp_path):
    """With one scale per layer the crossbar's weight scales differ from onnxruntime's per-channel
    ones; the fused int8 Conv/Gemm read the int32 bias in (input scale x weight scale) units, so
    the bias is re-expressed: fused and unfused evaluation of the same graph agree."""
    device = DeviceConfig(**{**preset("paper").to_dict(), "scale_granularity": "layer"})
    model = tiny_model()
    with torch.no_grad():
        model.fc.weight[:2] *= 0.1  # rows far below the layer's largest weight
        model.fc.bias.copy_(torch.linspace(-0.3, 0.3, 10))
    art = quantize_onnx(export_torch(model, torch.zeros(1, 3, 32, 32), tmp_path / "f.onnx"), tmp_path / "art",
                        device, normalization=NORM)
    dm = DeployedModel.load(art)
    images, labels = make_images(32)
    e8 = Engine(dm, images, labels, precision="int8", calibration=make_images(64, seed=1)[0])
    data = append_initializers(e8.int8.model, e8.int8.weight_names, e8.weights())
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        outs.append(ort.InferenceSession(data, so).run(None, {e8.feed_name: e8.feed})[0])
    spread = np.ptp(outs[1])
    assert np.max(np.abs(outs[0] - outs[1])) <= 0.02 * spread, np.max(np.abs(outs[0] - outs[1])) / spread


def test_input_shape_and_fixed_batch(tmp_path, capsys, make_tiny_artifact):
    images, labels = make_images(50)
    small = make_tiny_artifact(size=16)
    with pytest.raises(RuntimeInputError, match=r"3x16x16 \(C x H x W\), the data holds 3x32x32"):
        Engine(DeployedModel.load(small), images, labels)
    fixed = quantize_onnx(_export_keep_bn(tiny_model(), tmp_path / "b.onnx", batch=5), tmp_path / "fixed",
                          preset("paper"), normalization=NORM)
    dm = DeployedModel.load(fixed)
    eng = Engine(dm, images, labels, batch_size=128)
    assert eng.batch_size == 5 and 0 < eng.clean_accuracy() <= 1
    e8 = Engine(dm, images, labels, precision="int8", calibration=make_images(12, seed=1)[0])
    if int8_kernels_exact():  # AVX2-only CPUs: onnxruntime's int8 kernels saturate
        assert abs(e8.clean_accuracy() - eng.clean_accuracy()) <= 0.1
    with pytest.raises(RuntimeInputError, match="batches of exactly 5 images; 48 images"):
        Engine(dm, images[:48], labels[:48])
    with pytest.raises(RuntimeInputError, match="at least that many calibration images"):
        Engine(dm, images, labels, precision="int8", calibration=make_images(4, seed=1)[0])


def test_int8_refuses_a_shared_weight_in_one_line(tmp_path):
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.fc = torch.nn.Linear(3, 10)

        def forward(self, x):
            return self.fc(self.conv(torch.relu(self.conv(x))).mean((2, 3)))

    art = quantize_onnx(export_torch(Twice(), torch.zeros(1, 3, 32, 32), tmp_path / "f.onnx"), tmp_path / "art",
                        preset("paper"), normalization=NORM)
    images, labels = make_images(8)
    assert 0 <= Engine(DeployedModel.load(art), images, labels).clean_accuracy() <= 1  # fp32 runs it
    with pytest.raises(RuntimeInputError, match=r"feeds 2 node\(s\) \(Conv\).*use --precision fp32"):
        Engine(DeployedModel.load(art), images, labels, precision="int8", calibration=images)


def test_seed_and_results_files_are_checked(art, data, tmp_path, capsys):
    root = write_cifar_batches(tmp_path / "cifar", *data)
    out = tmp_path / "res.json"
    base = ["validate", str(art), "--data", str(root), "--no-cache", "--runs", "2", "--sa1", "0,0.1", "--out", str(out)]
    assert "non-negative" in _err(capsys, base + ["--seed", "-1"])
    with pytest.raises(RuntimeInputError, match="non-negative"):
        validate(art, *data, sa1=[0.1], runs=1, seed=-1, progress=False, out=out)
    assert not out.exists()
    assert main(base) == 0
    doc = json.loads(out.read_text())
    broken = [json.loads(json.dumps(doc)) for _ in range(4)]
    broken[0]["rates"][0]["runs"]["x"] = broken[0]["rates"][0]["runs"]["0"]
    del broken[1]["config"]["runs"]
    broken[2]["rates"] = broken[2]["rates"][:1]
    broken[3]["rates"][1]["runs"]["7"] = broken[3]["rates"][1]["runs"]["0"]  # run index >= runs
    for i, b in enumerate(broken):
        path = tmp_path / f"b{i}.json"
        path.write_text(json.dumps(b))
        assert "malformed results" in _err(capsys, ["merge", str(path), "--out", str(tmp_path / "m.json")])
        assert "malformed results" in _err(capsys, base[:-1] + [str(path), "--resume"])
    assert not (tmp_path / "m.json").exists()


def test_summary_interval_stays_in_0_1_and_merge_refuses_a_file_twice(art, data, tmp_path):
    from runtime.results import summarize

    s = summarize([0.02, 0.9])
    assert s["ci95"][0] == 0.0 and s["ci95"][1] == 1.0 and s["mean"] == pytest.approx(0.46)
    out = tmp_path / "r.json"
    validate(art, *data, sa1=[0.1], runs=2, seed=3, progress=False, out=out)
    with pytest.raises(RuntimeInputError, match="given twice"):
        merge([out, tmp_path / "." / "r.json"])


def test_eval_subset_spreads_over_the_classes():
    from toolchain.data import Split

    labels = np.repeat(np.arange(10), 100)  # class-sorted, like the test folders
    split = Split(np.zeros((1000, 2, 2, 3), np.uint8), labels, [str(c) for c in range(10)])
    sub = split.subset(50)
    assert np.array_equal(np.bincount(sub.labels, minlength=10), [5] * 10)
    assert np.array_equal(sub.labels, labels[subset_indices(1000, 50)])


def test_bad_input_review_round_two(art, data, tmp_path, capsys):
    """Fault-map files that are empty or text, devices that hold no weight, malformed results
    fields, empty comma-list entries, --stats-rate out of range, merge onto one of its inputs."""
    root = write_cifar_batches(tmp_path / "cifar", *data)
    base = ["validate", str(art), "--data", str(root), "--no-cache"]
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("ok ok SA1\n")
    out = tmp_path / "chip.json"
    assert "corrupt fault map" in _err(capsys, base + ["--fault-map", str(tmp_path / "empty.npz"), "--out", str(out)])
    assert "not a fault map" in _err(capsys, base + ["--fault-map", str(tmp_path / "text.npz"), "--out", str(out)])
    assert not out.exists()
    with pytest.raises(RuntimeInputError, match="represents no non-zero weight"):
        DeviceConfig(bits_per_cell=1, cells_per_weight=1, encoding="offset")
    with pytest.raises(RuntimeInputError, match="cannot hold one weight column"):
        DeviceConfig(bits_per_cell=1, cells_per_weight=20, encoding="offset", tile_cols=8)
    res = tmp_path / "r.json"
    assert "empty entry" in _err(capsys, base + ["--sa1", "0.1,,0.2", "--out", str(res)])
    assert "--bn-rate must be 'auto' or a rate in [0, 1]" in _err(
        capsys, base + ["--sa1", "0.1", "--stats-rate", "-0.1", "--out", str(res)])
    assert main(base + ["--sa1", "0.1", "--out", str(res)]) == 0
    capsys.readouterr()
    doc = json.loads(res.read_text())
    for i, edit in enumerate([lambda d: d.update(clean=[1]), lambda d: d.update(timing=5),
                              lambda d: d["rates"][0]["runs"]["0"].update(accuracy="nan")]):
        bad = json.loads(json.dumps(doc))
        edit(bad)
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(bad))
        assert "malformed results" in _err(capsys, ["merge", str(path), "--out", str(tmp_path / "m.json")])
        assert "malformed results" in _err(capsys, ["plot", str(path), "--out", str(tmp_path / "p.png")])
    assert "one of the files to merge" in _err(capsys, ["merge", str(res), "--out", str(res)])
    assert json.loads(res.read_text()) == doc
    # options whose companion is missing, an empty shard, more images than the split holds
    assert "give --sa1 too" in _err(capsys, ["eval", "--checkpoint", "x", "--runs", "3"])
    assert "give --data too" in _err(capsys, ["passes", "a.onnx", "--out", "b.onnx", "--real-images", "5"])
    assert main(base + ["--runs", "1", "--sa1", "0.1", "--shard", "3/3", "--out", str(tmp_path / "s.json")]) == 0
    assert "holds none" in capsys.readouterr().out  # an empty shard of an array job still merges
    assert main(base + ["--runs", "1", "--sa1", "0.1", "--images", "1000", "--out", str(tmp_path / "all.json")]) == 0
    assert "using all of them" in capsys.readouterr().out


def test_int8_quantizer_failure_is_one_line(paper_art, monkeypatch):
    """onnxruntime's quantizer raises assorted exceptions on unusual graphs (review: a Gemm bias of
    shape (1, 10)); they become one-line errors."""
    import onnxruntime.quantization as q

    def broken(*a, **k):
        raise ValueError("The truth value of an array with more than one element is ambiguous")

    monkeypatch.setattr(q, "quantize_static", broken)
    dm = DeployedModel.load(paper_art)
    images, labels = make_images(8)
    with pytest.raises(RuntimeInputError, match="onnxruntime's quantizer failed .*ValueError.*use --precision fp32"):
        Engine(dm, images, labels, precision="int8", calibration=images)

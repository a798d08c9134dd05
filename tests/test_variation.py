"""Device non-idealities beside the stuck cells (issue 37, runtime/variation.py): settings and
their checks, the per-cell draws (spread, seeds, stuck cells untouched), the campaign (zero noise
= today's numbers, same seed same numbers, shards, identity), the CLI and the plot label."""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.artifact import DeployedModel
from runtime.campaign import validate
from runtime.chips import RandomChips
from runtime.crossbar import preset
from runtime.errors import RuntimeInputError
from runtime.faults import apply_faults, run_seed
from runtime.plot import series_names
from runtime.results import merge, read_results
from runtime.variation import (
    WAN2022_COEFFS_US,
    Nonideal,
    decode_float,
    nonideal_preset,
    programmed_levels,
    read_noise,
    read_seed,
)
from toolchain.cli import main

from _runtime_helpers import write_cifar_batches


@pytest.fixture
def data(small_images):
    return small_images(48)


def identity(doc):
    return {k: doc[k] for k in ("config", "clean", "rates", "complete")}


def accuracies(doc):
    return [[v["accuracy"] for _, v in sorted(e["runs"].items(), key=lambda kv: int(kv[0]))] for e in doc["rates"]]


# ------------------------------------------------------------------ settings

@pytest.mark.parametrize("kw, words", [
    ({"programming_sigma": -0.01}, ">= 0"), ({"programming_sigma": float("nan")}, ">= 0"),
    ({"read_sigma": -1}, ">= 0"), ({"read_sigma": float("inf")}, ">= 0"),
    ({"dac_bits": 0}, "1 to 16"), ({"adc_bits": 17}, "1 to 16"), ({"adc_bits": 4.5}, "1 to 16"),
    ({"programming_model": "gaussian"}, "unknown programming"), ({"adc_range": "fixed"}, "unknown ADC range"),
])
def test_bad_settings_are_one_line(kw, words):
    with pytest.raises(RuntimeInputError, match=words) as e:
        Nonideal(**kw)
    assert "\n" not in str(e.value)


def test_presets_and_what_cannot_apply():
    assert nonideal_preset("ideal").ideal and Nonideal().ideal
    wan = nonideal_preset("wan2022")
    assert wan.programming_model == "wan2022" and wan.programming_sigma == 1 and wan.read_sigma == 0.01
    with pytest.raises(RuntimeInputError, match="unknown non-ideality preset 'nope': choose ideal, wan2022"):
        nonideal_preset("nope")
    assert Nonideal.from_dict(wan.to_dict()) == wan
    assert wan.with_options(read_sigma=0).name == "wan2022+custom" and wan.with_options().name == "wan2022"
    with pytest.raises(RuntimeInputError, match="int8"):
        Nonideal(read_sigma=0.01).check_applies("int8")
    with pytest.raises(RuntimeInputError, match="int8"):
        Nonideal(programming_sigma=0.01).check_applies("int8")
    with pytest.raises(RuntimeInputError, match="fp32"):
        Nonideal(adc_bits=6).check_applies("int8")
    Nonideal(adc_bits=6, dac_bits=8).check_applies("fp32")
    Nonideal(read_sigma=0.01).check_applies("fp32")


# ------------------------------------------------------------------ the draws

def _levels(device, n, level):
    return np.full(n, level, np.uint8), np.zeros(n, np.uint8)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_additive_spread_matches_its_setting(sigma):
    device = preset("paper")  # 128 levels
    lv, codes = _levels(device, 200_000, 63)
    got = programmed_levels(lv, codes, Nonideal(programming_sigma=sigma), device, run_seed(0, 0.1, 0, 3))
    rel = (got - 63) / (device.levels - 1)  # in fractions of the conductance range
    assert abs(rel.mean()) < 4 * sigma / math.sqrt(lv.size)
    assert rel.std() == pytest.approx(sigma, rel=0.01)
    # clipped to the device's range: a cell at G_min never goes below it
    low = programmed_levels(np.zeros(1000, np.uint8), np.zeros(1000, np.uint8), Nonideal(programming_sigma=sigma),
                            device, run_seed(0, 0.1, 0, 3))
    assert low.min() == 0 and (low > 0).mean() == pytest.approx(0.5, abs=0.05)


def test_lognormal_and_wan2022_spread_match_their_settings():
    device = preset("paper")
    top = device.levels - 1
    lv, codes = _levels(device, 200_000, 40)
    g = device.g_min + 40 / top * (device.g_max - device.g_min)
    got = programmed_levels(lv, codes, Nonideal(programming_sigma=0.1, programming_model="lognormal"), device,
                            run_seed(1, 0, 0, 0))
    g_got = device.g_min + got / top * (device.g_max - device.g_min)
    assert np.log(g_got / g).std() == pytest.approx(0.1, rel=0.01)
    got = programmed_levels(lv, codes, Nonideal(programming_sigma=1.0, programming_model="wan2022"), device,
                            run_seed(1, 0, 0, 0))
    x = g / device.g_max
    want = sum(c * x ** i for i, c in enumerate(WAN2022_COEFFS_US)) / 40.0  # sd as a fraction of g_max
    g_got = device.g_min + got.astype(np.float64) / top * (device.g_max - device.g_min)
    assert (g_got / device.g_max).std() == pytest.approx(want, rel=0.01)
    assert 0.04 < want < 0.06  # about 5% of g_max near a third of the range (Wan et al. 2022)


def test_stuck_cells_keep_their_level_and_their_draws(paper_art):
    dm = DeployedModel.load(paper_art)
    chips = RandomChips.of(dm.cmap, 0.1, 0.05, seed=4)
    varied = RandomChips.of(dm.cmap, 0.1, 0.05, seed=4, nonideal=Nonideal(programming_sigma=0.05))
    a, b = chips.sample(2), varied.sample(2)
    np.testing.assert_array_equal(a.codes, b.codes)  # the stuck cells' draws are unchanged
    flat = np.concatenate([lay.levels.ravel() for lay in dm.cmap.layers])
    faulty = apply_faults(flat, b.codes, preset("paper").levels - 1)
    got = np.concatenate([lv.ravel() for lv in dm.chip_levels(b)])
    stuck = b.codes != 0
    np.testing.assert_array_equal(got[stuck], faulty[stuck])
    inside = ~stuck & (faulty > 0) & (faulty < 127)
    assert np.mean(got[inside] != faulty[inside]) > 0.99
    at_gmin = ~stuck & (faulty == 0)  # clipped at G_min: about half stay there
    assert np.mean(got[at_gmin] > 0) == pytest.approx(0.5, abs=0.05)
    # zero variation: exactly today's weights
    for w0, w1 in zip(dm.chip_weights(a), dm.chip_weights(RandomChips.of(
            dm.cmap, 0.1, 0.05, seed=4, nonideal=Nonideal()).sample(2))):
        np.testing.assert_array_equal(w0, w1)


def test_float_decode_equals_the_integer_decoder_on_integer_levels():
    from runtime.crossbar import decode, encode, quantize_matrix

    rng = np.random.default_rng(0)
    for name in ("paper", "mlc4", "slc8"):
        device = preset(name)
        q = quantize_matrix(rng.normal(size=(20, 9)), np.full(9, 3.0 / device.qmax, np.float32), device)
        levels = encode(q, device)
        np.testing.assert_array_equal(decode_float(levels.astype(np.float32), device), decode(levels, device))


def test_read_noise_is_fresh_per_batch_and_seeded():
    device, n = preset("paper"), 100_000
    s = run_seed(0, 0.1, 0, 7)
    ni = Nonideal(read_sigma=0.02)
    a, b = read_noise(n, ni, device, s, 0), read_noise(n, ni, device, s, 1)
    np.testing.assert_array_equal(a, read_noise(n, ni, device, run_seed(0, 0.1, 0, 7), 0))
    assert np.corrcoef(a, b)[0, 1] < 0.02
    assert (a / (device.levels - 1)).std() == pytest.approx(0.02, rel=0.02)
    assert read_seed(s, 0).entropy == s.entropy  # the run's seed, a stream of its own


# ------------------------------------------------------------------ campaigns

def test_zero_noise_reproduces_todays_numbers_exactly(paper_art, data):
    kw = dict(sa1=[0.0, 0.2], sa0=0.01, runs=3, seed=5, progress=False)
    plain = validate(paper_art, *data, **kw)
    for zero in (Nonideal(), Nonideal(programming_sigma=0.0, read_sigma=0.0, programming_model="lognormal")):
        assert identity(validate(paper_art, *data, nonideal=zero, **kw)) == identity(plain)
    assert "nonideal" not in plain["config"]


def test_variation_and_read_noise_campaign_same_seed_same_numbers_and_shards(paper_art, data, tmp_path):
    ni = Nonideal(programming_sigma=0.05, read_sigma=0.02)
    kw = dict(sa1=[0.0, 0.1], runs=3, seed=2, progress=False, nonideal=ni, engine_kw={"batch_size": 16})
    full = validate(paper_art, *data, out=tmp_path / "full.json", **kw)
    assert identity(validate(paper_art, *data, **kw)) == identity(full)
    assert full["config"]["nonideal"] == ni.to_dict()
    plain = validate(paper_art, *data, sa1=[0.0, 0.1], runs=3, seed=2, progress=False)
    assert accuracies(full) != accuracies(plain)
    assert all(v["stuck_fraction"] == 0 for v in full["rates"][0]["runs"].values())  # SA1 0 chips ran
    for k in (1, 2):
        validate(paper_art, *data, shard=(k, 2), out=tmp_path / f"s{k}.json", **kw)
    assert identity(merge([tmp_path / "s2.json", tmp_path / "s1.json"])) == identity(full)
    # the read noise depends on the batch: another batch size, other numbers (same programmed chips)
    other = validate(paper_art, *data, **{**kw, "engine_kw": {"batch_size": 48}})
    assert accuracies(other) != accuracies(full)


def test_read_noise_with_per_chip_calibration_runs(make_bn_artifact, small_images):
    art = make_bn_artifact()
    images, labels = small_images(32)
    calib = small_images(24, seed=5)[0]
    kw = dict(sa1=[0.1], runs=2, seed=1, progress=False, calibrate=calib, engine_kw={"batch_size": 16})
    a = validate(art, images, labels, nonideal=Nonideal(programming_sigma=0.02, read_sigma=0.01), **kw)
    b = validate(art, images, labels, nonideal=Nonideal(programming_sigma=0.02, read_sigma=0.01), **kw)
    assert accuracies(a) == accuracies(b) and a["config"]["calibrate"] == 24


# ------------------------------------------------------------------ CLI, plot

def _err(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("rram: error:") and "\n" not in err, err
    return err


def test_cli_options_identity_plot_and_bad_input(paper_art, data, tmp_path, capsys):
    root = write_cifar_batches(tmp_path / "cifar", *data)
    out = tmp_path / "v.json"
    base = ["validate", str(paper_art), "--data", str(root), "--no-cache", "--sa1", "0,0.1", "--runs", "2",
            "--seed", "3"]
    assert main(base + ["--variation", "0.05", "--out", str(out)]) == 0
    doc = read_results(out)
    assert doc["config"]["nonideal"]["programming_sigma"] == 0.05
    want = identity(validate(paper_art, *data, sa1=[0.0, 0.1], runs=2, seed=3, progress=False,
                                   nonideal=Nonideal(programming_sigma=0.05)))
    assert {k: v for k, v in doc["config"].items() if v != want["config"].get(k)} == {}
    assert identity(doc) == want
    zero = tmp_path / "zero.json"  # zero variation: today's file, no nonideal in its identity
    assert main(base + ["--variation", "0", "--out", str(zero)]) == 0
    assert "nonideal" not in read_results(zero)["config"]
    assert "different configuration" in _err(capsys, base + ["--variation", "0.02", "--resume", "--out", str(out)])
    assert series_names([doc], [out]) == ["v, variation 5% additive"]
    wan = tmp_path / "wan.json"
    assert main(base + ["--nonideal", "wan2022", "--out", str(wan)]) == 0
    assert series_names([read_results(wan)], [wan]) == ["wan, wan2022: variation x1 wan2022, read noise 1%"]

    bad = tmp_path / "bad.json"
    for extra, words in [(["--variation", "-0.1"], ">= 0"), (["--variation", "nan"], ">= 0"),
                         (["--read-noise", "-1"], ">= 0"), (["--adc-bits", "0"], "1 to 16"),
                         (["--dac-bits", "17"], "1 to 16"), (["--nonideal", "nope"], "unknown non-ideality preset"),
                         (["--read-noise", "0.01", "--precision", "int8"], "int8")]:
        assert words in _err(capsys, base + extra + ["--out", str(bad)])
    chip_args = ["validate", str(paper_art), "--data", str(root), "--no-cache", "--fault-map", str(tmp_path / "m.npz"),
                 "--variation", "0.1", "--precision", "int8", "--out", str(bad)]
    assert "int8" in _err(capsys, chip_args)  # a measured chip takes them (test_fault_map_nonideal.py), not in int8
    assert not bad.exists()


def test_eval_reference_spread_zero_and_bad_input(capsys):
    import torch

    from toolchain.variation import VariedReferenceChips, programmed

    lin = torch.nn.Sequential(torch.nn.Linear(4000, 3, bias=False))
    with torch.no_grad():
        lin[0].weight.fill_(0.25)
        lin[0].weight[:, 0] = 0.5  # the column's top: the pair (0.5, 0) per row, g+ = 0.5 elsewhere
    zero = VariedReferenceChips(lin, 0.0, 0.0, "additive", 0).sample(0)
    torch.testing.assert_close(zero["0"], lin[0].weight, rtol=0, atol=1e-7)
    w = VariedReferenceChips(lin, 0.0, 0.05, "additive", 0).sample(0)["0"][:, 1:]
    # g+ = 0.5 (sd 0.05), g- = 0 clipped at G_min: (g+ - g-) * 0.5 has sd 0.5 * 0.05 * sqrt(1 + (1/2 - 1/(2 pi)))
    want = 0.5 * 0.05 * math.sqrt(1 + 0.5 - 1 / (2 * math.pi))
    assert float(w.std()) == pytest.approx(want, rel=0.05)
    assert float(w.mean()) == pytest.approx(0.25 - 0.5 * 0.05 / math.sqrt(2 * math.pi), abs=2e-3)
    stuck = VariedReferenceChips(lin, 1.0, 0.05, "additive", 0).sample(1)
    assert not stuck["0"].any()  # every cell stuck at G_min: every weight reads 0
    before = lin[0].weight.clone()
    with programmed(lin, stuck):
        assert not lin[0].weight.any()
    assert torch.equal(lin[0].weight, before)

    assert ">= 0" in _err(capsys, ["eval", "nope.pt", "--sa1", "0.1", "--variation", "-0.1"])
    assert ">= 0" in _err(capsys, ["eval", "nope.pt", "--sa1", "0.1", "--variation", "nan"])
    assert "give --sa1 too" in _err(capsys, ["eval", "nope.pt", "--variation", "0.1"])


# ------------------------------------------------------------------ DAC/ADC resolution

def test_adc_converts_each_tile_partial_sum_to_its_code(make_tiny_artifact, small_images):
    """The first conv on 8-row tiles (3 input channels x 3 x 3 = 27 rows: tiles of 8, 8, 8, 3 rows,
    cutting kernels): each tile's partial sum quantised to a 4-bit signed code per column on its
    calibrated range, then summed with the bias: computed here with torch, against the graph."""
    import onnx
    import torch

    from runtime.converters import converter_model, ranges_of
    from runtime.crossbar import DeviceConfig
    from runtime.metadata import normalize_images
    from runtime.session import make_session

    art = make_tiny_artifact(device=DeviceConfig(tile_rows=8, name="rows8"))
    dm = DeployedModel.load(art)
    images, _ = small_images(16)
    x = normalize_images(images, dm.normalization)
    ni = Nonideal(adc_bits=4)
    ranges = ranges_of(dm, ni, x, lambda data: make_session(data, threads=1))
    graph, _ = converter_model(dm, ni, ranges)
    node = next(n for n in graph.graph.node if n.name == "" and n.output[0].endswith("/0/sum"))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    from runtime.artifact import append_initializers

    sess = make_session(append_initializers(graph.SerializeToString(), dm.weight_names, dm.clean_weights()), threads=1)
    got = sess.run([node.output[0]], {dm.input_name: x})[0]

    conv = next(n for n in dm.base_model().graph.node if n.op_type == "Conv" and n.input[1] == dm.weight_names[0])
    attrs = {a.name: list(a.ints) for a in conv.attribute}
    pads, stride = attrs.get("pads", [0, 0, 0, 0]), attrs.get("strides", [1, 1])
    w = torch.from_numpy(dm.clean_weights()[0])
    flat = w.reshape(w.shape[0], -1)
    want = 0
    assert len(ranges["p"][0]) == 4
    for t, r0 in enumerate(range(0, 27, 8)):
        mask = torch.zeros_like(flat)
        mask[:, r0:r0 + 8] = 1
        part = torch.nn.functional.conv2d(torch.from_numpy(x), (flat * mask).reshape(w.shape), stride=stride,
                                          padding=pads[:2]).numpy()
        top = np.abs(part).max(axis=(0, 2, 3))
        np.testing.assert_allclose(ranges["p"][0][t], top, rtol=1e-5)  # the calibrated per-column range
        step = (top / 7).reshape(1, -1, 1, 1)
        code = np.clip(np.round(part / step), -7, 7)
        assert set(np.unique(code)) <= set(range(-7, 8))
        assert (np.abs(code).max(axis=(0, 2, 3)) == 7).all()  # each column's largest partial sum: the top code
        want = want + code * step
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_converters_in_campaigns(paper_art, data, small_images, tmp_path, capsys):
    calib = small_images(32, seed=4)[0]
    kw = dict(sa1=[0.0, 0.1], runs=2, seed=1, progress=False)
    plain = validate(paper_art, *data, **kw)
    wide = validate(paper_art, *data, nonideal=Nonideal(dac_bits=16, adc_bits=16), calibration=calib, **kw)
    assert accuracies(wide) == accuracies(plain)  # 16 bits: the same decisions as unbounded converters
    assert wide["config"]["nonideal"]["adc_bits"] == 16 and "calibration_sha256" in wide["config"]
    narrow = validate(paper_art, *data, nonideal=Nonideal(adc_bits=3), calibration=calib, **kw)
    assert narrow["clean"]["."] < plain["clean"]["."]  # 3 bits cost accuracy
    assert identity(validate(paper_art, *data, nonideal=Nonideal(adc_bits=3), calibration=calib, **kw)) == \
        identity(narrow)
    root = write_cifar_batches(tmp_path / "cifar", *data)
    bad = tmp_path / "bad.json"
    assert "fp32" in _err(capsys, ["validate", str(paper_art), "--data", str(root), "--no-cache", "--adc-bits", "6",
                                   "--precision", "int8", "--out", str(bad)])
    assert not bad.exists()


def test_placed_chips_carry_their_variation(paper_art, data):
    from runtime.chips import PlacedChips

    dm = DeployedModel.load(paper_art)
    ni = Nonideal(programming_sigma=0.05)
    plain = PlacedChips(dm.cmap, RandomChips.of(dm.cmap, 0.1, 0.0, 3)).sample(1)
    varied = PlacedChips(dm.cmap, RandomChips.of(dm.cmap, 0.1, 0.0, 3, nonideal=ni)).sample(1)
    np.testing.assert_array_equal(plain.codes, varied.codes)  # placed on the faults alone
    assert varied.nonideal == ni and varied.seed.entropy == run_seed(3, 0.1, 0.0, 1).entropy
    kw = dict(sa1=[0.1], runs=2, seed=3, progress=False, place=True, nonideal=ni)
    a = validate(paper_art, *data, **kw)
    assert identity(a) == identity(validate(paper_art, *data, **kw))
    assert accuracies(a) != accuracies(validate(paper_art, *data, **{**kw, "nonideal": None}))


def test_eval_reference_read_noise_fresh_per_forward(capsys):
    import torch

    from toolchain.variation import VariedReferenceChips, chip_context

    lin = torch.nn.Sequential(torch.nn.Linear(2000, 4, bias=False))
    with torch.no_grad():
        lin[0].weight.uniform_(-1, 1)
        lin[0].weight[:, 0] = 2.0  # each row's top: 2
    before = lin[0].weight.detach().clone()
    chips = VariedReferenceChips(lin, 0.0, 0.0, "additive", 0)
    seen = []
    lin[0].register_forward_hook(lambda m, args, out: seen.append(m.weight.detach().clone()))
    x = torch.ones(1, 2000)
    with chip_context(chips, 0, 0.02):
        lin(x), lin(x)
    d0, d1 = seen[0] - before, seen[1] - before
    assert float(d0.std()) == pytest.approx(0.02 * 2.0 * math.sqrt(2), rel=0.05)  # both planes, sd of the range
    assert abs(float(torch.corrcoef(torch.stack([d0.ravel(), d1.ravel()]))[0, 1])) < 0.05  # fresh per batch
    assert torch.equal(lin[0].weight, before)
    with chip_context(chips, 0, 0.02):
        lin(x)
    torch.testing.assert_close(seen[2], seen[0], rtol=0, atol=0)  # seeded by (seed, run)
    assert "give --sa1 too" in _err(capsys, ["eval", "nope.pt", "--read-noise", "0.1"])
    assert ">= 0" in _err(capsys, ["eval", "nope.pt", "--sa1", "0", "--read-noise", "-1"])
    assert "--calibrate" in _err(capsys, ["eval", "nope.pt", "--sa1", "0", "--read-noise", "0.1", "--calibrate", "8"])


def test_plot_label_names_every_setting():
    from runtime.plot import nonideal_label

    assert nonideal_label(Nonideal(programming_sigma=0.1, programming_model="lognormal").to_dict()) == \
        "variation 10% lognormal"
    assert nonideal_label(Nonideal(dac_bits=8, adc_bits=6).to_dict()) == "DAC 8 bits, ADC 6 bits"
    assert nonideal_label(Nonideal(adc_bits=6, adc_range="full-scale").to_dict()) == "ADC 6 bits full-scale"
    assert nonideal_label(nonideal_preset("wan2022").with_options(adc_bits=6).to_dict()) == \
        "wan2022+custom: variation x1 wan2022, read noise 1%, ADC 6 bits"

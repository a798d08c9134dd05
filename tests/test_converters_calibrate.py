"""DAC/ADC resolution with per-chip calibration (issue 37; docs/runtime.md, "Device
non-idealities"): each chip is calibrated and evaluated behind its converters, the periphery's
digital scale and offset after the digital sum of the converted partial sums; the ranges measured
once on the ideal chip as deployed (calibrated too)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from runtime.artifact import DeployedModel, append_initializers
from runtime.campaign import validate
from runtime.chips import RandomChips
from runtime.engine import Engine
from runtime.errors import RuntimeInputError
from runtime.metadata import normalize_images
from runtime.results import merge, read_results
from runtime.session import make_session
from runtime.variation import Nonideal
from toolchain.cli import main

from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def accuracies(doc):
    return [[v["accuracy"] for _, v in sorted(e["runs"].items(), key=lambda kv: int(kv[0]))] for e in doc["rates"]]


def identity(doc):
    return {k: doc[k] for k in ("config", "clean", "rates", "complete")}


def _eval_outputs(engine: Engine, weights, affines, outputs: list[str], x: np.ndarray) -> dict:
    """Tensors ``outputs`` of the calibrated chip's evaluated graph on the normalised images ``x``."""
    cal = engine.calibrator
    names, arrays = cal.evaluated(weights, affines)
    m = onnx.ModelProto.FromString(cal.eval_base)
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in outputs)
    sess = make_session(append_initializers(m.SerializeToString(), names, arrays), threads=1)
    return dict(zip(outputs, sess.run(outputs, {engine.model.input_name: x})))


def test_16_bit_converters_calibrate_as_without_them(make_bn_artifact, small_images):
    """BN targets (the first conv calibrated): 16-bit converters give the calibrated campaign's numbers."""
    art = make_bn_artifact()
    images, labels = small_images(48)
    calib = small_images(32, seed=5)[0]
    kw = dict(sa1=[0.0, 0.1, 0.2], runs=3, seed=1, progress=False, calibrate=calib, engine_kw={"batch_size": 16})
    plain = validate(art, images, labels, **kw)
    wide = validate(art, images, labels, nonideal=Nonideal(dac_bits=16, adc_bits=16), calibration=calib, **kw)
    assert wide["clean"] == plain["clean"] and accuracies(wide) == accuracies(plain)
    assert len({a for rate in accuracies(plain)[1:] for a in rate}) > 1  # (chips that differ: not a constant)


def test_16_bit_converters_measure_and_evaluate_the_chip_as_without_them(paper_art, small_images):
    """Measured targets (every layer calibrated, the classifier included) and full-scale ADC ranges
    (a partial sum cannot leave them: calibrated-per-column ranges have no headroom, and a chip
    with stuck cells shifts its partial sums past them, saturating, which no periphery after the
    ADC undoes): behind 16-bit converters each chip's periphery and logits are those without."""
    dm = DeployedModel.load(paper_art)
    images, labels = small_images(48)
    calib = small_images(32, seed=5)[0]
    wide = Engine(dm, images, labels, threads=1, calibrate=calib, calibration=calib,
                  converters=Nonideal(adc_bits=16, adc_range="full-scale"))
    plain = Engine(dm, images, labels, threads=1, calibrate=calib)
    logits = onnx.ModelProto.FromString(wide.calibrator.eval_base).graph.output[0].name
    x = normalize_images(images, dm.normalization)
    for p, r in [(0.0, 0), (0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]:
        w = wide.weights(RandomChips.of(dm.cmap, p, 0.0, 1).sample(r))
        got, want = wide.calibrator.measure(w), plain.calibrator.measure(w)
        assert len(got) == 3 and got.keys() == want.keys()
        for k, (scale, offset) in got.items():
            np.testing.assert_allclose(scale, want[k][0], rtol=2e-3)
            np.testing.assert_allclose(offset, want[k][1], rtol=0, atol=2e-3 * np.abs(want[k][1]).max())
        y = _eval_outputs(wide, w, got, [logits], x)[logits]
        y0 = plain.session(w).run(None, {dm.input_name: x})[0]
        np.testing.assert_allclose(y, y0, rtol=0, atol=1e-3 * float(np.abs(y0).max()))
        assert (y.argmax(1) == y0.argmax(1)).all()


def test_few_bit_converters_with_calibration(make_bn_artifact, small_images, tmp_path):
    art = make_bn_artifact()
    images, labels = small_images(64)
    calib = small_images(48, seed=5)[0]
    ni = Nonideal(adc_bits=4)
    kw = dict(sa1=[0.1, 0.2], runs=4, seed=1, progress=False, nonideal=ni, calibration=calib,
              engine_kw={"batch_size": 32})
    bare = validate(art, images, labels, **kw)
    cal = validate(art, images, labels, calibrate=calib, out=tmp_path / "cal.json", **kw)
    # on chips with stuck cells, calibration behind 4-bit ADCs beats the same ADCs without it
    assert np.mean(accuracies(cal)) > np.mean(accuracies(bare)) + 0.1
    config = cal["config"]  # the identity records both: the converters and the calibration
    assert config["nonideal"]["adc_bits"] == 4 and config["calibrate"] == 48
    assert config["calibrate_sha256"] and config["calibration_sha256"]
    assert identity(validate(art, images, labels, calibrate=calib, **kw)) == identity(cal)  # same seed
    for k in (1, 2):
        validate(art, images, labels, calibrate=calib, shard=(k, 2), out=tmp_path / f"s{k}.json", **kw)
    merged = merge([tmp_path / "s2.json", tmp_path / "s1.json"])
    assert identity(merged) == identity(read_results(tmp_path / "cal.json"))
    other = validate(art, images, labels, calibrate=calib, **{**kw, "nonideal": Nonideal(adc_bits=3)})
    assert accuracies(other) != accuracies(cal)


def test_the_periphery_scales_what_the_adc_converted(make_bn_artifact, small_images):
    """The first conv (its inputs the images: the same ranges with and without calibration): the
    calibrated chip's ADC codes are the uncalibrated chip's, and the layer's output is scale x the
    digital sum of the converted partial sums + offset (a scale folded into the weights would
    change the codes: here the scales are 1.3-2.2)."""
    dm = DeployedModel.load(make_bn_artifact())
    images, labels = small_images(32)
    calib = small_images(48, seed=5)[0]
    ni = Nonideal(adc_bits=4)
    cal = Engine(dm, images, labels, threads=1, calibrate=calib, calibration=calib, converters=ni)
    bare = Engine(dm, images, labels, threads=1, calibration=calib, converters=ni)
    chip = RandomChips.of(dm.cmap, 0.2, 0.0, 1).sample(0)
    w = cal.weights(chip)
    affines = cal.calibrator.measure(w)
    (layer, (scale, offset)), = [(k, v) for k, v in affines.items()]
    assert np.ptp(scale) > 0.1 and np.abs(scale - 1).min() > 0.1
    m = onnx.ModelProto.FromString(bare.fp32_base)
    codes = [n.output[0] for n in m.graph.node if n.output[0].startswith("rram_conv/0/adc")
             and n.output[0].endswith("/clip")]
    quantised = [c[:-len("clip")] + "q" for c in codes]
    x = normalize_images(images, dm.normalization)
    got = _eval_outputs(cal, w, affines, codes + quantised + [layer], x)
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in codes)
    sess = make_session(append_initializers(m.SerializeToString(), dm.weight_names, w), threads=1)
    for c, want in zip(codes, sess.run(codes, {dm.input_name: x})):
        np.testing.assert_array_equal(got[c], want)
    total = sum(got[q] for q in quantised)
    np.testing.assert_allclose(got[layer], total * scale.reshape(1, -1, 1, 1) + offset.reshape(1, -1, 1, 1),
                               rtol=1e-5, atol=1e-5 * float(np.abs(got[layer]).max()))


def test_the_chip_is_measured_through_its_converters(paper_art, small_images):
    """Measured targets (every layer calibrated) on a chip at 20% SA1 behind 3-bit ADCs: on the
    calibration images, every calibrated channel's mean through the evaluated graph meets its
    target; the periphery measured without the converters misses them."""
    dm = DeployedModel.load(paper_art)
    images, labels = small_images(32)
    calib = small_images(48, seed=5)[0]
    cal = Engine(dm, images, labels, threads=1, calibrate=calib, calibration=calib, converters=Nonideal(adc_bits=3))
    unaware = Engine(dm, images, labels, threads=1, calibrate=calib)
    chip = RandomChips.of(dm.cmap, 0.2, 0.0, 1).sample(0)
    w = cal.weights(chip)
    layers = list(cal.calibrator.targets)
    assert len(layers) == 3
    x = normalize_images(calib, dm.normalization)

    def worst(affines):
        outs = _eval_outputs(cal, w, affines, layers, x)
        errs = []
        for name in layers:
            y, t = outs[name], cal.calibrator.targets[name]
            mean = y.mean(axis=tuple(a for a in range(y.ndim) if a != 1))
            errs.append(np.max(np.abs(mean - t.beta) / np.abs(t.gamma)))
        return max(errs)

    assert worst(cal.calibrator.measure(w)) < 1e-2
    assert worst(unaware.calibrator.measure(w)) > 0.1


def test_what_stays_refused(paper_art, small_images):
    dm = DeployedModel.load(paper_art)
    images, labels = small_images(16)
    ni = Nonideal(adc_bits=6)
    with pytest.raises(RuntimeInputError, match="int8"):
        Engine(dm, images, labels, precision="int8", calibration=images, calibrate=images, converters=ni)
    periphery = {"x": (np.ones(1), np.zeros(1))}
    with pytest.raises(RuntimeInputError, match="chip calibration file"):
        Engine(dm, images, labels, calibration=images, periphery=periphery, converters=ni)


def test_cli_validate_adc_bits_with_calibrate(make_bn_artifact, coloured_cifar, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["validate", str(make_bn_artifact()), "--data", str(coloured_cifar(test=32)), "--no-cache", "--sa1",
            "0.1", "--runs", "2", "--adc-bits", "6", "--calibrate", "16", "--range-images", "16", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    config = read_results(out)["config"]
    assert config["nonideal"]["adc_bits"] == 6 and config["calibrate"] == 16 and "calibration_sha256" in config


def test_every_non_ideality_with_calibration_and_placement(make_bn_artifact, small_images):
    """Variation, read noise, DAC and ADC together with --calibrate and --place: reproducible, and
    the converters change the numbers."""
    art = make_bn_artifact()
    images, labels = small_images(48)
    calib = small_images(32, seed=5)[0]
    noise = dict(programming_sigma=0.02, read_sigma=0.01)
    kw = dict(sa1=[0.0, 0.1], runs=2, seed=3, progress=False, calibrate=calib, calibration=calib, place=True,
              engine_kw={"batch_size": 16})
    full = validate(art, images, labels, nonideal=Nonideal(dac_bits=4, adc_bits=3, **noise), **kw)
    assert identity(validate(art, images, labels, nonideal=Nonideal(dac_bits=4, adc_bits=3, **noise), **kw)) == \
        identity(full)
    assert full["config"]["place"] and full["config"]["calibrate"] == 32
    assert accuracies(validate(art, images, labels, nonideal=Nonideal(**noise), **kw)) != accuracies(full)

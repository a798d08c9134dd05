"""The ``embed-normalization`` pass: the input normalisation moves from metadata into the graph,
verified by comparing the original on normalised inputs with the rewritten model on the [0, 1]
images those came from."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import passes
from passes.embed_normalization import EMBEDDED_KEY, NORMALIZATION_KEY
from toolchain.cli import main as rram

from _passes_util import conv_bn_model, ort_outputs

NORM = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}


def _model(cin=3, norm=NORM, seed=0):
    m = conv_bn_model(cin=cin, seed=seed)
    if norm is not None:
        m.metadata_props.add(key=NORMALIZATION_KEY, value=json.dumps(norm))
    return m


def _meta(m):
    return {p.key: p.value for p in m.metadata_props}


def _images(n=4, size=9, seed=3):
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def _normalised(img):
    # what runtime.engine.normalize_images does after /255, written out here independently
    mean = np.asarray(NORM["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(NORM["std"], np.float32).reshape(1, 3, 1, 1)
    return (img - mean) / std


def test_embeds_sub_div_and_moves_the_metadata():
    m = _model()
    res = passes.run(m, ["embed-normalization"], verify="each", tolerance=1e-6)
    out = res.model
    assert [n.op_type for n in out.graph.node[:2]] == ["Sub", "Div"]
    assert out.graph.input[0].name == "x"  # same input name: callers feed it as before
    meta = _meta(out)
    assert NORMALIZATION_KEY not in meta  # nothing may normalise the input a second time
    assert json.loads(meta[EMBEDDED_KEY]) == NORM
    assert NORMALIZATION_KEY in _meta(m)  # the input model is untouched
    assert res.stats["embed-normalization.embedded"] == 1
    assert res.verification["max_rel_diff"] <= 1e-6
    # Independently of the verifier: the rewritten model on images == the original on the same
    # images normalised as the toolchain does (the same float32 Sub and Div: bit for bit).
    img = _images()
    (want,) = ort_outputs(m, {"x": _normalised(img)})
    (got,) = ort_outputs(out, {"x": img})
    np.testing.assert_array_equal(got, want)


def test_after_the_standard_passes_and_before_them():
    m = _model()
    for names in (["standard", "embed-normalization"], ["embed-normalization", "standard"]):
        res = passes.run(m, names, verify="each", tolerance=1e-5)
        img = _images(seed=5)
        (want,) = ort_outputs(m, {"x": _normalised(img)})
        (got,) = ort_outputs(res.model, {"x": img})
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-5
        assert "BatchNormalization" not in {n.op_type for n in res.model.graph.node}


@pytest.fixture
def metadata_only_pass():
    """Claims to embed (metadata and input transform) but leaves the graph alone: wrong."""
    @passes.register("test-fake-embed", "moves the metadata, forgets the nodes")
    def fake(graph, ctx):
        mean = np.asarray(NORM["mean"], np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(NORM["std"], np.float32).reshape(1, 3, 1, 1)
        ctx.metadata[EMBEDDED_KEY] = ctx.metadata.pop(NORMALIZATION_KEY)
        ctx.transform_input("x", lambda v: v * std + mean)
    yield "test-fake-embed"
    passes.unregister("test-fake-embed")


@pytest.mark.parametrize("verify", ["each", "end"])
def test_verifier_applies_the_declared_input_transform(metadata_only_pass, verify):
    # The verifier feeds the rewritten model x * std + mean: a pass that declares the transform
    # without embedding the normalisation is caught, in both verification modes.
    with pytest.raises(passes.PassError, match="verification failed after pass 'test-fake-embed'"):
        passes.run(_model(), ["fold-bn", metadata_only_pass], verify=verify)


def test_already_embedded_is_left_alone():
    once = passes.run(_model(), ["embed-normalization"]).model
    res = passes.run(once, ["embed-normalization"])
    assert [n.op_type for n in res.model.graph.node].count("Sub") == 1
    assert any("already embedded" in w for w in res.warnings)


@pytest.mark.parametrize("model, expected", [
    (_model(norm=None), "records no input normalisation"),
    (_model(cin=4), "not NCHW with 3 channels"),
    (_model(norm={"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}), "every std > 0"),
    (_model(norm={"mean": [0.5]}), "unreadable rram.normalization"),
])
def test_refuses_what_it_cannot_embed(model, expected):
    with pytest.raises(passes.PassError, match=expected):
        passes.run(model, ["embed-normalization"])


def test_cli_one_line_error_and_nothing_written(tmp_path, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(_model(norm=None), src)
    out = tmp_path / "out.onnx"
    assert rram(["passes", str(src), str(out), "--passes", "standard,embed-normalization"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rram: error: embed-normalization: the model records no")
    assert not out.exists()


@pytest.mark.slow
def test_real_resnet20_on_real_images(tmp_path, shared_resnet20, shared_data, monkeypatch):
    """The shared ResNet20 through export, passes standard,embed-normalization (verified on real
    test images, normalised for the original) and quantize: the artifact takes images in [0, 1]."""
    from runtime.metadata import Normalization, normalize_images
    from toolchain.data import load_split

    r20, emb, art = tmp_path / "r20.onnx", tmp_path / "r20.emb.onnx", tmp_path / "art"
    assert rram(["export", str(shared_resnet20), "--model", "resnet20", "--out", str(r20)]) == 0
    assert rram(["passes", str(r20), str(emb), "--passes", "standard,embed-normalization",
                 "--data", str(shared_data), "--images", "32"]) == 0
    assert rram(["quantize", str(emb), str(art), "--preset", "paper"]) == 0
    # --data on an embedded model: its images go in as [0, 1], instead of a refusal for want of metadata.
    assert rram(["passes", str(emb), str(tmp_path / "again.onnx"), "--passes", "standard",
                 "--data", str(shared_data), "--images", "16"]) == 0
    images = load_split(shared_data, "test").subset(32).images
    norm = Normalization.from_metadata(_meta(onnx.load(r20)), r20)
    ref = passes.run(onnx.load(r20), ["standard"]).model
    (want,) = ort_outputs(ref, {"input": normalize_images(images, norm)})
    (got,) = ort_outputs(onnx.load(emb), {"input": normalize_images(images, None)})
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-5
    meta = _meta(onnx.load(art / "model.onnx"))
    assert NORMALIZATION_KEY not in meta and json.loads(meta[EMBEDDED_KEY]) == norm.to_dict()


def test_quantize_embeds_and_validate_gives_the_same_accuracy_on_both_forms(tmp_path, capsys):
    """`rram quantize --embed-normalization`, then `rram validate` on both artifacts: identical
    numbers (issue 14), chip for chip."""
    import torch

    from _runtime_helpers import NORM, export_torch, make_images, tiny_model
    from conftest import write_test_batch

    onx = export_torch(tiny_model(), torch.zeros(1, 3, 32, 32), tmp_path / "f.onnx")
    onx.metadata_props.add(key=NORMALIZATION_KEY, value=NORM.to_metadata())
    onnx.save(onx, tmp_path / "m.onnx")
    assert rram(["quantize", str(tmp_path / "m.onnx"), str(tmp_path / "plain"), "--preset", "paper"]) == 0
    assert rram(["quantize", str(tmp_path / "m.onnx"), str(tmp_path / "emb"), "--preset", "paper",
                 "--embed-normalization"]) == 0
    meta = _meta(onnx.load(tmp_path / "emb" / "model.onnx"))
    assert EMBEDDED_KEY in meta and NORMALIZATION_KEY not in meta
    images, labels = make_images(48, seed=5)
    data = write_test_batch(tmp_path / "cifar", images, labels)
    docs = []
    for name in ("plain", "emb"):
        out = tmp_path / f"{name}.json"
        assert rram(["validate", str(tmp_path / name), "--data", str(data), "--no-cache", "--split", "test",
                     "--sa1", "0,0.2", "--runs", "3", "--out", str(out)]) == 0
        docs.append(json.loads(out.read_text()))
    assert [e["runs"] for e in docs[0]["rates"]] == [e["runs"] for e in docs[1]["rates"]]
    assert list(docs[0]["clean"].values()) == list(docs[1]["clean"].values())

"""Provenance in every results file (issue 36; runtime/provenance.py, docs/results-format.md): the
checkpoint's sha256 from export through the passes and the quantizer into the artifact and the
results file's info, with the git commit, package versions and the pipeline config's hash; none of
it in the identity (config)."""
import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from types import SimpleNamespace

import onnx
import pytest

from runtime import provenance
from runtime.metadata import CHECKPOINT_SHA256_KEY, read_metadata
from runtime.results import read_results
from toolchain.cli import main

from conftest import ROOT, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def test_provenance_reads_versions_without_importing_torch():
    code = ("import sys, json; from runtime.provenance import provenance; "
            "p = provenance({'.': {'rram.checkpoint_sha256': 'ab'}}); "
            "print(json.dumps([p, 'torch' in sys.modules, 'onnx' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    p, torch_loaded, onnx_loaded = json.loads(done.stdout)
    assert not (torch_loaded or onnx_loaded)
    assert p["checkpoint_sha256"] == "ab"
    assert p["packages"] == {name: metadata.version(name) for name in provenance.PACKAGES}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert p["git_commit"] == head.stdout.strip() and isinstance(p["git_dirty"], bool)
    assert "pipeline_config_sha256" not in p
    assert p["cpu"] == provenance.cpu() and p["cpu"].strip()


def test_checkpoint_hashes_of_a_multi_model_artifact():
    same = {"rate-0": {CHECKPOINT_SHA256_KEY: "a"}, "rate-0.1": {CHECKPOINT_SHA256_KEY: "a"}}
    assert provenance.checkpoint_sha256(same) == "a"
    assert provenance.checkpoint_sha256({"x": {CHECKPOINT_SHA256_KEY: "a"}, "y": {}}) == {"x": "a", "y": None}
    assert provenance.checkpoint_sha256({".": {}}) is None  # exported before it was recorded


def test_the_checkpoint_sha256_goes_from_export_to_the_results_file(tiny_checkpoint, coloured_cifar, tmp_path,
                                                                    capsys):
    ckpt, data = tiny_checkpoint(), coloured_cifar()
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    onx, folded, art = tmp_path / "m.onnx", tmp_path / "m.passes.onnx", tmp_path / "art"
    assert main(["export", str(ckpt), "--out", str(onx)]) == 0
    assert main(["passes", str(onx), str(folded), "--passes", "standard"]) == 0
    assert main(["quantize", str(folded), str(art), "--preset", "paper"]) == 0
    for path in (onx, folded, art / "model.onnx"):
        assert read_metadata(onnx.load(str(path), load_external_data=False))[CHECKPOINT_SHA256_KEY] == sha
    out = tmp_path / "r.json"
    common = ["--data", str(data), "--no-cache", "--sa1", "0,0.1", "--runs", "1", "--images", "16"]
    assert main(["validate", str(art), *common, "--out", str(out)]) == 0
    doc = read_results(out)
    p = doc["info"]["provenance"]
    assert p["checkpoint_sha256"] == sha and p["packages"]["onnxruntime"] == metadata.version("onnxruntime")
    assert "provenance" not in doc["config"] and sha not in json.dumps(doc["config"])  # not identity
    assert p["content_sha256"] == {".": provenance.content_sha256(art)}
    # a file written before provenance resumes: the identity is the same, its info is kept
    doc["info"].pop("provenance")
    out.write_text(json.dumps(doc))
    assert main(["validate", str(art), *common, "--out", str(out), "--resume"]) == 0
    assert "provenance" not in read_results(out)["info"]
    sens = tmp_path / "s.json"
    assert main(["sensitivity", str(art), "--data", str(data), "--no-cache", "--sa1", "0.1", "--runs", "1",
                 "--images", "16", "--split", "val", "--out", str(sens)]) == 0
    report = json.loads(sens.read_text())
    assert report["info"]["provenance"]["checkpoint_sha256"] == sha and report["info"]["split"] == "val"


def test_the_content_hash_ignores_provenance_metadata_and_sees_the_weights(tiny_checkpoint, tmp_path):
    """Two builds that differ only in where the model came from (an older export recorded no
    checkpoint sha256) have one content_sha256; another weight or another conductance map does not."""
    import shutil

    import numpy as np

    onx, folded, art = tmp_path / "m.onnx", tmp_path / "m.passes.onnx", tmp_path / "art"
    assert main(["export", str(tiny_checkpoint()), "--out", str(onx)]) == 0
    assert main(["passes", str(onx), str(folded), "--passes", "standard"]) == 0
    assert main(["quantize", str(folded), str(art), "--preset", "paper"]) == 0
    base = provenance.content_sha256(art)

    def variant(name, change):
        other = tmp_path / name
        shutil.copytree(art, other)
        model = onnx.load(str(other / "model.onnx"))
        change(model, other)
        onnx.save(model, str(other / "model.onnx"))
        assert (other / "model.onnx").read_bytes() != (art / "model.onnx").read_bytes()
        return provenance.content_sha256(other)

    def drop_provenance(model, _):
        kept = [p for p in model.metadata_props if p.key not in (CHECKPOINT_SHA256_KEY, "rram.source")]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)

    def other_bn_targets(model, _):  # metadata that changes numbers (calibration reads it)
        for p in model.metadata_props:
            if p.key == "rram.bn_targets":
                p.value = p.value.replace("1", "2", 1)

    def other_weight(model, _):
        first = model.graph.initializer[0]
        array = onnx.numpy_helper.to_array(first).copy()
        array.flat[0] += 1
        first.CopyFrom(onnx.numpy_helper.from_array(array, first.name))

    def other_map(model, folder):
        drop_provenance(model, folder)
        npz = dict(np.load(folder / "crossbars.npz"))
        key = sorted(npz)[0]
        npz[key] = npz[key].copy()
        npz[key].flat[0] ^= 1
        np.savez(folder / "crossbars.npz", **npz)

    assert variant("older-export", drop_provenance) == base
    assert len({base, variant("bn", other_bn_targets), variant("weight", other_weight),
                variant("map", other_map)}) == 4


def test_the_pipeline_puts_its_config_hash_into_the_environment_of_its_steps(monkeypatch):
    from toolchain.pipeline import actions

    monkeypatch.delenv(provenance.PIPELINE_ENV, raising=False)
    pipe = SimpleNamespace(cfg=SimpleNamespace(text="out = 'x'\n"))
    seen = []
    monkeypatch.setattr(actions, "commands", lambda *a: [["eval"], ["eval"]])
    monkeypatch.setattr(actions, "cli", lambda args: seen.append(provenance.provenance({})) or 0)
    step = SimpleNamespace(stage="export", outputs=[])
    assert actions.run_step(pipe, step, False, set()) == 0
    want = hashlib.sha256(b"out = 'x'\n").hexdigest()
    assert [p["pipeline_config_sha256"] for p in seen] == [want, want]
    assert provenance.PIPELINE_ENV not in os.environ  # only while the step runs

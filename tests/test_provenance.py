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
from runtime.artifact import DeployedModel
from runtime.artifact.deployed import content_sha256
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
    assert p["content_sha256"] == {".": DeployedModel.load(art).content_sha256()}
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
    checkpoint sha256; crossbars.json then names another model.onnx sha256) have one
    content_sha256; other metadata the runtime reads, a weight, a tile layout or a level does not."""
    import shutil

    import numpy as np

    onx, folded, art = tmp_path / "m.onnx", tmp_path / "m.passes.onnx", tmp_path / "art"
    assert main(["export", str(tiny_checkpoint()), "--out", str(onx)]) == 0
    assert main(["passes", str(onx), str(folded), "--passes", "standard"]) == 0
    assert main(["quantize", str(folded), str(art), "--preset", "paper"]) == 0
    base = DeployedModel.load(art).content_sha256()
    assert base == content_sha256(art)

    def variant(name, change):
        other = tmp_path / name
        shutil.copytree(art, other)
        model = onnx.load(str(other / "model.onnx"))
        change(model, other)
        onnx.save(model, str(other / "model.onnx"))
        assert (other / "model.onnx").read_bytes() != (art / "model.onnx").read_bytes()
        cmap = json.loads((other / "crossbars.json").read_text())  # the map names its model file's hash
        cmap["model_sha256"] = hashlib.sha256((other / "model.onnx").read_bytes()).hexdigest()
        (other / "crossbars.json").write_text(json.dumps(cmap))
        return content_sha256(other)  # the files as they are: a changed level no longer loads

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

    def other_level(model, folder):
        drop_provenance(model, folder)
        npz = dict(np.load(folder / "crossbars.npz"))
        key = sorted(npz)[0]
        npz[key] = npz[key].copy()
        npz[key].flat[0] ^= 1
        np.savez(folder / "crossbars.npz", **npz)

    def other_layout(model, folder):
        drop_provenance(model, folder)
        cmap = json.loads((folder / "crossbars.json").read_text())
        cmap["layers"][0]["name"] += "-renamed"  # the map's description: what the runtime reads too
        (folder / "crossbars.json").write_text(json.dumps(cmap))

    assert variant("older-export", drop_provenance) == base
    others = [variant(n, f) for n, f in (("bn", other_bn_targets), ("weight", other_weight),
                                         ("level", other_level), ("layout", other_layout))]
    assert len({base, *others}) == 5


def test_the_cpu_is_read_with_its_instruction_set_extensions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 "
                    "avx512_vnni\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: amx_int8\n")
    assert provenance.cpu_of(info) == "AMD EPYC 9R14 (avx2, avx512f, avx512_bf16, avx512_vnni)"
    info.write_text("model name\t: Old Xeon\nflags\t\t: fpu sse sse2\n")
    assert provenance.cpu_of(info) == f"Old Xeon (none of {', '.join(provenance.CPU_FLAGS)})"
    assert provenance.cpu_of(tmp_path / "missing") == (provenance.platform.processor()
                                                       or provenance.platform.machine())


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

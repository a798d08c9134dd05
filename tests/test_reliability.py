"""Bad input on the toolchain side (issue 11): each case runs the real command through the CLI
entry point and checks exit status 2, ONE line on stderr (``rram: error: ...``) and that nothing
was run, deleted, overwritten or half-written."""
from __future__ import annotations

import errno
import io
import json
import math
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from toolchain.cli import main
from toolchain.data import load_split

from conftest import one_line_error, run_cli

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------ helpers (self-contained)

def tree(root: Path) -> dict:
    """Every file under root with its bytes: "nothing deleted, overwritten or half-written"."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cifar_batches(root: Path, n: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    return root


def image_folder(root: Path, classes=CLASSES, per_class: int = 2, size: int = 32,
                 splits=("train", "test")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint()


class MakesMarker:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------ 1. code execution from data

def test_crafted_cifar_batch_runs_no_code(ckpt, tmp_path, capsys):
    root = cifar_batches(tmp_path / "d")
    marker = tmp_path / "marker"
    batch = root / "cifar-10-batches-py" / "test_batch"
    with open(batch, "wb") as fh:
        pickle.dump({"data": MakesMarker(marker), "labels": [0]}, fh)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--no-cache")
    line = one_line_error(err)
    assert code == 2 and str(batch) in line and "refused" in line and "open" in line
    assert not marker.exists()


def test_cifar_batch_of_the_wrong_type_is_one_line(ckpt, tmp_path, capsys):
    root = cifar_batches(tmp_path / "d")
    batch = root / "cifar-10-batches-py" / "test_batch"
    for obj in ([1, 2, 3], {"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]},
                {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 11]}):
        batch.write_bytes(pickle.dumps(obj))
        code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--no-cache")
        line = one_line_error(err)
        assert code == 2 and f"corrupt CIFAR-10 batch file {batch}" in line


# ------------------------------------------------------------------ 2. class folders

def test_hidden_folders_are_not_classes(ckpt, tmp_path, capsys):
    root = image_folder(tmp_path / "d")
    hidden = root / "test" / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "0.png").write_bytes((root / "test" / "cat" / "0.png").read_bytes())
    for cache in ("--no-cache", None):
        args = ["eval", "--checkpoint", ckpt, "--data", root, "--json"]
        args += [cache] if cache else ["--cache-dir", tmp_path / "cache"]
        code, out, err = run_cli(capsys, *args)
        assert code == 0, err
        assert json.loads(out)["images"] == 20  # 10 classes x 2, nothing from the hidden folder


def test_extra_class_folder_is_refused_naming_the_folders(ckpt, tmp_path, capsys):
    root = image_folder(tmp_path / "d")
    cache = tmp_path / "cache"
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--cache-dir", cache)
    assert code == 0, err  # cached with 10 classes: an empty folder must not reuse that entry
    (root / "test" / "zebra").mkdir()
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--cache-dir", cache)
    line = one_line_error(err)
    assert code == 2 and "only in test: zebra" in line
    (root / "train" / "zebra").mkdir()
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--cache-dir", cache)
    line = one_line_error(err)
    assert code == 2 and "11 classes" in line and "zebra" in line and "10 outputs" in line


def test_train_with_wrong_class_folders_creates_nothing(tmp_path, capsys):
    root = image_folder(tmp_path / "d", classes=[*CLASSES, "zebra"], per_class=1)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.1",
                       "--epochs", "1", "--batch-size", "4", "--data", root, "--no-cache", "--out", out)
    line = one_line_error(err)
    assert code == 2 and "11 class folders" in line and "zebra" in line
    assert not out.exists()


def test_validate_with_wrong_class_folders_writes_nothing(paper_art, tmp_path, capsys):
    art = paper_art  # a 10-class model
    root = image_folder(tmp_path / "d", classes=CLASSES[:3])
    out = tmp_path / "res.json"
    code, _, err = run_cli(capsys, "validate", art, "--data", root, "--no-cache", "--runs", "1", "--out", out)
    line = one_line_error(err)
    assert code == 2 and "3 classes (airplane, automobile, bird)" in line and "10 outputs" in line
    assert not out.exists()


def test_recalibrate_with_wrong_class_folders_is_refused(ckpt, tmp_path, capsys):
    root = image_folder(tmp_path / "d", classes=CLASSES[:3])
    out = tmp_path / "rec"
    code, _, err = run_cli(capsys, "recalibrate", ckpt, "--rates", "0.1", "--data", root, "--no-cache",
                       "--out", out, "--batch-size", "2")
    line = one_line_error(err)
    assert code == 2 and "3 classes (airplane, automobile, bird)" in line
    assert not out.exists()


# ------------------------------------------------------------------ 3. full disk

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_enospc(*args, **kwargs):  # what torch.save really raises writing to /dev/full
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.parametrize("fail", [_enospc, _torch_enospc])
def test_full_disk_in_train_leaves_no_folder(tmp_path, capsys, monkeypatch, fail):
    root = cifar_batches(tmp_path / "d", n=4)
    out = tmp_path / "new" / "run"
    monkeypatch.setattr(torch, "save", fail)
    code, _, err = run_cli(capsys, "train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.1",
                       "--epochs", "1", "--batch-size", "4", "--data", root, "--no-cache", "--out", out)
    line = one_line_error(err)
    assert code == 2 and str(out / "last.pt") in line
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("fail", [_enospc, _torch_enospc])
def test_full_disk_in_recalibrate_keeps_what_was_there(ckpt, tmp_path, capsys, monkeypatch, fail):
    root = cifar_batches(tmp_path / "d", n=4)
    monkeypatch.setattr(torch, "save", fail)
    args = ["recalibrate", ckpt, "--rates", "0.1", "--data", root, "--no-cache", "--batch-size", "4"]
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "new" / "rec")
    line = one_line_error(err)
    assert code == 2 and str(tmp_path / "new" / "rec" / "recalibrated.pt") in line
    assert not (tmp_path / "new").exists()
    # an existing folder is not ours to remove, and its files stay as they were
    old = tmp_path / "old"
    old.mkdir()
    (old / "recalibrated.pt").write_bytes(b"previous result")
    code, _, err = run_cli(capsys, *args, "--out", old)
    assert code == 2 and str(old / "recalibrated.pt") in one_line_error(err)
    assert tree(old) == {"recalibrated.pt": b"previous result"}


# ------------------------------------------------------------------ 4. seeds

@pytest.mark.parametrize("command", ["eval", "export", "passes", "recalibrate", "train", "validate"])
def test_seed_is_bounded_and_its_range_documented(command, capsys):
    code, _, err = run_cli(capsys, command, "--seed", str(2**70))
    line = one_line_error(err)
    assert code == 2 and "--seed" in line and "2**32" in line
    code, _, err = run_cli(capsys, command, "--seed", str(2**32))
    assert code == 2 and "2**32" in one_line_error(err)
    assert main([command, "--help"]) == 0
    assert "0 <= seed < 2**32" in " ".join(capsys.readouterr().out.split())


def test_export_with_a_huge_seed_writes_nothing(ckpt, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", ckpt, "--out", tmp_path / "m.onnx", "--seed", str(2**70))
    assert code == 2 and "--seed" in one_line_error(err)
    assert not (tmp_path / "m.onnx").exists()


def test_largest_seed_runs(ckpt, tmp_path, capsys):
    root = cifar_batches(tmp_path / "d", n=4)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--no-cache", "--json",
                         "--sa1", "0.1", "--seed", str(2**32 - 1))
    assert code == 0, err
    assert json.loads(out)["seed"] == 2**32 - 1


# ------------------------------------------------------------------ 5. smaller ones

def test_eval_refuses_images_of_the_wrong_size(ckpt, tmp_path, capsys):
    root = image_folder(tmp_path / "d", size=64, per_class=1)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--no-cache")
    line = one_line_error(err)
    assert code == 2 and "3x32x32" in line and "3x64x64" in line and out == ""


def test_negative_zero_rate_is_recorded_as_zero(ckpt, tmp_path, capsys):
    root = cifar_batches(tmp_path / "d", n=4)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--no-cache", "--json",
                         "--sa1", "-0")
    assert code == 0, err
    assert "-0.0" not in out and math.copysign(1.0, json.loads(out)["sa1"]) == 1.0
    code, out, err = run_cli(capsys, "recalibrate", ckpt, "--rates=-0,0.1", "--data", root, "--no-cache",
                         "--batch-size", "4", "--out", tmp_path / "rec", "--json")
    assert code == 0, err
    assert json.loads(out)["rates"] == ["0.0", "0.1"]


class RunsShell(MakesMarker):
    def __reduce__(self):  # a module torch's weights_only unpickler blocks outright (posix)
        import os

        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("payload", [MakesMarker, RunsShell])
def test_malicious_checkpoint_is_named_as_such(tmp_path, capsys, payload):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": payload(marker)}, path)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", path, "--model", "resnet20")
    line = one_line_error(err)
    assert code == 2 and "weights_only" in line and "holds code or objects" in line
    assert "not a valid pickle" not in line and not marker.exists()


def test_unwritable_cache_runs_uncached_with_a_note(ckpt, tmp_path, capsys, monkeypatch):
    root = cifar_batches(tmp_path / "d", n=4)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # root ignores the mode: refuse as the kernel would
        if dir is not None and Path(dir).resolve() == cache.resolve():
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    try:
        code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", root, "--cache-dir", cache)
    finally:
        cache.chmod(0o755)
    assert code == 0 and "top-1" in out
    assert "note: not caching" in err and "rram: error" not in err
    assert list(cache.iterdir()) == []


def _results(config_seed: int) -> dict:
    from runtime.results import FORMAT, VERSION

    return {"format": FORMAT, "version": VERSION,
            "config": {"runs": 2, "images": 10, "sa1": [0.1], "sa0": 0.0, "seed": config_seed},
            "rates": [{"sa1": 0.1, "sa0": 0.0, "model": ".",
                       "runs": {"0": {"accuracy": 0.5, "stuck_fraction": 0.1}}}],
            "clean": {".": 0.9}, "timing": {"seconds": 1.0}}


def test_merge_does_not_overwrite_another_campaign(tmp_path, capsys):
    shard = tmp_path / "shard.json"
    shard.write_text(json.dumps(_results(0)))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_results(1)))
    before = other.read_bytes()
    code, _, err = run_cli(capsys, "merge", shard, "--out", other)
    line = one_line_error(err)
    assert code == 2 and str(other) in line and "choose another --out" in line
    assert other.read_bytes() == before
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "merge", shard, "--out", tmp_path / "notes.txt")
    assert code == 2 and (tmp_path / "notes.txt").read_text() == "mine"
    # a merge of the same campaign may be replaced (re-merging as more shards finish)
    code, _, err = run_cli(capsys, "merge", shard, "--out", tmp_path / "merged.json")
    assert code == 0, err
    code, _, err = run_cli(capsys, "merge", shard, "--out", tmp_path / "merged.json")
    assert code == 0, err


def test_python2_numpy1_batch_files_still_load(tmp_path, capsys, ckpt):
    """The real CIFAR-10 files are Python 2 pickles of numpy 1.x arrays (str as BINSTRING,
    numpy.core.multiarray._reconstruct): the restricted unpickler must admit exactly those."""
    class Py2Pickler(pickle._Pickler):
        def save_bytes(self, obj):  # Python 2's str: raw bytes, read back with encoding="latin1"
            n = len(obj)
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                       else pickle.BINSTRING + struct.pack("<i", n) + obj)
            self.memoize(obj)

        dispatch = dict(pickle._Pickler.dispatch)  # noqa: RUF012 (pickle looks it up by this name)
        dispatch[bytes] = save_bytes

    rng = np.random.default_rng(0)
    folder = tmp_path / "d" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = list(range(10)) * 2
    data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump({"batch_label": "testing batch 1 of 1", "labels": labels,
                                          "data": data, "filenames": [f"f{i}.png" for i in range(20)]})
        raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
        (folder / name).write_bytes(raw)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--data", tmp_path / "d", "--no-cache", "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == 20
    split = load_split(tmp_path / "d", "test", use_cache=False)
    assert split.labels.tolist() == labels
    assert np.array_equal(split.images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))

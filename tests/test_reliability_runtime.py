"""Bad input on the runtime side (issue 11): each case runs the real command through the CLI entry
point and checks exit status 2, ONE line on stderr (``rram: error: ...``) and that nothing was
deleted, overwritten or half-written."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
import torch

from toolchain.cli import main

from _runtime_helpers import export_torch, tiny_model

# ------------------------------------------------------------------ helpers

def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rram: error: "), err
    return lines[0]


def tree(root: Path) -> dict:
    """Every file and folder under root, files with their sha256: "nothing deleted or overwritten"."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("float") / "m.onnx"
    export_torch(tiny_model(), torch.zeros(1, 3, 32, 32), path)
    return path


# ------------------------------------------------------------------ 1. quantize --force

def test_force_never_replaces_the_folder_holding_the_input(float_onnx, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "m.onnx").write_bytes(float_onnx.read_bytes())
    (work / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    code, _, err = run(capsys, "quantize", work / "m.onnx", work, "--force")
    line = one_line_error(err)
    assert code == 2 and str(work) in line and "input" in line
    # the case: OUT is the current directory ("."), which holds the input
    monkeypatch.chdir(work)
    code, _, err = run(capsys, "quantize", "m.onnx", ".", "--force")
    assert code == 2 and "refusing to replace ." in one_line_error(err)
    # a parent of the current directory, the input elsewhere
    sub = work / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    code, _, err = run(capsys, "quantize", float_onnx, "..", "--force")
    assert code == 2 and "current directory" in one_line_error(err)
    sub.rmdir()
    assert tree(tmp_path) == before  # nothing deleted, no "..xxxx.old" folder left


def test_force_replaces_only_a_previous_artifact(float_onnx, tmp_path, capsys):
    out = tmp_path / "art"
    code, _, err = run(capsys, "quantize", float_onnx, out)
    assert code == 0, err
    (out / "results.json").write_text("a campaign")  # no longer only the artifact's own files
    before = tree(tmp_path)
    code, _, err = run(capsys, "quantize", float_onnx, out, "--force")
    line = one_line_error(err)
    assert code == 2 and "not a previous artifact" in line and "results.json" in line
    assert tree(tmp_path) == before
    other = tmp_path / "other"  # a folder without a conductance map
    other.mkdir()
    (other / "model.onnx").write_text("not an artifact")
    code, _, err = run(capsys, "quantize", float_onnx, other, "--force")
    assert code == 2 and "no crossbars.json" in one_line_error(err)
    assert (other / "model.onnx").read_text() == "not an artifact"
    (out / "results.json").unlink()
    code, _, err = run(capsys, "quantize", float_onnx, out, "--force", "--bits-per-cell", "4")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "other"]


def test_failed_replacement_leaves_the_old_artifact_and_no_temporary_folder(float_onnx, tmp_path, capsys,
                                                                            monkeypatch):
    out = tmp_path / "art"
    assert run(capsys, "quantize", float_onnx, out)[0] == 0
    before = tree(tmp_path)
    real = os.replace

    def fail_swap_in(src, dst):  # the new folder cannot be renamed into place
        if str(src).endswith(".tmp") and Path(dst) == out:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_swap_in)
    code, _, err = run(capsys, "quantize", float_onnx, out, "--force", "--bits-per-cell", "4")
    line = one_line_error(err)
    assert code == 2 and f"cannot write {out}" in line
    assert tree(tmp_path) == before


def test_full_disk_in_quantize_force_names_the_folder(float_onnx, tmp_path, capsys, monkeypatch):
    import runtime.artifact.folder as folder

    out = tmp_path / "art"
    assert run(capsys, "quantize", float_onnx, out)[0] == 0
    before = tree(tmp_path)

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder, "save_map", enospc)
    code, _, err = run(capsys, "quantize", float_onnx, out, "--force")
    line = one_line_error(err)
    assert code == 2 and f"cannot write {out}: No space left on device" in line
    assert tree(tmp_path) == before

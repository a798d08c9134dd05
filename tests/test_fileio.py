import os
import stat

import pytest

from runtime.fileio import atomic_path, atomic_write_json


def test_atomic_write_replaces_with_usual_mode(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n "a": 1\n}\n'
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_unwritable_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    import runtime.fileio as fileio
    from runtime.errors import RuntimeInputError

    # (root may write anywhere, so the permission answer is simulated)
    monkeypatch.setattr(fileio.os, "access", lambda p, mode: str(p) != str(tmp_path / "ro"))
    (tmp_path / "ro").mkdir()
    with pytest.raises(RuntimeInputError, match="no write permission in"):
        fileio.check_output_path(tmp_path / "ro" / "sub" / "out.json")
    fileio.check_output_path(tmp_path / "ok.json")

"""What a build system needs: content fingerprints of inputs and outputs, and the per-step record
(``pipeline-state.json`` in the run folder) of what each finished step was built from.

A step is up to date when its settings, the SHA-256 of each input file and of each output file
are those recorded when it last finished. A folder input (the data set: 60,000 images) is
fingerprinted by the relative path and the bytes of every file in it: reading the 236 MB of the
JPEG CIFAR-10 takes about 1 s, and a copy of the data set (another machine, a fresh checkout of
shared/, a copy that did not keep modification times) is then the same input, so it re-runs no
step. The decoded-image cache (toolchain/data.py) may still re-decode such a copy: it keys on
sizes and modification times, which is cheap and only costs a decode.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from runtime.fileio import atomic_write_json

STATE_NAME = "pipeline-state.json"
FORMAT = "rram-pipeline-state"
VERSION = 1

_memo: dict[tuple, str] = {}


def fingerprint(path: Path) -> str | None:
    """sha256 of a file's bytes, or of a folder's files (relative paths and bytes); None if missing.
    Memoised per process on the file's (size, mtime), or on the (path, size, mtime) of every file in
    the folder: an edit is seen, and the data set is read once per run, not once per step."""
    try:
        st = path.stat()
    except OSError:
        return None
    listing = _listing(path) if path.is_dir() else None  # walked once: memo key and hash share it
    memo_key = (str(path), _listing_digest(listing) if listing is not None else (st.st_size, st.st_mtime_ns))
    if memo_key in _memo:
        return _memo[memo_key]
    h = hashlib.sha256()
    if listing is not None:
        h.update(b"folder\n")
        for rel, file, file_st in listing:
            h.update(f"{rel}\t{file_st.st_size}\n".encode())  # the size frames the bytes
            _hash_file(file, h)
    else:
        _hash_file(path, h)
    digest = h.hexdigest()
    _memo[memo_key] = digest
    return digest


def listing_fingerprint(folder: Path) -> str:
    """How a folder was fingerprinted before its contents were (run folders recorded until
    2026-12-01): sha256 of its files' "relpath<TAB>size<TAB>mtime_ns" lines. decide() still accepts
    it where it describes the folder as it is, so upgrading re-runs and restarts nothing."""
    return _listing_digest(_listing(folder))


def _listing(folder: Path) -> list[tuple[str, Path, os.stat_result]]:
    """(relative path, path, stat) of every file under ``folder``, in a fixed order."""
    return [(rel, file, file.stat()) for rel, file in _files(folder, "")]


def _listing_digest(listing: list[tuple[str, Path, os.stat_result]]) -> str:
    h = hashlib.sha256(b"folder\n")
    for rel, _, st in listing:
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _hash_file(path: Path, h) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


def _files(folder: Path, prefix: str):
    """(relative path, path) of every file under ``folder``, in a fixed order."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir():
            yield from _files(Path(e.path), f"{prefix}{e.name}/")
        else:
            yield f"{prefix}{e.name}", Path(e.path)


def is_state_file(path: Path) -> bool:
    """Whether ``path`` is a pipeline state file (what marks a run folder as the pipeline's)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("steps"), dict)


class State:
    """The run folder's record of finished (and started) steps, and of every file the pipeline
    wrote there; written atomically."""

    def __init__(self, run: Path):
        self.path = run / STATE_NAME
        self.doc = {"format": FORMAT, "version": VERSION, "steps": {}, "started": {}, "written": []}
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, ValueError):
                doc = None  # unreadable: every step is out of date, and the file is rewritten
            if isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("steps"), dict):
                self.doc = {**self.doc, **doc}

    def record(self, step: str) -> dict | None:
        return self.doc["steps"].get(step)

    def started_key(self, step: str) -> str | None:
        return self.doc["started"].get(step)

    def start(self, step: str, key: str, outputs: list[str] = ()) -> None:
        """Say a step began with these inputs and settings: a killed step re-run with the same
        ones resumes (training, campaign) instead of starting afresh. ``outputs`` (paths relative
        to the run folder) join what the pipeline wrote here, before a byte of them is written."""
        self.doc["started"][step] = key
        self.doc["written"] = sorted(set(self.doc.get("written", [])) | set(outputs))
        self._write()

    def written(self) -> set[str]:
        """Paths (relative to the run folder) of every file the pipeline wrote or began to write
        here: the only files it ever deletes or replaces. A state written before this record
        existed counts its finished steps' outputs."""
        out = set(self.doc.get("written", []))
        for rec in self.doc["steps"].values():
            out.update(rec.get("outputs", {}))
        return out

    def finish(self, step: str, record: dict) -> None:
        self.doc["steps"][step] = record
        self.doc["started"].pop(step, None)
        self._write()

    def _write(self) -> None:
        atomic_write_json(self.path, self.doc)


def settings_key(settings: dict, inputs: dict) -> str:
    return hashlib.sha256(json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True).encode()).hexdigest()

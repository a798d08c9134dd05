"""Write-then-rename for single files, so a kill never leaves a half-written output under the
real name, and file hashing; ``toolchain`` uses them too (it may import ``runtime``). Multi-file
outputs have their own write-then-rename of a whole folder or file set: ``passes/model_io.py``
(model + external data) and ``runtime/artifact/folder.py`` (artifact folder)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import RuntimeInputError


def _usual_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_output_path(path: str | os.PathLike, inputs=()) -> Path:
    """Fail before any long work if ``path`` cannot become a file: it is a folder, one of the
    command's ``inputs`` (``rram export m.pt --out m.pt`` replaced the checkpoint), or a file
    stands where one of its parent folders should be."""
    path = Path(path)
    if path.is_dir():
        raise RuntimeInputError(f"cannot write {path}: it is a folder")
    for given in inputs:
        if path.exists() and Path(given).exists() and os.path.samefile(path, given):
            raise RuntimeInputError(f"cannot write {path}: it is the input {given}; choose another output")
    return check_parents(path)


def check_parents(path: str | os.PathLike) -> Path:
    """Fail if a file stands where one of ``path``'s parent folders should be (file or folder
    outputs alike), instead of a bare "File exists" from mkdir later."""
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RuntimeInputError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):  # before the long work, not after it
                raise RuntimeInputError(f"cannot write {path}: no write permission in {parent}")
            break
    return path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it gets the usual file mode (mkstemp
    makes 0600) and replaces ``path``; on failure it is removed."""
    path = check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        raise RuntimeInputError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _usual_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise RuntimeInputError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def atomic_write_with(path: str | os.PathLike, write) -> None:
    """``write(fh)`` into a binary file handle, then rename into ``path`` (e.g. ``np.savez``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 1) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def read_json_document(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """A JSON object whose "format" field is ``fmt``; anything else is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeInputError(f"{what} not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeInputError(f"corrupt {what} {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise RuntimeInputError(f"{path} is not a {what}")
    return doc


NPY_HEADER_BYTES = 10_000  # at most the header of one .npy member (numpy's own read limit; it writes ~128)


def check_npz_members(path: str | os.PathLike, expected: dict[str, int], what: str, *,
                      unknown: str | None = None) -> None:
    """Before anything is decompressed: every member of the ``.npz`` at ``path`` that ``expected``
    names ({array name: the most data bytes it may hold}) declares (its zip ``file_size``) and
    describes (its ``.npy`` header's shape and dtype) no more than that, so an archive built as a
    zip bomb is a one-line error instead of gigabytes of memory. ``unknown``: None ignores other
    members (never read); else the one-line error for them. Damage is left to the reader's own
    messages (a member not found, a bad header: np.load says it)."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                limit = expected.get(name)
                if limit is None:
                    if unknown is not None:
                        raise RuntimeInputError(f"{what} {path}: {unknown} ({name!r})")
                    continue
                if info.file_size > limit + NPY_HEADER_BYTES:
                    raise RuntimeInputError(f"{what} {path}: entry {name!r} declares {info.file_size} bytes, "
                                            f"at most {limit + NPY_HEADER_BYTES} fit what it holds; refused "
                                            f"before reading it")
                with zf.open(info) as fh:
                    try:
                        version = np.lib.format.read_magic(fh)
                        read = {(1, 0): np.lib.format.read_array_header_1_0,
                                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                        if read is None:
                            continue
                        shape, _, dtype = read(fh)
                    except (ValueError, EOFError, OSError, zipfile.BadZipFile, NotImplementedError):
                        continue  # not an .npy: the reader refuses it in its own words
                described = math.prod(shape) * dtype.itemsize
                if described > limit:
                    raise RuntimeInputError(f"{what} {path}: entry {name!r} describes {described} bytes "
                                            f"(shape {tuple(shape)}, {dtype}), at most {limit} fit what it "
                                            f"holds; refused before reading it")
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return  # not a readable zip: np.load gives its own one-line error


def _exit_on_sigterm():
    """While a lock is held: SIGTERM raises ``SystemExit(143)`` (128 + SIGTERM, the status a
    default SIGTERM death reports) in the main thread, so ``finally`` blocks and context managers
    run (the lock file is removed) instead of the process dying where it stands. Returns the
    function that puts the previous handler back. Elsewhere than the main thread (signal handlers
    can only be set there), or when SIGTERM is ignored, nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or previous is None:  # ignored, or set outside Python: left alone
        return lambda: None

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM is the previous behaviour
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)

    def restore():
        if signal.getsignal(signal.SIGTERM) is terminate:
            signal.signal(signal.SIGTERM, previous)
    return restore


@contextmanager
def output_lock(path: str | os.PathLike, what: str = "rram"):
    """Hold ``PATH.lock`` while writing ``path`` over a long time, so that two processes never
    write one results file (each would rewrite it from its own copy: a campaign lost). The lock is
    an ``fcntl.flock`` on that file, which the kernel releases when its holder dies, so a lock left
    by a killed process is free and taken over; the file holds the holder's pid for the message.
    Released (and the file removed) on return, error, KeyboardInterrupt or SIGTERM (turned into
    ``SystemExit(143)`` while the lock is held, so that every context manager unwinds)."""
    import fcntl
    import socket

    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeInputError(f"cannot write {path}: {e.strerror or e}") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, _usual_mode())
        except OSError as e:
            raise RuntimeInputError(f"cannot create the lock {lock}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            pid = holder[0] if holder else "?"
            host = f" on {holder[1]}" if len(holder) > 1 and holder[1] != socket.gethostname() else ""
            raise RuntimeInputError(f"{path} is being written by another {what} (process {pid}{host}, lock "
                                    f"{lock}); wait for it to finish or choose another output") from None
        # the holder before us may have removed the file after we opened it: lock the one in place
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    restore = _exit_on_sigterm()
    try:
        os.ftruncate(fd, 0)  # a stale lock's pid, if any
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield lock
    finally:
        restore()
        with suppress(OSError):  # still holding it: whoever opens the file next finds it gone or new
            os.unlink(lock)
        os.close(fd)
        if not path.exists():
            for folder in created:  # the folders made for the lock alone
                try:
                    folder.rmdir()
                except OSError:
                    break

"""The decoded-image cache: each split as one ``.npz`` (images NHWC uint8, labels int64, class
names) under the cache folder, keyed on the source path and every source file's size and mtime,
so any change re-decodes (and the entry it supersedes is deleted: a re-copied data set does not
leave 185 MB behind each time)."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from runtime.errors import RuntimeInputError
from runtime.fileio import atomic_write_with

from .split import Split


def default_cache_dir() -> Path:
    env = os.environ.get("RRAM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rram-toolchain"


def cache_name(layout: str, folder: Path, split: str, sources: list[tuple[str, os.stat_result]]) -> tuple[str, str]:
    """(prefix, file name) of the split's cache entry: the prefix names the data folder and split,
    the rest hashes the source files (path relative to ``folder``, size, mtime): any change
    re-decodes, and the entry it supersedes (same prefix) is removed."""
    where = hashlib.sha256(f"v1|{layout}|{folder.resolve()}|{split}".encode())
    prefix = f"cifar-{split}-{where.hexdigest()[:12]}-"
    h = where.copy()
    for rel, st in sources:
        h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
    return prefix, f"{prefix}{h.hexdigest()[:24]}.npz"


def read_cached(cache_file: Path, classes: list[str] | None) -> Split | None:
    """The cached split, or None: no entry, a damaged one (rebuilt by the caller), or one whose
    classes are not ``classes`` (the key covers the image files, not empty class folders: those
    shift labels too)."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            cached = Split(z["images"], z["labels"], [str(c) for c in z["classes"]])
        if classes is None or cached.classes == classes:
            return cached
    except (OSError, ValueError, KeyError):
        pass  # a damaged cache entry is rebuilt by the caller
    return None


def write_cache(cache_file: Path, prefix: str, split: Split) -> None:
    """Store ``split`` and remove the same folder's earlier entries; a cache that cannot be
    written costs time, not the run (a note on stderr)."""
    try:
        _atomic_savez(cache_file, images=split.images, labels=split.labels, classes=np.asarray(split.classes))
    except (OSError, RuntimeInputError) as e:  # a read-only or full cache costs time, not the run
        print(f"note: not caching the decoded images ({e}); running uncached", file=sys.stderr)
    else:  # the same folder's earlier entries (files since changed or re-copied) are dead weight
        for stale in cache_file.parent.glob(f"{prefix}*.npz"):
            if stale != cache_file:
                stale.unlink(missing_ok=True)


def _atomic_savez(path: Path, **arrays) -> None:
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))

"""The torchvision CIFAR-10 layout: ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (or
ROOT itself being that folder). Batch files are unpickled by a restricted unpickler
(``_BatchUnpickler``): a pickle can run code, a CIFAR batch needs only numpy arrays."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import UserError
from .layout import CIFAR_FILES
from .split import Split

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array rebuilder, whatever its module path
_BATCH_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1.x writers
                  ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2.x writers
                  ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


def batch_files(folder: Path, split: str) -> list[Path]:
    """The split's batch files, in loading order; one missing is an error."""
    files = [folder / f for f in CIFAR_FILES[split]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"CIFAR-10 batch file missing in {folder}: {missing[0]}")
    return files


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batch files hold: dicts, lists, bytes, str, ints and numpy arrays.
    Any other global (``os.system``, ``builtins.eval``, ...) is refused before it is called."""

    def find_class(self, module, name):
        try:
            return _BATCH_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused: it holds {module}.{name}, not only numpy arrays "
                                         f"and plain data") from None


def _unpickle(path: Path):
    """A batch file's object through the restricted unpickler; any failure names the file."""
    try:
        with open(path, "rb") as fh:
            return _BatchUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise UserError(f"CIFAR-10 batch file {path}: {e}") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise UserError(f"corrupt CIFAR-10 batch file {path}: {type(e).__name__}: {e}") from None


def read_cifar_batches(folder: Path, split: str, files: list[Path]) -> Split:
    classes = [f"class{i}" for i in range(10)]
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _unpickle(meta)
        names = names.get("label_names") if isinstance(names, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(c, (str, bytes)) for c in names):
            raise UserError(f"corrupt CIFAR-10 batch file {meta}: no 'label_names' list of names")
        classes = [c.decode("latin1") if isinstance(c, bytes) else c for c in names]
    data, labels = [], []
    for f in files:
        entry = _unpickle(f)
        lab = None
        if isinstance(entry, dict):
            lab = entry.get("labels", entry.get("fine_labels"))
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), np.ndarray) \
                or not isinstance(lab, list) or not all(type(v) is int for v in lab):
            raise UserError(f"corrupt CIFAR-10 batch file {f}: not a dict with a 'data' array and "
                            f"a 'labels' list of integers")
        arr = entry["data"]
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32 or arr.shape[0] != len(lab):
            raise UserError(f"corrupt CIFAR-10 batch file {f}: 'data' is {arr.dtype} {arr.shape}, expected "
                            f"uint8 ({len(lab)}, 3072) for {len(lab)} labels")
        if lab and not 0 <= min(lab) <= max(lab) < len(classes):
            raise UserError(f"corrupt CIFAR-10 batch file {f}: labels outside 0..{len(classes) - 1}")
        data.append(arr.reshape(-1, 3, 32, 32))
        labels.extend(lab)
    images = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))
    return Split(images, np.asarray(labels, dtype=np.int64), classes)

"""CIFAR-10 loading: two on-disk layouts, decoded once into a uint8 cache, batches made on tensors.

Layouts (detected automatically):
- ImageFolder: ``ROOT/{train,test}/<class>/*.jpg|png`` (e.g. ``../shared/data/cifar10-jpeg``);
  class index = sorted folder name, as ``torchvision.datasets.ImageFolder`` does.
- torchvision CIFAR-10: ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (or ROOT itself
  being that folder). ``download=True`` asks torchvision to fetch it (online only).

Decoded splits are cached as ``.npz`` (images NHWC uint8, labels int64) under the cache folder,
keyed on the source path and every source file's size and mtime, so any change re-decodes (and
the entry it supersedes is deleted: a re-copied data set does not leave 185 MB behind each time).

Bad data is a one-line error, never a silently wrong accuracy: hidden entries (".ipynb_checkpoints")
are ignored, ``train`` and ``test`` must hold the same class folders, and ``check_for_model``
compares the classes and image size with the model's. Batch files are unpickled by a restricted
unpickler (``_BatchUnpickler``): a pickle can run code, a CIFAR batch needs only numpy arrays.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import RuntimeInputError
from runtime.fileio import atomic_write_with
from runtime.metadata import Normalization

from .errors import UserError

if TYPE_CHECKING:  # annotations only: torch is imported where batches are made (below)
    import torch

SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
CIFAR_BATCH_DIR = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SIZE = (32, 32)  # (H, W) of CIFAR-10: the built-in models' size, and that of a checkpoint that
#                       records none (a model trained here records its data's: ModelSpec.image_size)


def default_cache_dir() -> Path:
    env = os.environ.get("RRAM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rram-toolchain"


def resolve_data_root(path: str | os.PathLike | None) -> Path:
    if path is None or str(path) == "":
        path = os.environ.get("RRAM_DATA")
        if not path:
            raise UserError("no data folder given: pass --data PATH or set RRAM_DATA")
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"data folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"data path is not a folder: {root}")
    return root


def detect_layout(root: Path) -> tuple[str, Path]:
    """Return ("imagefolder" | "cifar-batches", folder that holds the split data)."""
    if (root / CIFAR_BATCH_DIR).is_dir():
        return "cifar-batches", root / CIFAR_BATCH_DIR
    if (root / "test_batch").is_file() or (root / "data_batch_1").is_file():
        return "cifar-batches", root
    if all((root / s).is_dir() for s in SPLITS):
        return "imagefolder", root
    raise UserError(
        f"unrecognised data layout in {root}: expected train/ and test/ class folders "
        f"or a {CIFAR_BATCH_DIR}/ folder (torchvision CIFAR-10)"
    )


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> Split:
        """``n`` images spread evenly over the split (folders are sorted by class: the first n
        would cover one class), the same ones ``rram validate --images n`` takes."""
        if n is None or n >= len(self):
            return self
        idx = subset_indices(len(self), n)
        return Split(self.images[idx], self.labels[idx], self.classes)


def subset_indices(total: int, n: int | None) -> np.ndarray:
    """``n`` images spread evenly over the split (test folders are sorted by class, so the first
    n would cover only a few classes)."""
    if n is None or n >= total:
        return np.arange(total)
    return (np.arange(n, dtype=np.int64) * total) // n


def _scan_split(folder: Path, split: str) -> list[tuple[str, os.stat_result]]:
    """Every image of an ImageFolder split as (path relative to ``folder``, its stat), sorted as
    ``sorted(Path)`` sorts them (by class folder, then file name). One ``os.scandir`` pass: a
    pathlib glob and a stat per ``Path`` took about 2.5 s for CIFAR-10's 60,000 files, paid by
    every command that loads a split, even from the cache."""
    split_dir = folder / split
    if not split_dir.is_dir():
        raise UserError(f"data split folder not found: {split_dir}")
    found = []
    with os.scandir(split_dir) as classes:
        for cls in classes:
            if cls.name.startswith(".") or not cls.is_dir():
                continue
            with os.scandir(cls.path) as entries:
                for e in entries:
                    if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES \
                            and e.is_file():
                        found.append((cls.name, e.name, e.stat()))
    if not found:
        raise UserError(f"data split is empty: no images under {split_dir}/<class>/")
    found.sort(key=lambda t: (t[0], t[1]))
    return [(f"{split}/{c}/{n}", st) for c, n, st in found]


def _source_files(layout: str, folder: Path, split: str) -> list[Path]:
    if layout == "cifar-batches":
        files = [folder / f for f in CIFAR_FILES[split]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"CIFAR-10 batch file missing in {folder}: {missing[0]}")
        return files
    return [folder / rel for rel, _ in _scan_split(folder, split)]


def class_folders(split_dir: Path) -> list[str]:
    """Sorted class folder names; hidden ones (".ipynb_checkpoints", ".git") are not classes."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_same_classes(folder: Path) -> None:
    """ImageFolder labels are folder indices: train and test must hold the same folders, or one
    split's labels mean other classes than the other's."""
    train, test = class_folders(folder / "train"), class_folders(folder / "test")
    if train != test:
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise UserError(f"train and test class folders in {folder} differ: only in train: "
                        f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'}")


def _cache_name(layout: str, folder: Path, split: str, sources: list[tuple[str, os.stat_result]]) -> tuple[str, str]:
    """(prefix, file name) of the split's cache entry: the prefix names the data folder and split,
    the rest hashes the source files (path relative to ``folder``, size, mtime): any change
    re-decodes, and the entry it supersedes (same prefix) is removed."""
    where = hashlib.sha256(f"v1|{layout}|{folder.resolve()}|{split}".encode())
    prefix = f"cifar-{split}-{where.hexdigest()[:12]}-"
    h = where.copy()
    for rel, st in sources:
        h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
    return prefix, f"{prefix}{h.hexdigest()[:24]}.npz"


def _sources(layout: str, folder: Path, split: str) -> list[tuple[str, os.stat_result]]:
    """(relative path, stat) of each source file, in loading order."""
    if layout == "imagefolder":
        return _scan_split(folder, split)
    return [(str(f.relative_to(folder)), f.stat()) for f in _source_files(layout, folder, split)]


def _decode_imagefolder(folder: Path, split: str, files: list[Path], progress: bool) -> Split:
    from PIL import Image
    from tqdm import tqdm

    classes = class_folders(folder / split)
    index = {c: i for i, c in enumerate(classes)}
    images, labels = [], []
    for f in tqdm(files, desc=f"decoding {split}", unit="img", disable=None if progress else True,
                  leave=False):
        try:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except OSError as e:
            raise UserError(f"cannot decode image {f}: {e}") from None
        labels.append(index[f.parent.name])
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise UserError(f"images in {folder / split} differ in size: {sorted(shapes)[:3]}")
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64), classes)


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array rebuilder, whatever its module path
_BATCH_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1.x writers
                  ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2.x writers
                  ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


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


def _read_cifar_batches(folder: Path, split: str, files: list[Path]) -> Split:
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


def load_split(data: str | os.PathLike | None, split: str, *, cache_dir: str | os.PathLike | None = None,
               use_cache: bool = True, download: bool = False, progress: bool = True) -> Split:
    """Load one split ("train" or "test") as uint8 NHWC images and int64 labels."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {SPLITS}")
    if download:
        import torchvision

        root = Path(data or os.environ.get("RRAM_DATA") or ".")
        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.CIFAR10(str(root), train=(split == "train"), download=True)
    root = resolve_data_root(data)
    layout, folder = detect_layout(root)
    sources = _sources(layout, folder, split)
    classes = None
    if layout == "imagefolder":
        _check_same_classes(folder)
        classes = class_folders(folder / split)

    cache_file = None
    if use_cache:
        cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        prefix, name = _cache_name(layout, folder, split, sources)
        cache_file = cache_root / name
        if cache_file.is_file():
            try:
                with np.load(cache_file, allow_pickle=False) as z:
                    cached = Split(z["images"], z["labels"], [str(c) for c in z["classes"]])
                # the key covers the image files, not empty class folders: those shift labels too
                if classes is None or cached.classes == classes:
                    return cached
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt below

    files = [folder / rel for rel, _ in sources]
    if layout == "imagefolder":
        result = _decode_imagefolder(folder, split, files, progress)
    else:
        result = _read_cifar_batches(folder, split, files)
    if len(result) == 0:
        raise UserError(f"data split {split!r} in {root} is empty")

    if cache_file is not None:
        try:
            _atomic_savez(cache_file, images=result.images, labels=result.labels,
                          classes=np.asarray(result.classes))
        except (OSError, RuntimeInputError) as e:  # a read-only or full cache costs time, not the run
            print(f"note: not caching the decoded images ({e}); running uncached", file=sys.stderr)
        else:  # the same folder's earlier entries (files since changed or re-copied) are dead weight
            for stale in cache_file.parent.glob(f"{prefix}*.npz"):
                if stale != cache_file:
                    stale.unlink(missing_ok=True)
    return result


def check_for_model(split: Split, num_classes: int, what: str = "the model", *,
                    image_size: tuple[int, int] | None = IMAGE_SIZE) -> None:
    """One-line error unless the data's classes and image size are what the model takes:
    otherwise labels or inputs mean something else and the accuracy is silently wrong."""
    if len(split.classes) != num_classes:
        raise UserError(f"the data has {len(split.classes)} classes ({', '.join(split.classes)}), "
                        f"{what} has {num_classes} outputs")
    if len(split) and int(split.labels.max()) >= num_classes:
        raise UserError(f"the data has label {int(split.labels.max())}, {what} has {num_classes} outputs")
    h, w = split.images.shape[1:3]
    if image_size is not None and (h, w) != tuple(image_size):
        raise UserError(f"{what} takes images of 3x{image_size[0]}x{image_size[1]} (C x H x W), the "
                        f"data holds 3x{h}x{w}")


def image_size_of(data: str | os.PathLike | None) -> tuple[int, int] | None:
    """(H, W) of the data's images without decoding the split (one image's header for an
    ImageFolder; 32x32 for CIFAR-10 batch files), or None when the data cannot be found (the
    loading reports that). ``load_split`` checks that every image has this one size."""
    try:
        layout, folder = detect_layout(resolve_data_root(data))
    except UserError:
        return None
    if layout != "imagefolder":
        return (32, 32)
    from PIL import Image

    for split in SPLITS:
        try:
            first = folder / _scan_split(folder, split)[0][0]
        except UserError:
            continue
        try:
            with Image.open(first) as im:
                return (im.height, im.width)
        except OSError as e:
            raise UserError(f"cannot decode image {first}: {e}") from None
    return None


def check_class_folders(data: str | os.PathLike | None, num_classes: int, what: str = "the model") -> None:
    """The class check of ``check_for_model`` from the folder names alone (nothing decoded), for
    commands that must refuse bad data before they create any output (``rram train``). Data that
    cannot be found is left to the loading, which reports it."""
    try:
        layout, folder = detect_layout(resolve_data_root(data))
    except UserError:
        return
    if layout != "imagefolder":
        return  # batch files: their labels are checked when they are read
    for split in SPLITS:
        _scan_split(folder, split)  # an empty split: the error loading gives
    _check_same_classes(folder)
    classes = class_folders(folder / "train")
    if len(classes) != num_classes:
        raise UserError(f"the data has {len(classes)} class folders ({', '.join(classes)}), "
                        f"{what} has {num_classes} outputs")


def _atomic_savez(path: Path, **arrays) -> None:
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))


# --------------------------------------------------------------------------- batching on tensors
# torch is imported inside these functions: loading a split (rram validate, merge, plot) needs
# numpy only, and importing torch costs about 3 s of every such command's whole-process time.

IMAGENET_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_NORM = Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def to_float_nchw(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, norm: Normalization) -> torch.Tensor:
    import torch
    mean = torch.tensor(norm.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip on a whole NCHW batch (no per-image loop)."""
    import torch
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # (n, w)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def iterate_batches(split: Split, batch_size: int, norm: Normalization, *, shuffle: bool = False,
                    augment_batches: bool = False, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu", indices: np.ndarray | None = None):
    """Yield (normalised float batch, labels) from a uint8 split; all work on whole batches."""
    import torch
    images = torch.from_numpy(split.images)
    labels = torch.from_numpy(split.labels)
    if indices is None:
        order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    else:
        order = torch.as_tensor(indices)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = to_float_nchw(images[idx]).to(device, non_blocking=True)
        if augment_batches:
            x = augment(x, generator)
        yield normalize(x, norm), labels[idx].to(device, non_blocking=True)

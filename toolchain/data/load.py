"""Loading a split (from the cache, or decoded from either layout), and the checks that need the
folders only: the image size and the class folders, nothing decoded."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .cache import cache_name, default_cache_dir, read_cached, write_cache
from .cifar_batches import batch_files, read_cifar_batches
from .imagefolder import check_same_classes, class_folders, decode_imagefolder, scan_split
from .layout import SPLITS, detect_layout, resolve_data_root
from .split import Split, held_out


def _sources(layout: str, folder: Path, split: str) -> list[tuple[str, os.stat_result]]:
    """(relative path, stat) of each source file, in loading order."""
    if layout == "imagefolder":
        return scan_split(folder, split)
    return [(str(f.relative_to(folder)), f.stat()) for f in batch_files(folder, split)]


def load_split(data: str | os.PathLike | None, split: str, *, cache_dir: str | os.PathLike | None = None,
               use_cache: bool = True, download: bool = False, progress: bool = True) -> Split:
    """Load one split ("train" or "test") as uint8 NHWC images and int64 labels; "val": the
    validation images held out of the training split (``split.validation_indices``)."""
    if split == "val":
        return held_out(load_split(data, "train", cache_dir=cache_dir, use_cache=use_cache, download=download,
                                   progress=progress))
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {(*SPLITS, 'val')}")
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
        check_same_classes(folder)
        classes = class_folders(folder / split)

    cache_file = None
    if use_cache:
        cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        prefix, name = cache_name(layout, folder, split, sources)
        cache_file = cache_root / name
        cached = read_cached(cache_file, classes)
        if cached is not None:
            return cached

    files = [folder / rel for rel, _ in sources]
    if layout == "imagefolder":
        result = decode_imagefolder(folder, split, files, progress)
    else:
        result = read_cifar_batches(folder, split, files)
    if len(result) == 0:
        raise UserError(f"data split {split!r} in {root} is empty")
    if cache_file is not None:
        write_cache(cache_file, prefix, result)
    return result


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
            first = folder / scan_split(folder, split)[0][0]
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
        scan_split(folder, split)  # an empty split: the error loading gives
    check_same_classes(folder)
    classes = class_folders(folder / "train")
    if len(classes) != num_classes:
        raise UserError(f"the data has {len(classes)} class folders ({', '.join(classes)}), "
                        f"{what} has {num_classes} outputs")

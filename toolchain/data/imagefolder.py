"""The ImageFolder layout: ``ROOT/{train,test}/<class>/*.jpg|png``; class index = sorted folder
name, as ``torchvision.datasets.ImageFolder`` does. Hidden entries (".ipynb_checkpoints") are
ignored, and ``train`` and ``test`` must hold the same class folders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .layout import IMAGE_SUFFIXES
from .split import Split


def scan_split(folder: Path, split: str) -> list[tuple[str, os.stat_result]]:
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


def class_folders(split_dir: Path) -> list[str]:
    """Sorted class folder names; hidden ones (".ipynb_checkpoints", ".git") are not classes."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_same_classes(folder: Path) -> None:
    """ImageFolder labels are folder indices: train and test must hold the same folders, or one
    split's labels mean other classes than the other's."""
    train, test = class_folders(folder / "train"), class_folders(folder / "test")
    if train != test:
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise UserError(f"train and test class folders in {folder} differ: only in train: "
                        f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'}")


def decode_imagefolder(folder: Path, split: str, files: list[Path], progress: bool) -> Split:
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

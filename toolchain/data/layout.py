"""Where the data is and which of the two on-disk layouts it uses (nothing is decoded here)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

SPLITS = ("train", "test")  # on disk
EVAL_SPLITS = ("test", "val", "train")  # what --split chooses: val is held out of train (split.py)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
CIFAR_BATCH_DIR = "cifar-10-batches-py"
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SIZE = (32, 32)  # (H, W) of CIFAR-10: the built-in models' size, and that of a checkpoint that
#                       records none (a model trained here records its data's: ModelSpec.image_size)


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

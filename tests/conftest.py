import os
import pickle
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RRAM_SHARED", ROOT.parent / "shared"))
SHARED_DATA = Path(os.environ.get("RRAM_DATA", SHARED / "data" / "cifar10-jpeg"))
SHARED_RESNET20 = SHARED / "models" / "resnet20-12fca82f.th"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "test").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def shared_resnet20() -> Path:
    if not SHARED_RESNET20.is_file():
        pytest.skip(f"pretrained ResNet20 not found at {SHARED_RESNET20}")
    return SHARED_RESNET20


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def write_cifar_batches(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """A tiny folder in torchvision's CIFAR-10 python format (cifar-10-batches-py)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train // 5
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"]}, fh)
    return root


def write_imagefolder(root: Path, per_class: int = 2, classes=("cat", "dog", "ship"), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root

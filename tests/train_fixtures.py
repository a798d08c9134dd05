"""Tiny synthetic CIFAR-10 (torchvision batch layout) for the training/recalibration/export tests:
each class has its own mean colour, so a few steps of training do learn something."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_DATA = SHARED / "data" / "cifar10-jpeg"
REAL_WEIGHTS = SHARED / "models"


def make_cifar(root: Path, per_batch: int = 64, test: int = 128, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(10, 3))
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n):
        labels = rng.integers(0, 10, size=n)
        img = colours[labels][:, :, None, None] + rng.normal(0, 40, size=(n, 3, 32, 32))
        return {"data": np.clip(img, 0, 255).astype(np.uint8).reshape(n, -1),
                "labels": labels.tolist()}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch(per_batch), fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch(test), fh)
    return root


def one_thread():
    """Generator fixture body: tiny models run fastest (and never oversubscribe a busy machine)
    on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

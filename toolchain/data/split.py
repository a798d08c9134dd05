"""A decoded split (uint8 NHWC images, int64 labels, class names), the one home of image subsets
of a split, and the check of a split against the model it is fed to.

Two subsets, two purposes:
- ``subset_indices`` / ``Split.subset``: ``n`` images spread evenly over the split, no seed: the
  images ``--images N`` evaluates (``rram eval``, ``validate``, ``sensitivity``, ``calibrate``).
- ``random_subset``: ``n`` images drawn without replacement from a seed: the training images of
  ``rram train --train-images N`` / ``--eval-images N`` and ``rram recalibrate --train-images N``.
(``runtime.subsets.chip_subset``, the per-chip subsets of ``--images auto``, is another concept: a
draw seeded like the chips, in the runtime.)

And the validation split (issue 36; docs/RESULTS.md), defined here once, numpy only (``rram validate``
never imports torch): ``validation_indices(total)``, one image in ten of the training split (5,000 of
CIFAR-10's 50,000), the first ``total // 10`` of a permutation of ``range(total)`` drawn by numpy's
PCG64 from ``SeedSequence(VAL_SEED)``, sorted; ``training_indices(total)`` the rest. ``--split val``
evaluates the held-out images; ``rram train --hold-out-val`` trains on the rest, and every
calibration draw (``--calibrate N``) comes from the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .layout import IMAGE_SIZE


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
        return self.take(subset_indices(len(self), n))

    def take(self, idx: np.ndarray) -> Split:
        """The images at ``idx``, in that order."""
        return Split(self.images[idx], self.labels[idx], self.classes)


VAL_SEED = 36  # the validation split's seed (issue 36): never change it, every choice made on val depends on it
VAL_FRACTION = 10  # one image in ten of the training split is held out


def validation_indices(total: int) -> np.ndarray:
    """The held-out images of a training split of ``total`` images (sorted): ``total // 10`` of them,
    the first of a permutation drawn from ``VAL_SEED`` alone. Stable: tests/test_data.py pins the
    digest of CIFAR-10's 5,000."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(VAL_SEED)))
    return np.sort(rng.permutation(int(total))[:int(total) // VAL_FRACTION])


def training_indices(total: int) -> np.ndarray:
    """The training split less its validation images (sorted): what ``--hold-out-val`` trains on and
    what ``--calibrate N`` draws from."""
    keep = np.ones(int(total), dtype=bool)
    keep[validation_indices(total)] = False
    return np.flatnonzero(keep)


def held_out(train: Split) -> Split:
    """The validation split (``--split val``) of a loaded training split."""
    return train.take(validation_indices(len(train)))


def without_validation(train: Split) -> Split:
    """The training split less its validation images."""
    return train.take(training_indices(len(train)))


def subset_indices(total: int, n: int | None) -> np.ndarray:
    """``n`` images spread evenly over the split (test folders are sorted by class, so the first
    n would cover only a few classes)."""
    if n is None or n >= total:
        return np.arange(total)
    return (np.arange(n, dtype=np.int64) * total) // n


def random_subset(split: Split, n: int | None, seed: int) -> Split:
    """n images drawn without replacement (ImageFolder order is sorted by class, so the first n
    would be a single class)."""
    if n is None or n >= len(split):
        return split
    import torch  # here: loading a split needs numpy only (rram validate never imports torch)

    from ..dropconnect import derive_seed

    g = torch.Generator().manual_seed(derive_seed(seed, "subset", n))
    idx = np.sort(torch.randperm(len(split), generator=g)[:n].numpy())
    return Split(split.images[idx], split.labels[idx], split.classes)


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

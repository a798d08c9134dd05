"""A decoded split (uint8 NHWC images, int64 labels, class names), the one home of image subsets
of a split, and the check of a split against the model it is fed to.

Two subsets, two purposes:
- ``subset_indices`` / ``Split.subset``: ``n`` images spread evenly over the split, no seed: the
  images ``--images N`` evaluates (``rram eval``, ``validate``, ``sensitivity``, ``calibrate``).
- ``random_subset``: ``n`` images drawn without replacement from a seed: the training images of
  ``rram train --train-images N`` / ``--eval-images N`` and ``rram recalibrate --train-images N``.
(``runtime.subsets.chip_subset``, the per-chip subsets of ``--images auto``, is another concept: a
draw seeded like the chips, in the runtime.)
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
        idx = subset_indices(len(self), n)
        return Split(self.images[idx], self.labels[idx], self.classes)


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

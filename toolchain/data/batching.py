"""Batches on tensors: uint8 NHWC -> normalised float NCHW, augmentation on whole batches.

torch is imported inside these functions: loading a split (rram validate, merge, plot) needs
numpy only, and importing torch costs about 3 s of every such command's whole-process time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.metadata import Normalization

from .split import Split

if TYPE_CHECKING:  # annotations only: torch is imported where batches are made (below)
    import torch

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

"""Top-1 accuracy of a PyTorch model on a uint8 split, in whole batches."""
from __future__ import annotations

import torch
import torch.nn as nn
from tqdm import tqdm

from .data import Normalization, Split, iterate_batches


@torch.no_grad()
def predict(model: nn.Module, split: Split, norm: Normalization, *, batch_size: int = 500,
            device: str | torch.device = "cpu", progress: bool = True, desc: str = "eval") -> torch.Tensor:
    model.eval()
    preds = []
    batches = iterate_batches(split, batch_size, norm, device=device)
    total = (len(split) + batch_size - 1) // batch_size
    for x, _ in tqdm(batches, total=total, desc=desc, unit="batch", leave=False,
                     disable=None if progress else True):
        preds.append(model(x).argmax(1).cpu())
    return torch.cat(preds)


def accuracy(model: nn.Module, split: Split, norm: Normalization, **kw) -> float:
    preds = predict(model, split, norm, **kw)
    return float((preds == torch.from_numpy(split.labels)).double().mean())

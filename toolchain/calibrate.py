"""Per-chip BN calibration in PyTorch: the reference that the fault campaign is tested against.

On a faulty chip (SA1 weights zeroed), each BatchNorm's statistics are re-estimated from the
calibration images: one train-mode forward of all N images as one batch, with ``momentum=None``
(the cumulative average of one batch is that batch's statistics). In that single pass each BN
normalises with the statistics of its own input, which already went through the earlier,
re-estimated BNs: the same as calibrating layer by layer in network order. The weights are not
touched; in the deployed model only the per-channel scale and offset after each column change.
PyTorch keeps the unbiased variance (factor n/(n-1), n = N x H x W >= 16k for CIFAR convs)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .errors import UserError
from .recalibrate import apply_bn_stats, bn_modules, bn_stats_of


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Re-estimate every BN's running statistics on ``x`` (normalised images, one batch)."""
    bns = bn_modules(model)
    if not bns:
        raise UserError("--calibrate re-estimates batch-norm statistics, and this model has no BatchNorm layer")
    if len(x) < 2:
        raise UserError("--calibrate needs at least 2 images (batch statistics of one image are degenerate)")
    for _, m in bns:
        m.momentum = None
        m.reset_running_stats()
    model.train()
    model(x)
    model.eval()


@contextlib.contextmanager
def restored_bn(model: nn.Module):
    """Put back the BN statistics and momenta as they were on entry (after a chip is calibrated)."""
    stats = {k: v.clone() for k, v in bn_stats_of(model).items()}
    momenta = {name: m.momentum for name, m in bn_modules(model)}
    try:
        yield model
    finally:
        apply_bn_stats(model, stats)
        for name, m in bn_modules(model):
            m.momentum = momenta[name]
        model.eval()

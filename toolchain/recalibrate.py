"""BN re-alignment ("UpdateVar"): re-estimate BatchNorm statistics for an expected chip fault rate p'.

Weights frozen, drop-connect at p' (a fresh mask per batch, unscaled as in training), a train-mode
forward over the training images (no augmentation: the statistics must match test-time inputs),
and every BN's running mean/variance re-estimated as a cumulative average (``momentum=None``),
starting from reset statistics. Each rate gets its own statistics, stored in the checkpoint's
``bn_stats[rate_key(p')]`` as {bn buffer name: tensor}.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from runtime.progress import Progress

from .data import Normalization, Split, iterate_batches
from .dropconnect import add_dropconnect, check_rate, derive_seed, remove_dropconnect

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BN_BUFFERS = ("running_mean", "running_var")


def bn_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BN_TYPES)]


def bn_stats_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """{"<bn>.running_mean": tensor, "<bn>.running_var": tensor} for every BN, on the CPU."""
    out = {}
    for name, m in bn_modules(model):
        for b in BN_BUFFERS:
            out[f"{name}.{b}"] = getattr(m, b).detach().cpu().clone()
    return out


def apply_bn_stats(model: nn.Module, stats: dict[str, torch.Tensor]) -> None:
    """Load one rate's statistics into the model's BN buffers (every BN must be covered)."""
    for name, m in bn_modules(model):
        for b in BN_BUFFERS:
            key = f"{name}.{b}"
            if key not in stats:
                raise KeyError(key)
            getattr(m, b).copy_(stats[key].to(getattr(m, b).device))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: Split, norm: Normalization, rate: float, *,
                   batch_size: int = 256, batches: int | None = None, seed: int = 0,
                   device: str | torch.device = "cpu", progress: bool = True) -> dict[str, torch.Tensor]:
    """Return BN statistics for fault rate ``rate``; the model's weights and buffers are left as
    they were (it works on the model in place and restores it)."""
    check_rate(rate, "recalibration rate")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    saved_momentum = {}
    mask_gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "recal-mask", repr(rate)))
    order_gen = torch.Generator().manual_seed(derive_seed(seed, "recal-order"))
    add_dropconnect(model, rate, mask_gen)
    try:
        for name, m in bn_modules(model):
            saved_momentum[name] = m.momentum
            m.momentum = None  # cumulative average over all batches seen
            m.reset_running_stats()
        model.train()
        total = (len(split) + batch_size - 1) // batch_size
        if batches is not None:
            total = min(total, batches)
        it = iterate_batches(split, batch_size, norm, shuffle=True, generator=order_gen, device=device)
        # a bar on a terminal, a line every RRAM_PROGRESS_SECONDS in a log (runtime.progress)
        bar = Progress(total, progress, desc=f"recalibrate p'={rate:g}", unit="batch", leave=False)
        for i, (x, _) in enumerate(it):
            if i >= total:
                break
            if x.shape[0] >= 2:  # a train-mode BN cannot use a single image
                model(x)
            bar.update()
        bar.close()
        stats = bn_stats_of(model)
    finally:
        remove_dropconnect(model)
        for name, m in bn_modules(model):
            m.momentum = saved_momentum.get(name, m.momentum)
        model.load_state_dict(before)
        model.train(was_training)
    return stats

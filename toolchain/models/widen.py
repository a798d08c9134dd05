"""Function-preserving widening of a trained model (customisation 3 of the method, without
training the wide model from scratch).

Net2WiderNet (Chen, Goodfellow and Shlens, "Net2Net", ICLR 2016), with a whole-number factor k:
every channel of the narrow model becomes k copies in the wide one (channel c -> c // k, the
layout ``repeat_interleave`` gives). A layer's outgoing weights are split between the copies
(divided by k), so each next layer sums k copies of half (1/k) the old contribution: the wide model
computes the same function as the narrow one before training. Batch-norm parameters and running
statistics are copied per channel; depthwise convolutions need no split (each copy reads its own
input copy). Option-A ResNet shortcuts (zero channels padded on both sides) keep the layout,
because the wide padding is k times the narrow one.

Why this helps against stuck cells: drop-connect gives each copy its own Bernoulli mask, so the
copies stop being identical after the first step, and the next layer averages k independently
dropped paths: the redundancy that widening is meant to buy, from a trained starting point (a few
epochs of fine-tuning on 2 CPU cores instead of 40 GPU epochs from scratch).

The result is checked numerically (eval mode, random input, ``RTOL``); an architecture whose
channel layout this does not preserve fails loudly instead of handing back a different model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

RTOL = 1e-4  # max |wide - narrow| / max |narrow| on the check input (float32 sums in another order)


class WidenError(ValueError):
    """The narrow model cannot be widened into the wide one, function-preserving."""


def _factor(wide: int, narrow: int, what: str) -> int:
    if wide % narrow:
        raise WidenError(f"{what}: {wide} channels is not a whole multiple of {narrow}")
    return wide // narrow


def _widened(t: torch.Tensor, shape: torch.Size, what: str, fan_in_dim: int | None) -> torch.Tensor:
    """``t`` with every dimension repeated up to ``shape``; the fan-in dimension's copies split."""
    if t.dim() != len(shape):
        raise WidenError(f"{what}: {t.dim()} dimensions, the wide model's has {len(shape)}")
    for dim, (w, n) in enumerate(zip(shape, t.shape)):
        k = _factor(w, n, f"{what} dimension {dim}")
        if k > 1:
            t = t.repeat_interleave(k, dim=dim)
            if dim == fan_in_dim:
                t = t / k
    return t


def widen_into(narrow: nn.Module, wide: nn.Module, *, image_size: tuple[int, int] = (32, 32),
               seed: int = 0) -> nn.Module:
    """Copy ``narrow``'s trained state into ``wide`` (same architecture, channels k times as many,
    k a whole number per layer) so that both compute the same function; returns ``wide``.

    Raises :class:`WidenError` naming the layer when the two do not match or the result is not
    the same function (a layout this rule does not cover, e.g. a flatten over a spatial map).
    """
    narrow_modules = dict(narrow.named_modules())
    state = {}
    for name, wm in wide.named_modules():
        own = dict(wm.named_parameters(recurse=False)) | dict(wm.named_buffers(recurse=False))
        if not own:
            continue
        nm = narrow_modules.get(name)
        if nm is None or type(nm) is not type(wm):
            raise WidenError(f"layer {name!r}: the narrow model has {type(nm).__name__ if nm else 'no such layer'}, "
                             f"the wide one {type(wm).__name__}")
        if isinstance(wm, (nn.Conv2d, nn.Linear)):
            fan_in = 1  # weight [out, in / groups, ...]: split the copies of each input
        elif isinstance(wm, nn.modules.batchnorm._BatchNorm):
            fan_in = None  # per-channel statistics and affine: copied
        else:
            raise WidenError(f"layer {name!r}: {type(wm).__name__} holds weights this widening does not handle")
        narrow_state = dict(nm.named_parameters(recurse=False)) | dict(nm.named_buffers(recurse=False))
        for key, t in own.items():
            if key not in narrow_state:
                raise WidenError(f"layer {name!r}: the narrow model has no {key!r}")
            src = narrow_state[key].detach()
            full = f"{name}.{key}" if name else key
            state[full] = src.clone() if src.dim() == 0 else _widened(src, t.shape, f"layer {name!r} {key}",
                                                                      fan_in if key == "weight" else None)
    wide.load_state_dict(state, strict=True)
    _check_same_function(narrow, wide, image_size, seed)
    return wide


def _check_same_function(narrow: nn.Module, wide: nn.Module, image_size: tuple[int, int], seed: int) -> None:
    modes = narrow.training, wide.training
    narrow.eval(), wide.eval()
    try:
        p = next(narrow.parameters())
        channels = next(m.in_channels for m in narrow.modules() if isinstance(m, nn.Conv2d))
        x = torch.randn(4, channels, *image_size, generator=torch.Generator().manual_seed(seed)).to(p.device, p.dtype)
        with torch.no_grad():
            a, b = narrow(x), wide(x)
    finally:
        narrow.train(modes[0]), wide.train(modes[1])
    scale = a.abs().max().clamp_min(1e-12)
    err = float((a - b).abs().max() / scale)
    if a.shape != b.shape or not err <= RTOL:
        raise WidenError(f"the widened model does not compute the narrow one's function "
                         f"(max relative difference {err:.2e} > {RTOL:g}): its channel layout is not "
                         f"one this widening preserves")

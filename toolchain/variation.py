"""The PyTorch reference of programming variation and read noise (``rram eval --sa1 P --variation
SIGMA --read-noise SIGMA_R``), written
from the model's description in docs/runtime.md ("Device non-idealities"), not from the runtime's
code: what the runtime's ``paper`` preset does to a float weight, without its 7-bit rounding.

Each Conv2d/Linear weight column (one output channel) is a differential pair of conductance planes
with the column's largest |w| at the top of the range: a weight w becomes g+ = max(w, 0) / m and
g- = max(-w, 0) / m (m = max |w| of its output channel; 0 = G_min, 1 = G_max). Every cell of
both planes is, independently, stuck at G_min (SA1) with probability P, else programmed with an
error (``additive``: g + SIGMA Z; ``lognormal``: G exp(SIGMA Z); ``wan2022``: the measured sd of
Wan et al., Nature 2022, times SIGMA), clipped to [G_min, G_max]; the weight the chip computes
with is (g+ - g-) m. Conductances in siemens where the model needs them (lognormal, wan2022): the
``paper`` preset's G_min = 1 uS, G_max = 100 uS. Read noise: every forward pass (one batch of
images) reads each cell of both planes with a fresh error SIGMA_R Z (fraction of the range), not
clipped, drawn from ``derive_seed(seed, "read", r)`` batch after batch.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .dropconnect import derive_seed, stored_weight, weight_modules

G_MIN, G_MAX = 1e-6, 1e-4  # the `paper` preset's range (runtime/crossbar.py)
# Wan et al. 2022 (aihwkit ReRamWan2022NoiseModel, t = 1 s): sd in uS at G_max = 40 uS, by powers of G/G_max
WAN2022_US = (0.348, 16.030, -43.853, 45.393, -16.815)


def _program(g: torch.Tensor, sigma: float, model: str, gen: torch.Generator) -> torch.Tensor:
    """Normalised targets g in [0, 1] -> programmed values in [0, 1]."""
    z = torch.randn(g.shape, generator=gen, dtype=g.dtype, device=g.device)  # the reference: float64
    if model == "additive":
        return (g + sigma * z).clamp(0.0, 1.0)
    big = G_MIN + g * (G_MAX - G_MIN)
    if model == "lognormal":
        big = big * torch.exp(sigma * z)
    else:
        x = big / G_MAX
        sd = sum(c * x ** i for i, c in enumerate(WAN2022_US)).clamp(min=0.0) / 40.0 * G_MAX
        big = big + sigma * sd * z
    return ((big.clamp(G_MIN, G_MAX) - G_MIN) / (G_MAX - G_MIN))


class VariedReferenceChips:
    """``sample(run)``: {module name: the weight a chip computes with}, run r drawn from
    ``derive_seed(seed, "variation", r)`` alone."""

    def __init__(self, model: nn.Module, p: float, sigma: float, kind: str, seed: int):
        self.model, self.p, self.sigma, self.kind, self.seed = model, float(p), float(sigma), kind, int(seed)
        self.tops = column_tops(model)  # of the clean weights: the mapping's column scales

    def sample(self, run: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "variation", run))
        out = {}
        for name, m in weight_modules(self.model):
            w = stored_weight(m).detach().to(torch.float64).cpu()
            top = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True)
            top = torch.where(top > 0, top, torch.ones_like(top))
            planes = []
            for g in (w.clamp(min=0) / top, (-w).clamp(min=0) / top):
                stuck = torch.rand(g.shape, generator=gen, dtype=torch.float64) < self.p
                planes.append(torch.where(stuck, torch.zeros_like(g), _program(g, self.sigma, self.kind, gen)))
            out[name] = ((planes[0] - planes[1]) * top).to(stored_weight(m).dtype)
        return out


def programmed_weight(w: torch.Tensor, sigma: float, kind: str, gen: torch.Generator) -> torch.Tensor:
    """The weight a chip computes with once ``w`` (a Conv2d/Linear weight) is programmed with
    variation ``sigma`` of model ``kind``: each output channel a differential pair scaled to its
    largest |w|, both planes programmed with an error and clipped (as ``VariedReferenceChips``,
    without stuck cells); drawn on ``w``'s device and dtype (``rram train --variation``)."""
    w = w.detach()
    top = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True)
    top = torch.where(top > 0, top, torch.ones_like(top))
    planes = [_program(g, sigma, kind, gen) for g in (w.clamp(min=0) / top, (-w).clamp(min=0) / top)]
    return (planes[0] - planes[1]) * top


class WeightNoise:
    """Training for the chip (``rram train --variation SIGMA --programming-model M``): called with a
    weight, returns the error the chip's programming would add to it (``programmed_weight(w) - w``),
    a fresh draw from ``generator`` at each call (the training loop reseeds it every step). No
    gradient flows through the error: the weight learns as if it were exact (straight-through), as
    aihwkit's hardware-aware training adds its weight noise."""

    def __init__(self, sigma: float, kind: str, generator: torch.Generator):
        self.sigma, self.kind, self.generator = float(sigma), kind, generator

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return programmed_weight(w, self.sigma, self.kind, self.generator) - w.detach()


def varied_chip_weights(model: nn.Module, masks: dict[str, torch.Tensor], sigma: float, kind: str,
                        gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One chip of ``rram train --variation``'s per-epoch test: every Conv2d/Linear weight as
    programmed with the variation (``programmed_weight``, drawn on the CPU from ``gen``), the
    weights ``masks`` marks stuck (SA1) at 0. For ``programmed``."""
    out = {}
    for name, m in weight_modules(model):
        w = programmed_weight(stored_weight(m).detach().cpu(), sigma, kind, gen)
        out[name] = w.masked_fill(masks[name].cpu(), 0.0) if name in masks else w
    return out


def column_tops(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per weight module, each output channel's largest |w|: the conductance range's top (G_max)."""
    return {name: stored_weight(m).detach().abs().amax(dim=tuple(range(1, stored_weight(m).ndim)), keepdim=True)
            for name, m in weight_modules(model)}


@contextlib.contextmanager
def read_noise(model: nn.Module, tops: dict[str, torch.Tensor], sigma: float, gen: torch.Generator):
    """Every forward pass (one batch) reads each cell of both planes with a fresh error of sd
    ``sigma`` of the range: the weight the module computes with is its current (programmed) weight
    + sigma * top * (Z+ - Z-), drawn from ``gen`` at each call. The weights are restored on exit."""
    mods = dict(weight_modules(model))
    base = {name: stored_weight(m).detach().clone() for name, m in mods.items()}

    def hook(name):
        def pre(module, args):
            z = torch.randn((2,) + tuple(base[name].shape), generator=gen, dtype=torch.float64)
            noise = (sigma * tops[name].to(torch.float64) * (z[0] - z[1])).to(base[name].dtype)
            with torch.no_grad():
                stored_weight(module).copy_(base[name] + noise.to(base[name].device))
        return pre

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in mods.items()]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, m in mods.items():
                stored_weight(m).copy_(base[name])


@contextlib.contextmanager
def programmed(model: nn.Module, weights: dict[str, torch.Tensor]):
    """The model computing with these weights; the stored ones restored on exit."""
    mods = dict(weight_modules(model))
    saved = {}
    try:
        with torch.no_grad():
            for name, w in weights.items():
                target = stored_weight(mods[name])
                saved[name] = target.detach().clone()
                target.copy_(w.to(target.device))
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                stored_weight(mods[name]).copy_(original)


@contextlib.contextmanager
def chip_context(chips: VariedReferenceChips, run: int, read_sigma: float | None):
    """Chip ``run`` of ``chips`` programmed into the model, read with read noise when given."""
    with programmed(chips.model, chips.sample(run)):
        if not read_sigma:
            yield chips.model
            return
        gen = torch.Generator().manual_seed(derive_seed(chips.seed, "read", run))
        with read_noise(chips.model, chips.tops, read_sigma, gen):
            yield chips.model

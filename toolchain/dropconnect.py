"""Drop-connect on Conv2d/Linear weights (Wan et al., ICML 2013) and the reference SA1 fault model.

Drop-connect is a ``torch.nn.utils.parametrize`` parametrization on each ``weight``: in training
mode every forward pass draws a fresh Bernoulli mask from a seeded generator and zeroes each weight
with probability p; in eval mode the weight passes through unchanged.

No rescaling: surviving weights are NOT multiplied by 1/(1-p). An SA1 cell (stuck at G_min) reads as
0 and does not scale its neighbours, so an unscaled mask is the faithful model of the chip. The
scale this leaves on a layer's output (about 1-p on average) is absorbed by the BatchNorm that
follows: the BN running statistics collected in training match a chip with fault rate p, and BN
re-alignment (``toolchain.recalibrate``) re-estimates them for any other rate p'. Evaluation and
recalibration use the same unscaled convention (faulty weights are exactly zero).

Which weights count: every Conv2d and Linear ``weight`` (not biases, not BN parameters), the same
set the reference SA1 evaluation (:func:`sa1_faults`) and the ONNX runtime fault injection hit.
"""
from __future__ import annotations

import contextlib
import hashlib

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .errors import UserError

PARAM_SUFFIX = ".parametrizations.weight.original"


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed for one purpose (e.g. ("mask", rank, epoch)), stable across runs and machines."""
    text = "|".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def check_rate(p: float, what: str = "drop rate", *, inclusive: bool = False) -> float:
    """Training and recalibration rates live in [0, 1) (p = 1 would drop every weight); a chip's
    SA1 fault rate may be 1 (``inclusive``), as in the runtime."""
    p = float(p)
    if not (0.0 <= p < 1.0 or (inclusive and p == 1.0)):
        raise UserError(f"{what} must be in [0, {'1]' if inclusive else '1)'}, got {p:g}")
    return p


def rate_key(p: float) -> str:
    """The string a rate is stored under: 0 -> "0.0", 0.1 -> "0.1" (Python's shortest repr)."""
    return repr(float(p))


def weight_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear, in registration order (first = input layer, last = classifier)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


class DropConnect(nn.Module):
    """weight -> weight * Bernoulli(1-p) mask in training mode; identity in eval mode. With
    ``noise`` (a callable: weight -> the error to add, e.g. ``toolchain.variation.WeightNoise``,
    ``rram train --variation``), every kept weight also gets a fresh error each forward pass (a
    dropped weight stays 0: a stuck cell keeps its level); the error carries no gradient."""

    def __init__(self, p: float, generator: torch.Generator, noise=None):
        super().__init__()
        self.p = check_rate(p)
        self.generator = generator
        self.noise = noise

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.p == 0.0 and self.noise is None):
            return w
        out = w
        if self.p > 0.0:
            # One uniform draw and a compare is the cheapest mask; masked_fill's gradient is zero
            # exactly at the dropped weights, so only kept weights learn from this step.
            drop = torch.rand(w.shape, generator=self.generator, device=w.device, dtype=w.dtype) < self.p
            out = w.masked_fill(drop, 0.0)
        if self.noise is not None:
            error = self.noise(w)
            out = out + (error.masked_fill(drop, 0.0) if self.p > 0.0 else error)
        return out


def add_dropconnect(model: nn.Module, p: float, generator: torch.Generator, *,
                    include_first: bool = True, include_last: bool = True, noise=None) -> list[DropConnect]:
    """Put drop-connect (and ``noise``: ``DropConnect``) on the weights of every Conv2d/Linear;
    returns the parametrization modules."""
    check_rate(p)
    mods = weight_modules(model)
    chosen = [m for i, (_, m) in enumerate(mods)
              if (include_first or i != 0) and (include_last or i != len(mods) - 1)]
    added = []
    for m in chosen:
        if parametrize.is_parametrized(m, "weight"):
            raise ValueError("weight already parametrized")
        dc = DropConnect(p, generator, noise)
        parametrize.register_parametrization(m, "weight", dc)
        added.append(dc)
    return added


def remove_dropconnect(model: nn.Module) -> nn.Module:
    """Back to plain weights (the stored, unmasked values)."""
    for _, m in weight_modules(model):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    return model


def plain_state_dict(model: nn.Module) -> dict:
    """state_dict with plain key names (``conv1.weight``), masks not applied, on the CPU."""
    return {k.replace(PARAM_SUFFIX, ".weight"): v.detach().cpu().clone()
            for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- reference SA1 faults

def sample_sa1_masks(model: nn.Module, p: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """{module name: bool mask of faulty weights}, each weight faulty independently with prob. p."""
    check_rate(p, "SA1 rate", inclusive=True)
    return {n: torch.rand(m.weight.shape, generator=generator) < p for n, m in weight_modules(model)}


class ReferenceChips:
    """The PyTorch reference's chips (``rram eval --sa1``): the same interface as the runtime's
    chip sources (``runtime.chips.ChipSource.sample(run)``), a chip here being the weight masks of
    ``sample_sa1_masks`` (SA1 drops the weight). Run r is drawn from ``derive_seed(seed, "sa1", r)``
    alone, so every rate of one evaluation sees the same uniform draws (common random numbers)."""

    def __init__(self, model: nn.Module, p: float, seed: int):
        self.model, self.p, self.seed = model, check_rate(p, "SA1 rate", inclusive=True), int(seed)

    def sample(self, run: int) -> dict[str, torch.Tensor]:
        return sample_sa1_masks(self.model, self.p, torch.Generator().manual_seed(derive_seed(self.seed, "sa1", run)))


def stored_weight(m: nn.Module) -> torch.Tensor:
    """The weight tensor itself (under drop-connect: the unmasked original)."""
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


@contextlib.contextmanager
def sa1_faults(model: nn.Module, masks: dict[str, torch.Tensor]):
    """Zero the masked weights (SA1: the cell reads 0, no rescaling) and restore them on exit."""
    mods = dict(weight_modules(model))
    saved = {}
    try:
        with torch.no_grad():
            for name, mask in masks.items():
                w = stored_weight(mods[name])
                saved[name] = w.detach().clone()
                w.masked_fill_(mask.to(w.device), 0.0)
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                stored_weight(mods[name]).copy_(original)

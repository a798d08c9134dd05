"""The PyTorch reference of DAC and ADC resolution (``rram eval --dac-bits B --adc-bits B
[--adc-range R]``), written from the converters' description in docs/runtime.md ("Device
non-idealities"), not from the runtime's code (``runtime/converters.py``, its cross-check).

For every Conv2d/Linear with input X, weight W and bias b, on a ``paper`` chip (tiles of
``TILE_ROWS`` rows):

- **DAC** (``dac_bits``): X quantised before the crossbar, one range per layer: ``top`` = the
  largest |X| on the range images; unsigned (0 .. 2^B - 1 steps of top / (2^B - 1)) where X was
  never negative there, else signed (-(2^(B-1) - 1) .. 2^(B-1) - 1 steps of top / (2^(B-1) - 1)).
- **ADC** (``adc_bits``): the weight matrix's rows are (input channel, kernel row, kernel column)
  flattened (a Linear's: its input features), cut into row tiles of ``TILE_ROWS`` rows (a tile may
  cut a kernel). Tile t's partial sum P_t (X times W on the tile's rows only) is converted per
  output column (channel), signed, 2^(B-1) - 1 steps a side, round half to even, values beyond
  the range saturating; the converted partial sums are added, then b. Range per column:
  ``calibrated-per-column``: the largest |P_t| of that tile's column on the range images;
  ``full-scale``: the tile's rows x the layer input's range top x the column's largest |w|.

The ranges are measured once, on the ideal chip (the model's own weights: no faults, no
variation, no read noise) with unbounded converters, every layer at once. A chip's weights
(faults, variation, read noise) are whatever the module holds when it runs: the converters
compose with ``dropconnect.sa1_faults``, ``variation.chip_context`` and the placed chips.
Unlike the runtime, the weights are not rounded to the crossbar's 7-bit levels, and the model's
BN is not folded into the weights: a per-column gain (BN's scale) commutes with a per-column
symmetric quantiser whose range is measured with it, so the codes are the same.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.crossbar import preset

from .dropconnect import weight_modules
from .errors import UserError

TILE_ROWS = preset("paper").tile_rows  # the paper preset's tile height (128): the chip rram eval models


def levels_of(bits: int, signed: bool) -> int:
    """The largest code of a ``bits``-bit converter: 2^(B-1) - 1 a side signed, 2^B - 1 unsigned."""
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def codes(v: torch.Tensor, top: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """The converter's integer codes of ``v`` for a range ``top`` (broadcast against v): round(v /
    step) half to even, step = top / levels, clipped to [-levels, levels] (signed) or [0, levels]."""
    levels = levels_of(bits, signed)
    step = top.clamp(min=1e-30) / max(levels, 1)
    return torch.round(v / step).clamp(-levels if signed else 0, levels)


def quantize(v: torch.Tensor, top: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """``v`` through a ``bits``-bit converter of range ``top``: its code times the step."""
    levels = levels_of(bits, signed)
    return codes(v, top, bits, signed) * (top.clamp(min=1e-30) / max(levels, 1))


def row_tiles(rows: int, tile_rows: int) -> list[tuple[int, int]]:
    return [(r, min(r + tile_rows, rows)) for r in range(0, rows, tile_rows)]


def weight_rows(m: nn.Module) -> int:
    """Rows of the module's weight matrix: in_features, or (in channel, kernel row, kernel col)."""
    w = m.weight
    return int(w[0].numel())


def partial_sums(m: nn.Module, x: torch.Tensor, tiles: list[tuple[int, int]]) -> list[torch.Tensor]:
    """X times W on each tile's rows alone (no bias): one tensor per tile, the output's shape."""
    w = m.weight
    if isinstance(m, nn.Linear):
        return [F.linear(x[..., r0:r1], w[:, r0:r1]) for r0, r1 in tiles]
    per_channel = w[0, 0].numel()  # kh * kw rows per input channel
    out = []
    for r0, r1 in tiles:
        c0, c1 = r0 // per_channel, -(-r1 // per_channel)  # the input channels the tile touches
        mask = torch.zeros(w[0].numel(), dtype=w.dtype, device=w.device)
        mask[r0:r1] = 1
        wt = (w * mask.view(1, *w.shape[1:]))[:, c0:c1]
        out.append(F.conv2d(x[:, c0:c1], wt, None, m.stride, m.padding, m.dilation, 1))
    return out


def _column_max(m: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """max |v| per output column (a conv's dim 1, a Linear's last) over every other dimension."""
    col = 1 if isinstance(m, nn.Conv2d) else v.ndim - 1
    return v.abs().amax(dim=tuple(d for d in range(v.ndim) if d != col))


def _per_column(m: nn.Module, top: torch.Tensor) -> torch.Tensor:
    """A per-column vector shaped to broadcast against the module's output."""
    return top.view(1, -1, 1, 1) if isinstance(m, nn.Conv2d) else top


def _check_module(name: str, m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
        raise UserError(f"DAC/ADC resolution in the reference supports plain Conv2d layers (groups 1, zero "
                        f"padding); {name} is not one")


@dataclass
class LayerRanges:
    x_top: float = 0.0
    x_low: float = float("inf")
    tiles: list[tuple[int, int]] = field(default_factory=list)
    p_top: list[torch.Tensor] = field(default_factory=list)  # per tile: (C_out,) max |P_t|


class ConverterReference:
    """The converters of one model: ``measure(images)`` sets the ranges (ideal chip), then
    ``with ref.applied(): ...`` evaluates every Conv2d/Linear through them."""

    def __init__(self, model: nn.Module, dac_bits: int | None, adc_bits: int | None,
                 adc_range: str = "calibrated-per-column", tile_rows: int = TILE_ROWS):
        self.model, self.dac_bits, self.adc_bits, self.adc_range = model, dac_bits, adc_bits, adc_range
        self.tile_rows = tile_rows
        self.modules = weight_modules(model)
        for name, m in self.modules:
            _check_module(name, m)
        self.ranges: dict[str, LayerRanges] | None = None
        self.range_images = 0

    def _tiles(self, m: nn.Module) -> list[tuple[int, int]]:
        rows = weight_rows(m)
        return row_tiles(rows, self.tile_rows if self.adc_bits is not None else rows)

    @contextlib.contextmanager
    def _forwards(self, make):
        """Every weight module's forward replaced by ``make(name, module)``; restored on exit."""
        try:
            for name, m in self.modules:
                m.forward = make(name, m)
            yield self.model
        finally:
            for _, m in self.modules:
                m.__dict__.pop("forward", None)

    @torch.no_grad()
    def measure(self, images: torch.Tensor, batch_size: int = 100) -> None:
        """The ranges from normalised images (N, C, H, W) on the model as it is (the ideal chip)."""
        ranges = {name: LayerRanges(tiles=self._tiles(m)) for name, m in self.modules}

        def probe(name, m):
            r = ranges[name]

            def forward(x):
                r.x_top, r.x_low = max(r.x_top, float(x.abs().max())), min(r.x_low, float(x.min()))
                parts = partial_sums(m, x, r.tiles)
                tops = [_column_max(m, p) for p in parts]
                r.p_top = tops if not r.p_top else [torch.maximum(a, b) for a, b in zip(r.p_top, tops)]
                return _finish(m, parts)
            return forward

        self.model.eval()
        with self._forwards(probe):
            for start in range(0, len(images), batch_size):
                self.model(images[start:start + batch_size])
        if self.adc_range == "full-scale":
            for name, m in self.modules:
                r = ranges[name]
                col = m.weight.detach().abs().flatten(1).amax(dim=1)
                r.p_top = [(r1 - r0) * r.x_top * col for r0, r1 in r.tiles]
        self.ranges, self.range_images = ranges, len(images)

    @contextlib.contextmanager
    def applied(self):
        """The model computing through the converters (``measure`` first)."""
        if self.ranges is None:
            raise RuntimeError("ConverterReference.measure() sets the ranges first")

        def converted(name, m):
            r = self.ranges[name]

            def forward(x):
                if self.dac_bits is not None:
                    x = quantize(x, torch.tensor(r.x_top, dtype=x.dtype), self.dac_bits, signed=r.x_low < 0)
                parts = partial_sums(m, x, r.tiles)
                if self.adc_bits is not None:
                    parts = [quantize(p, _per_column(m, top.to(p.dtype)), self.adc_bits)
                             for p, top in zip(parts, r.p_top)]
                return _finish(m, parts)
            return forward

        with self._forwards(converted):
            yield self.model

    def describe(self) -> str:
        dac = "unbounded" if self.dac_bits is None else f"{self.dac_bits} bits"
        adc = "unbounded" if self.adc_bits is None else f"{self.adc_bits} bits {self.adc_range}"
        return f"DAC {dac}, ADC {adc}, row tiles of {self.tile_rows}"

    def to_dict(self) -> dict:
        return {"dac_bits": self.dac_bits, "adc_bits": self.adc_bits, "adc_range": self.adc_range,
                "tile_rows": self.tile_rows, "range_images": self.range_images}


def _finish(m: nn.Module, parts: list[torch.Tensor]) -> torch.Tensor:
    """The partial sums added digitally, then the bias."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    if m.bias is not None:
        out = out + _per_column(m, m.bias)
    return out

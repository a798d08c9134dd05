"""The PyTorch reference of fault-aware placement (``rram eval --sa1 P --place``): a placed chip
built from the PyTorch model, written apart from the runtime's placement (``runtime/placement.py``)
so that the two are a cross-check: a slip in either one's tile layout, fault draw or cost shows
as disagreement (tests/test_eval_place.py). Only the solver is shared: both call
``scipy.optimize.linear_sum_assignment``.

The device modelled is the ``paper`` preset (docs/crossbar-format.md): tiles of 128 rows x 128
cells, a weight on a differential pair (64 weight columns per tile), the pair's positive cell
holding the magnitude of a positive weight and its negative cell that of a negative one, the
other cell at G_min. An SA1 cell (stuck at G_min) on the cell carrying the weight's magnitude
drops the weight; on the idle cell it changes nothing.

Layout, as the standard flow (``rram export``, ``rram passes --passes standard``, ``rram quantize``)
maps the layer: a Conv2d's weight (Cout, Cin/g, kh, kw) is the matrix ``w.reshape(Cout, -1).T``
(rows = input channel x kernel row x kernel column, C order; columns = output channels, the
groups side by side); a 1x1 convolution is laid out as the 3x3 kernel ``pad-1x1-to-3x3`` makes of
it (its eight border rows per input channel hold zeros); a Linear's (out, in) weight is its
transpose. A BatchNorm reading the layer's output is folded into it as ``fold-bn`` does: column c
is scaled by gamma_c / sqrt(var_c + eps) with the model's statistics at the time the chips are
made (the checkpoint's or ``--bn-rate``'s, before any ``--calibrate``), so that the weights placed
are the weights the crossbar holds. The matrix is cut into tiles: bands of 128 rows, each band
into column tiles of 64 columns; a band's physical rows are all 128 of them, the last band's
unused ones being spare rows.

Faults: each physical cell of every tile a layer uses (both cells of each pair, spare rows
included) is stuck at SA1 with probability p, from a CPU ``torch.Generator`` seeded with
``derive_seed(seed, "sa1-placed", run)``, one ``torch.rand(2, padded rows, Cout)`` per layer in
``named_modules()`` order: every rate of one evaluation sees the same uniforms (common random
numbers, as ``--sa1`` without placement). These chips are not the runtime's chips; they agree
in distribution.

Placement, per tile: the squared deployed weight lost with logical row l on physical row p,
given each column's orientation, is ``(d^2 [d > 0]) @ S+^T + (d^2 [d < 0]) @ S-^T`` (S+, S-: which
physical cells carrying a positive, a negative weight are stuck, per column orientation); the
logical rows go to the physical rows (spares included) ``linear_sum_assignment`` picks. With the
fixed mapping's rows, each column's orientation is chosen (the pair whose stuck cells cost less),
then the rows, then the orientation again, each step kept only when it lowers the tile's loss:
the placed loss is at most the fixed mapping's on every tile.

Simplifications (as ``--sa1``'s reference): float weights, not the quantised levels (a weight
that quantises to 0 is dropped here at a cost of its tiny square; in the runtime it has no active
cell); SA1 only (``rram eval`` has no SA0 rate); a BatchNorm is taken as folded when it reads a
Conv2d/Linear output directly (``fold-bn`` also requires that it be that output's only reader,
true of every model the toolchain builds).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .dropconnect import check_rate, derive_seed, stored_weight, weight_modules

TILE_ROWS = 128  # the paper preset: 128 x 128 cells, a weight on a differential pair of cells
TILE_WEIGHT_COLS = 64


# ------------------------------------------------------------------ the layout of one layer

def bn_folds(model: nn.Module, sample: torch.Tensor) -> dict[str, torch.Tensor]:
    """{Conv2d/Linear name: per-output-channel scale of the BatchNorm that reads its output},
    found by one forward pass of ``sample`` in eval mode (hooks: no tracing, any model)."""
    outputs, folds, hooks = {}, {}, []
    bns = {m: n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    def layer_hook(name):
        def hook(_m, _inp, out):
            outputs[id(out)] = (name, out)  # the tensor kept: its id is not reused meanwhile
        return hook

    def bn_hook(m, inp):
        entry = outputs.get(id(inp[0]))
        if entry is not None and entry[1] is inp[0] and m.running_var is not None:
            scale = 1.0 / torch.sqrt(m.running_var.detach().double() + m.eps)
            if m.weight is not None:
                scale = scale * m.weight.detach().double()
            folds[entry[0]] = scale.cpu()

    for name, m in weight_modules(model):
        hooks.append(m.register_forward_hook(layer_hook(name)))
    for m in bns:
        hooks.append(m.register_forward_pre_hook(bn_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return folds


@dataclass
class LayerLayout:
    """One Conv2d/Linear as the crossbar holds it: ``matrix`` (rows, Cout) float64, the deployed
    weights; ``to_weight`` takes a matrix-shaped mask back to the weight's shape."""
    name: str
    weight_shape: tuple[int, ...]
    padded: bool  # a 1x1 conv laid out as its 3x3 padding
    matrix: np.ndarray

    @property
    def bands(self) -> int:
        return -(-self.matrix.shape[0] // TILE_ROWS)

    def tiles(self):
        """(band, row slice, column slice) of each tile, row-major."""
        rows, cols = self.matrix.shape
        for b in range(self.bands):
            band = slice(b * TILE_ROWS, min((b + 1) * TILE_ROWS, rows))
            for c0 in range(0, cols, TILE_WEIGHT_COLS):
                yield b, band, slice(c0, min(c0 + TILE_WEIGHT_COLS, cols))

    def to_weight(self, mask: np.ndarray) -> torch.Tensor:
        if len(self.weight_shape) == 2:
            return torch.from_numpy(np.ascontiguousarray(mask.T))
        cout, cin = self.weight_shape[:2]
        if self.padded:
            return torch.from_numpy(np.ascontiguousarray(mask.T.reshape(cout, cin, 3, 3)[:, :, 1:2, 1:2]))
        return torch.from_numpy(np.ascontiguousarray(mask.T.reshape(self.weight_shape)))


def _pads_to_3x3(m: nn.Module) -> bool:
    """What ``pad-1x1-to-3x3`` pads: a 1x1 Conv2d of dilation 1 with numeric zero padding."""
    return (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.dilation) == (1, 1)
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def layer_layouts(model: nn.Module, sample: torch.Tensor) -> list[LayerLayout]:
    folds = bn_folds(model, sample)
    out = []
    for name, m in weight_modules(model):
        w = stored_weight(m).detach().double().cpu()
        padded = _pads_to_3x3(m)
        if padded:
            w3 = torch.zeros(w.shape[0], w.shape[1], 3, 3, dtype=w.dtype)
            w3[:, :, 1, 1] = w[:, :, 0, 0]
            w = w3
        matrix = w.T if w.dim() == 2 else w.reshape(w.shape[0], -1).T
        if name in folds:
            matrix = matrix * folds[name][None, :]
        out.append(LayerLayout(name, tuple(stored_weight(m).shape), padded, matrix.numpy().copy()))
    return out


# ------------------------------------------------------------------ one tile

@dataclass
class TileResult:
    rows: np.ndarray   # (L,) the physical row (within the tile's 128) of each logical row
    flip: np.ndarray   # (w,) bool: the column's negative cell carries the positive weights
    lost: np.ndarray   # (L, w) bool: the logical weights the placed tile drops
    lost_fixed: float  # squared deployed weight dropped by the fixed mapping (rows in order, no flip)
    lost_placed: float


def _stuck_for(stuck: np.ndarray, flip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, w) each: is the cell that would carry a positive (a negative) weight stuck."""
    return np.where(flip[None, :], stuck[1], stuck[0]), np.where(flip[None, :], stuck[0], stuck[1])


def _lost(d: np.ndarray, stuck: np.ndarray, rows: np.ndarray, flip: np.ndarray) -> np.ndarray:
    plus, minus = _stuck_for(stuck, flip)
    return ((d > 0) & plus[rows]) | ((d < 0) & minus[rows])


def _orient(e: np.ndarray, d: np.ndarray, stuck: np.ndarray, rows: np.ndarray, flip: np.ndarray) -> np.ndarray:
    keep = (e * _lost(d, stuck, rows, flip)).sum(axis=0)
    swap = (e * _lost(d, stuck, rows, ~flip)).sum(axis=0)
    return np.where(swap < keep, ~flip, flip)


def place_tile_reference(d: np.ndarray, stuck: np.ndarray, orient: bool = True) -> TileResult:
    """Place one tile: deployed weights d (L, w), SA1 cells ``stuck`` (2, P >= L, w) bool (plane 0
    the pair's positive cell, plane 1 its negative one)."""
    from scipy.optimize import linear_sum_assignment

    n = d.shape[0]
    e = d * d
    rows, flip = np.arange(n), np.zeros(d.shape[1], bool)

    def loss(r, f):
        return float((e * _lost(d, stuck, r, f)).sum())

    fixed = best = loss(rows, flip)
    if best > 0 and orient:
        flip = _orient(e, d, stuck, rows, flip)
        best = loss(rows, flip)
    if best > 0:
        plus, minus = _stuck_for(stuck, flip)
        # one product, summed without BLAS (np.einsum unoptimised): small, and free of the thread
        # pool's start-up that costs more than the product itself on a busy machine
        cost = np.einsum("lc,pc->lp", np.concatenate([e * (d > 0), e * (d < 0)], axis=1),
                         np.concatenate([plus, minus], axis=1).astype(np.float64))
        _, assigned = linear_sum_assignment(cost)
        if loss(assigned, flip) < best:
            rows, best = assigned, loss(assigned, flip)
    if best > 0 and orient:
        turned = _orient(e, d, stuck, rows, flip)
        if loss(rows, turned) < best:
            flip, best = turned, loss(rows, turned)
    return TileResult(rows, flip, _lost(d, stuck, rows, flip), fixed, best)


# ------------------------------------------------------------------ chips

@dataclass
class PlacedReferenceChip:
    masks: dict[str, torch.Tensor]  # for ``sa1_faults``: the weights the placed chip drops
    info: dict                      # weight_error_fixed, weight_error_placed (relative squared)
    tiles: list[tuple[str, int, int, TileResult]] = field(default_factory=list)  # (layer, band, col0, result)


class PlacedReferenceChips:
    """The reference's placed chips at SA1 rate ``p``: ``sample(run)`` draws chip ``run``'s
    physical faults and places it. ``layouts``: from ``layer_layouts`` (made once, before any
    per-chip calibration changes the BN statistics)."""

    def __init__(self, layouts: list[LayerLayout], p: float, seed: int):
        self.layouts, self.p, self.seed = layouts, check_rate(p, "SA1 rate", inclusive=True), int(seed)
        self.energy = sum(float((lay.matrix ** 2).sum()) for lay in layouts)

    def physical_faults(self, run: int) -> list[np.ndarray]:
        """Per layer: (2, bands x 128, Cout) bool, the SA1 cells of its tiles' physical rows."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "sa1-placed", run))
        return [(torch.rand((2, lay.bands * TILE_ROWS, lay.matrix.shape[1]), generator=gen) < self.p).numpy()
                for lay in self.layouts]

    def sample(self, run: int, orient: bool = True) -> PlacedReferenceChip:
        masks, tiles, fixed, placed = {}, [], 0.0, 0.0
        for lay, stuck in zip(self.layouts, self.physical_faults(run)):
            lost = np.zeros(lay.matrix.shape, bool)
            for b, rows, cols in lay.tiles():
                physical = stuck[:, b * TILE_ROWS:(b + 1) * TILE_ROWS, cols]
                tr = place_tile_reference(lay.matrix[rows, cols], physical, orient)
                lost[rows, cols] = tr.lost
                fixed += tr.lost_fixed
                placed += tr.lost_placed
                tiles.append((lay.name, b, cols.start, tr))
            masks[lay.name] = lay.to_weight(lost)
        energy = self.energy or 1.0
        info = {"weight_error_fixed": fixed / energy, "weight_error_placed": placed / energy}
        return PlacedReferenceChip(masks, info, tiles)

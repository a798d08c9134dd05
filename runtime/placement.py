"""Fault-aware placement: a chip-specific mapping from the chip's fault map (docs/runtime.md,
docs/crossbar-format.md "Placement").

The physical tile model. A mapped layer's matrix (R rows x C columns) lies on tiles of the
device's ``tile_rows`` rows; its last band of tiles uses ``R mod tile_rows`` of them and leaves
the rest as **spare rows**. A chip's faults cover every physical cell of those tiles: per layer
the codes of the used cells (planes, slices, R, C), which every campaign has always drawn (the
same draw, so campaigns without placement give the same numbers), and of the spare rows
(planes, slices, padded R - R, C), drawn from their own stream of the same run seed.

Two moves are free at run time and chosen per chip:

- **rows**: within each tile, which physical row (word line) carries which logical input row: a
  choice of the digital input routing; a logical row may go to a spare row;
- **column orientation** (differential encoding): which cell of each pair carries the positive
  part, the sign restored by the periphery (one sign bit per column).

Per tile, the logical rows are assigned to physical rows minimising the squared error of the
deployed weights under the stuck cells (the weight each cell pattern decodes to, for every
encoding, SA1 and SA0: not just "SA1 drops the weight"), with
``scipy.optimize.linear_sum_assignment``; orientation and assignment alternate, each step never
increasing the tile's error, so the placed error is at most the fixed mapping's on every tile.

A placed chip is evaluated as a *logical* chip: the fault codes each logical cell ends up with
(the physical cell it was placed on, the planes swapped where a column is flipped); the engine
then computes exactly what the placed hardware computes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .artifact.crossbar_map import CrossbarMap, MappedLayer
from .crossbar import DeviceConfig, decode, encode, sa0_level
from .faults import OK, SA0, SA1, Chip, codes_from_uniform, run_seed, split_codes

SPARE_STREAM = 0x5BA8E  # the spare rows' stream, distinct from the chip's (no spawn key) and the subsets'
ROUNDS = 1  # orientation / assignment alternations (a second round lowered ResNet20's error by ~1%, for 2x the time)


PLACEMENT_VERSION = 1  # of the algorithm: a results file records it (another gives other numbers)


def placement_config() -> dict:
    """What a placed campaign's identity records of the placement."""
    return {"version": PLACEMENT_VERSION, "moves": ["rows", "spare rows", "column orientation"], "rounds": ROUNDS}


# ------------------------------------------------------------------ the physical tiles

def padded_rows(layer: MappedLayer, device: DeviceConfig) -> int:
    """The layer's physical rows: its row bands times the tile height."""
    rows = layer.matrix_shape[0]
    return -(-rows // device.tile_rows) * device.tile_rows


def spare_shape(layer: MappedLayer, device: DeviceConfig) -> tuple[int, ...]:
    planes, slices, rows, cols = layer.levels.shape
    return (planes, slices, padded_rows(layer, device) - rows, cols)


def spare_count(cmap: CrossbarMap) -> int:
    return int(sum(np.prod(spare_shape(layer, cmap.device)) for layer in cmap.layers))


def sample_spares(cmap: CrossbarMap, p1: float, p0: float, seed: int, run: int) -> np.ndarray:
    """The spare cells' codes of run ``run`` (flat, layers in map order, each (planes, slices,
    spare rows, C) in C order), from their own stream of the run's seed."""
    ss = np.random.SeedSequence(run_seed(seed, p1, p0, run).entropy, spawn_key=(SPARE_STREAM,))
    return codes_from_uniform(np.random.Generator(np.random.PCG64(ss)), spare_count(cmap), p1, p0)


@dataclass
class PhysicalChip:
    """A chip's faults over its physical tiles: ``used`` (the codes every campaign draws) and
    ``spare`` (flat, as ``sample_spares`` orders them), or None where the spares are unknown (a
    measured map of the used cells only: placement then permutes used rows only)."""
    used: Chip
    spare: np.ndarray | None = None

    def layer_codes(self, cmap: CrossbarMap) -> list[np.ndarray]:
        """Per layer: (planes, slices, physical rows, C), the spare rows below the used ones."""
        used = split_codes(cmap, self.used.codes)
        if self.spare is None:
            return used
        out, start = [], 0
        for layer, codes in zip(cmap.layers, used):
            shape = spare_shape(layer, cmap.device)
            n = int(np.prod(shape))
            out.append(np.concatenate([codes, self.spare[start:start + n].reshape(shape)], axis=2))
            start += n
        return out


# ------------------------------------------------------------------ the error of a placement

def _cell_weights(device: DeviceConfig) -> np.ndarray:
    """What one level of cell (plane, slice) adds to the decoded integer: +-2^(bits * slice)."""
    signs = np.array([1, -1] if device.planes == 2 else [1], np.float64)
    return (signs[:, None] * (2.0 ** (device.bits_per_cell * np.arange(device.cells_per_weight))))


class _TileTerms:
    """One tile's error terms, computed once: per physical cell group the stuck cells' place
    values (m_j w_j) and A = sum_j w_j m_j a_j (a_j: the stuck level), and the intended levels v
    of each logical integer in either orientation. A logical row l on physical row p decodes with
    the error A[p] - sum_j m_j w_j[p] v_j[l] (exact: integers in float64)."""

    def __init__(self, q: np.ndarray, s2: np.ndarray, codes: np.ndarray, device: DeviceConfig):
        w = _cell_weights(device).reshape(-1, 1, 1)
        c = codes.reshape(-1, *codes.shape[2:])
        self.mw = (c != OK) * w
        self.a = (self.mw * np.where(c == SA0, float(sa0_level(device)), 0.0)).sum(axis=0)
        self.v = encode(q, device).reshape(self.mw.shape[0], *q.shape).astype(np.float64)
        self.v_flipped = encode(-q, device).reshape(self.v.shape).astype(np.float64)
        self.s2 = s2

    def levels(self, flip: np.ndarray) -> np.ndarray:
        return np.where(flip[None, None, :], self.v_flipped, self.v)

    def column_errors(self, rows: np.ndarray, flip: np.ndarray) -> np.ndarray:
        """Per column: the squared weight error with logical row l on physical row rows[l]."""
        e = self.a[rows] - (self.mw[:, rows] * self.levels(flip)).sum(axis=0)
        return self.s2 * (e * e).sum(axis=0)

    def pair_errors(self, flip: np.ndarray) -> np.ndarray:
        """Cost (L, P): the squared weight error of logical row l placed on physical row p, over
        the columns. The square of A - sum_j m_j w_j v_j expands into terms of the form
        (L x C) @ (C x P), stacked into one matrix product instead of L x P x C decodes (float32:
        it ranks rows; the errors reported are ``column_errors``'s, exact)."""
        v, mw, a, s2 = self.levels(flip), self.mw, self.a, self.s2
        left, right = [], []
        for j in range(len(v)):
            if not v[j].any():
                continue
            left.append(-2 * v[j])
            right.append(s2 * a * mw[j])
            for k in range(j, len(v)):
                vv = v[j] * v[k]  # zero across the planes of a differential pair: one holds 0
                if vv.any():
                    left.append((1 if k == j else 2) * vv)
                    right.append(s2 * mw[j] * mw[k])
        cost = np.repeat((s2 * a * a).sum(axis=1)[None, :], v.shape[1], axis=0).astype(np.float32)
        if left:
            cost += np.concatenate(left, axis=1).astype(np.float32) @ np.concatenate(right, axis=1).T.astype(np.float32)
        return cost


def faulty_integers(q: np.ndarray, codes: np.ndarray, flip: np.ndarray, device: DeviceConfig) -> np.ndarray:
    """The integers logical rows decode to with ``codes`` (shaped like their levels: one physical
    row per logical row), the sign restored in flipped columns: the decoder's own arithmetic,
    what ``_TileTerms`` computes in closed form (the tests check one against the other)."""
    levels = encode(np.where(flip[None, :], -q, q), device)
    faulty = np.where(codes == SA1, np.uint8(0), levels)
    faulty = np.where(codes == SA0, np.uint8(sa0_level(device)), faulty)
    value = decode(faulty, device)
    return np.where(flip[None, :], -value, value)


# ------------------------------------------------------------------ placing one tile

@dataclass
class TilePlacement:
    rows: np.ndarray  # (L,) physical row (within the tile) of each logical row
    flip: np.ndarray  # (w,) bool: the column's pair carries its positive part on the second cell
    error_fixed: float
    error_placed: float


def place_tile(q: np.ndarray, s2: np.ndarray, codes: np.ndarray, device: DeviceConfig,
               orient: bool = True) -> TilePlacement:
    """Place one tile: logical integers q (L, w), squared column scales s2 (w,), the codes of the
    tile's physical rows (planes, slices, P >= L, w). Orientation (differential encoding only)
    and row assignment alternate; a step is kept only when it lowers the tile's error."""
    from scipy.optimize import linear_sum_assignment

    n = q.shape[0]
    rows, flip = np.arange(n), np.zeros(q.shape[1], bool)
    if not codes.any():
        return TilePlacement(rows, flip, 0.0, 0.0)
    terms = _TileTerms(q, s2, codes, device)
    best = float(terms.column_errors(rows, flip).sum())
    result = TilePlacement(rows, flip, best, best)
    orient = orient and device.planes == 2
    for _ in range(ROUNDS):
        if best == 0.0:
            break
        if orient:  # each column's orientation, given the rows
            keep, swap = terms.column_errors(rows, flip), terms.column_errors(rows, ~flip)
            flip = np.where(swap < keep, ~flip, flip)
        _, assigned = linear_sum_assignment(terms.pair_errors(flip))
        error = float(terms.column_errors(assigned, flip).sum())
        if error < best:
            best, result = error, TilePlacement(assigned, flip.copy(), result.error_fixed, error)
        rows, flip = result.rows, result.flip.copy()
    if orient and best > 0.0:  # the orientation once more, for the rows chosen (never worse)
        keep, swap = terms.column_errors(rows, flip), terms.column_errors(rows, ~flip)
        flip = np.where(swap < keep, ~flip, flip)
        error = float(np.minimum(keep, swap).sum())
        if error < best:
            result = TilePlacement(rows, flip, result.error_fixed, error)
    return result


# ------------------------------------------------------------------ placing a chip

@dataclass
class Placement:
    """A chip's placement: per layer, ``rows`` (R, column tiles): the physical row, within its
    tile, of each logical row in each column tile; ``flip`` (row bands, C): each tile column's
    orientation (a column of another band is another tile's bit line, with its own periphery)."""
    rows: list[np.ndarray]
    flip: list[np.ndarray]
    error_fixed: float = 0.0   # squared weight error of the fixed mapping, over all layers
    error_placed: float = 0.0
    energy: float = 1.0        # sum of the squared deployed weights (to state errors as fractions)

    def errors(self) -> dict:
        """The relative squared weight error (sum of squared errors / sum of squared weights) of
        the fixed mapping and of this placement: what a results record holds per placed chip."""
        energy = self.energy or 1.0
        return {"weight_error_fixed": self.error_fixed / energy, "weight_error_placed": self.error_placed / energy}


def column_tiles(layer: MappedLayer, device: DeviceConfig) -> list[tuple[int, int]]:
    """The (start, stop) matrix columns of each column tile."""
    step, cols = device.matrix_cols_per_tile, layer.matrix_shape[1]
    return [(c, min(c + step, cols)) for c in range(0, cols, step)]


def place_chip(cmap: CrossbarMap, chip: PhysicalChip, orient: bool = True) -> Placement:
    device, t = cmap.device, cmap.device.tile_rows
    rows_out, flips, fixed, placed, energy = [], [], 0.0, 0.0, 0.0
    for layer, codes in zip(cmap.layers, chip.layer_codes(cmap)):
        q = decode(layer.levels, device)
        s2 = layer.scales.astype(np.float64) ** 2
        energy += float((s2 * q.astype(np.float64) ** 2).sum())
        n_rows = q.shape[0]
        ctiles = column_tiles(layer, device)
        rows = np.zeros((n_rows, len(ctiles)), np.int16)
        flip = np.zeros((-(-n_rows // t), q.shape[1]), bool)
        for b, band in enumerate(range(0, n_rows, t)):
            logical = slice(band, min(band + t, n_rows))
            physical = slice(band, min(band + t, codes.shape[2]))
            for k, (c0, c1) in enumerate(ctiles):
                tp = place_tile(q[logical, c0:c1], s2[c0:c1], codes[:, :, physical, c0:c1], device, orient)
                rows[logical, k] = tp.rows
                flip[b, c0:c1] = tp.flip
                fixed += tp.error_fixed
                placed += tp.error_placed
        rows_out.append(rows)
        flips.append(flip)
    return Placement(rows_out, flips, fixed, placed, energy)


def placed_codes(cmap: CrossbarMap, chip: PhysicalChip, placement: Placement) -> Chip:
    """The logical chip: per used cell, the codes of the physical cell its weight was placed on
    (planes swapped in flipped columns). The engine evaluates it like any chip."""
    device, t = cmap.device, cmap.device.tile_rows
    parts = []
    for layer, codes, rows, flip in zip(cmap.layers, chip.layer_codes(cmap), placement.rows, placement.flip):
        out = np.empty_like(layer.levels)
        n_rows = layer.matrix_shape[0]
        for k, (c0, c1) in enumerate(column_tiles(layer, device)):
            physical = (np.arange(n_rows) // t) * t + rows[:, k]
            out[:, :, :, c0:c1] = codes[:, :, physical, c0:c1]
        for b, band_flip in enumerate(flip):
            if band_flip.any():  # the pair's roles swapped: plane 0 <-> 1
                block = out[:, :, b * t:(b + 1) * t]
                block[:, :, :, band_flip] = block[::-1, :, :, band_flip]
        parts.append(out.ravel())
    return Chip(np.concatenate(parts) if parts else np.zeros(0, np.uint8))


# ------------------------------------------------------------------ measured fault maps of full tiles

def padded_map(cmap: CrossbarMap) -> CrossbarMap:
    """The map's layers with every physical row of their tiles (levels all 0: the shape is what
    counts): what a fault map of full tiles is checked against."""
    from dataclasses import replace

    layers = [replace(layer, levels=np.zeros(layer.levels.shape[:2] + (padded_rows(layer, cmap.device),)
                                             + layer.levels.shape[3:], np.uint8)) for layer in cmap.layers]
    return CrossbarMap(cmap.device, layers, cmap.model_sha256)


def load_physical_fault_map(path, cmap: CrossbarMap) -> PhysicalChip:
    """A measured fault map (format in ``faults``) of the used cells (each layer shaped like its
    levels: spares unknown) or of full tiles (each layer with its padded rows, the spare rows
    below the used ones): the chip's physical faults."""
    from .faults import load_fault_map, member_shapes

    shapes = member_shapes(path)
    full = [tuple(layer.levels.shape[:2]) + (padded_rows(layer, cmap.device),) + tuple(layer.levels.shape[3:])
            for layer in cmap.layers]
    keys = [(f"L{i:04d}", layer.name) for i, layer in enumerate(cmap.layers)]
    given = [shapes.get(k, shapes.get(n)) for k, n in keys]
    if not any(g == f and f != tuple(layer.levels.shape) for g, f, layer in zip(given, full, cmap.layers)):
        return PhysicalChip(load_fault_map(path, cmap), None)  # used cells only (or errors in its words)
    codes = split_codes(padded_map(cmap), load_fault_map(path, padded_map(cmap)).codes)
    used = [c[:, :, :layer.matrix_shape[0]] for c, layer in zip(codes, cmap.layers)]
    spare = [c[:, :, layer.matrix_shape[0]:] for c, layer in zip(codes, cmap.layers)]
    flat = (np.concatenate([c.ravel() for c in parts]) if parts else np.zeros(0, np.uint8) for parts in (used, spare))
    return PhysicalChip(Chip(next(flat)), next(flat))


def save_physical_fault_map(path, cmap: CrossbarMap, chip: PhysicalChip) -> None:
    """Write a chip's faults over full tiles (spare rows included) in the fault-map format."""
    from .faults import save_fault_map

    flat = np.concatenate([c.ravel() for c in chip.layer_codes(cmap)]) if cmap.layers else np.zeros(0, np.uint8)
    save_fault_map(path, padded_map(cmap), Chip(flat))

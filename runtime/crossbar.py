"""The crossbar/device description and the weight <-> cell-level mapping. The one place that says
how a weight becomes conductances; the quantizer (``passes``) writes with it and the fault runtime
reads with it, so decoding the written map gives exactly the deployed weights.

Vocabulary
----------
- A layer's weight becomes a **matrix**: rows = word lines (inputs), columns = bit lines (outputs).
  Conv (Cout, Cin/g, kh, kw) -> (Cin/g*kh*kw, Cout): ``w.reshape(Cout, -1).T``. Grouped and
  depthwise convs put the groups' columns side by side (column j belongs to group j // (Cout/g));
  a tile holding several groups is read group by group (column subsets), trading cycles for
  cell utilisation instead of a block-diagonal layout that would waste (g-1)/g of the cells.
  Gemm/MatMul weights (K, N) are already (rows, cols).
- Each matrix entry is quantised to a signed integer q with ``weight_bits`` magnitude bits
  (|q| <= 2^(bits_per_cell*cells_per_weight) - 1) and a per-column float scale (w ~= scale * q).
- **Cells**: q is split into ``cells_per_weight`` slices of ``bits_per_cell`` bits (LSB slice
  first), each slice one cell with levels 0..L-1 (L = 2^bits_per_cell).
  * ``differential`` (default): two planes, G+ holds the magnitude of positive q, G- of negative
    q; the other plane's cells sit at level 0 (G_min). q = mag(G+) - mag(G-).
  * ``offset``: one plane holds u = q + 2^(B-1) (B = total bits, so u >= 0); a reference column,
    modelled as fault-free peripheral logic, subtracts 2^(B-1). Its range is one less bit.
- Level -> conductance is linear: G = g_min + level / (L-1) * (g_max - g_min).

Fault naming (the paper's): **SA1** = stuck at the high-resistance state, G_min, level 0;
**SA0** = stuck at the low-resistance state, G_max, level L-1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import RuntimeInputError

ENCODINGS = ("differential", "offset")
SCALE_GRANULARITIES = ("column", "tile", "layer")


@dataclass(frozen=True)
class DeviceConfig:
    """One crossbar technology and how weights are mapped onto it (plain data, with presets)."""

    tile_rows: int = 128
    tile_cols: int = 128
    bits_per_cell: int = 7
    cells_per_weight: int = 1
    encoding: str = "differential"
    g_min: float = 1e-6  # siemens, high-resistance state (HRS)
    g_max: float = 1e-4  # siemens, low-resistance state (LRS)
    scale_granularity: str = "column"
    clip_percentile: float | None = None  # None: clip at max |w| (no clipping)
    name: str = "custom"

    def __post_init__(self):
        for attr in ("tile_rows", "tile_cols", "bits_per_cell", "cells_per_weight"):
            v = getattr(self, attr)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise RuntimeInputError(f"{attr} must be a positive integer, got {v!r}")
        if self.bits_per_cell > 8:
            raise RuntimeInputError(f"bits_per_cell={self.bits_per_cell}: more than 256 levels do not "
                                    f"fit a uint8 cell map (max 8)")
        if self.weight_bits > 30:
            raise RuntimeInputError(f"bits_per_cell*cells_per_weight={self.weight_bits} exceeds 30 bits")
        if self.encoding not in ENCODINGS:
            raise RuntimeInputError(f"unknown encoding {self.encoding!r}: choose {', '.join(ENCODINGS)}")
        if self.scale_granularity not in SCALE_GRANULARITIES:
            raise RuntimeInputError(f"unknown scale granularity {self.scale_granularity!r}: choose "
                                    f"{', '.join(SCALE_GRANULARITIES)}")
        if not (math.isfinite(self.g_min) and math.isfinite(self.g_max)) or self.g_min < 0:
            raise RuntimeInputError(f"conductances must be finite and g_min >= 0, got {self.g_min}, {self.g_max}")
        if self.g_min >= self.g_max:
            raise RuntimeInputError(f"g_min ({self.g_min:g}) must be below g_max ({self.g_max:g})")
        if self.clip_percentile is not None and not (0 < self.clip_percentile <= 100):
            raise RuntimeInputError(f"clip_percentile must be in (0, 100], got {self.clip_percentile}")
        if self.cells_per_column_group > self.tile_cols:
            raise RuntimeInputError(f"a tile of {self.tile_cols} columns cannot hold one weight column "
                                    f"({self.cells_per_column_group} cells)")
        if self.qmax < 1:  # offset encoding keeps one bit for the sign: 1 bit holds only q = 0
            raise RuntimeInputError(f"{self.encoding} encoding with {self.weight_bits} bit(s) per weight "
                                    f"represents no non-zero weight: use more bits or cells per weight")

    # ---------------------------------------------------------------- derived quantities
    @property
    def levels(self) -> int:
        return 1 << self.bits_per_cell

    @property
    def weight_bits(self) -> int:
        return self.bits_per_cell * self.cells_per_weight

    @property
    def planes(self) -> int:
        return 2 if self.encoding == "differential" else 1

    @property
    def qmax(self) -> int:
        """Largest |q| the encoding represents (symmetric range)."""
        full = (1 << self.weight_bits) - 1
        return full if self.encoding == "differential" else (1 << (self.weight_bits - 1)) - 1

    @property
    def offset(self) -> int:
        return 0 if self.encoding == "differential" else 1 << (self.weight_bits - 1)

    @property
    def cells_per_column_group(self) -> int:
        """Physical columns one matrix column needs (planes x slices)."""
        return self.planes * self.cells_per_weight

    @property
    def matrix_cols_per_tile(self) -> int:
        return max(1, self.tile_cols // self.cells_per_column_group)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DeviceConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise RuntimeInputError(f"unknown device fields: {', '.join(sorted(unknown))}")
        return cls(**d)

    def with_options(self, **overrides) -> DeviceConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, DeviceConfig] = {
    # Differential pair, one 128-level cell per sign holding |q| of an int8 weight: an SA1 on the
    # active cell zeroes exactly one weight, which is what drop-connect trains for.
    "paper": DeviceConfig(bits_per_cell=7, cells_per_weight=1, encoding="differential", name="paper"),
    # 4-bit multi-level cells, two slices (8-bit magnitude).
    "mlc4": DeviceConfig(bits_per_cell=4, cells_per_weight=2, encoding="differential", name="mlc4"),
    # Binary cells, eight slices (8-bit magnitude).
    "slc8": DeviceConfig(bits_per_cell=1, cells_per_weight=8, encoding="differential", name="slc8"),
}


def preset(name: str) -> DeviceConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise RuntimeInputError(f"unknown device preset {name!r}: choose {', '.join(PRESETS)}") from None


# -------------------------------------------------------------------- weight <-> matrix

def weight_to_matrix(weight: np.ndarray, *, transpose: bool = False) -> np.ndarray:
    """Conv (Cout, Cin/g, kh, kw) -> (Cin/g*kh*kw, Cout); 2-D (K, N) -> itself, or its transpose
    when ``transpose`` (Gemm with transB=1 stores (N, K))."""
    if weight.ndim == 2:
        return weight.T if transpose else weight
    if weight.ndim < 3:
        raise RuntimeInputError(f"cannot map a weight of shape {weight.shape}")
    return weight.reshape(weight.shape[0], -1).T


def matrix_to_weight(matrix: np.ndarray, shape: tuple[int, ...], *, transpose: bool = False) -> np.ndarray:
    if len(shape) == 2:
        return np.ascontiguousarray(matrix.T if transpose else matrix)
    return np.ascontiguousarray(matrix.T.reshape(shape))


# -------------------------------------------------------------------- tiles

@dataclass(frozen=True)
class Tile:
    """A window of the matrix held by one physical tile."""
    row: int
    col: int
    rows: int
    cols: int


def tile_grid(matrix_rows: int, matrix_cols: int, device: DeviceConfig) -> list[Tile]:
    """Cover the matrix exactly once with tiles, row-major; edge tiles are partial."""
    step_r, step_c = device.tile_rows, device.matrix_cols_per_tile
    return [Tile(r, c, min(step_r, matrix_rows - r), min(step_c, matrix_cols - c))
            for r in range(0, matrix_rows, step_r) for c in range(0, matrix_cols, step_c)]


# -------------------------------------------------------------------- quantisation

def column_scales(matrix: np.ndarray, device: DeviceConfig) -> np.ndarray:
    """Per-column scales (float32) such that w ~= scale * q with |q| <= qmax."""
    a = np.abs(matrix.astype(np.float64))
    if device.clip_percentile is None or device.clip_percentile >= 100:
        col_max = a.max(axis=0) if a.size else np.zeros(matrix.shape[1])
    else:
        col_max = np.percentile(a, device.clip_percentile, axis=0)
    if device.scale_granularity == "layer":
        col_max = np.full_like(col_max, col_max.max(initial=0.0))
    elif device.scale_granularity == "tile":
        step = device.matrix_cols_per_tile
        for c in range(0, len(col_max), step):
            col_max[c:c + step] = col_max[c:c + step].max()
    scales = col_max / device.qmax
    scales[scales == 0] = 1.0  # an all-zero column: any scale gives q = 0
    return scales.astype(np.float32)


def quantize_matrix(matrix: np.ndarray, scales: np.ndarray, device: DeviceConfig) -> np.ndarray:
    """Signed integers (int32) with |q| <= qmax; values beyond the clip saturate."""
    q = np.rint(matrix.astype(np.float64) / scales.astype(np.float64)[None, :])
    return np.clip(q, -device.qmax, device.qmax).astype(np.int32)


def dequantize_matrix(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * scales.astype(np.float32)[None, :]).astype(np.float32)


# -------------------------------------------------------------------- cells

def encode(q: np.ndarray, device: DeviceConfig) -> np.ndarray:
    """Integer matrix (R, C) -> cell levels, uint8 array (planes, slices, R, C)."""
    if np.abs(q).max(initial=0) > device.qmax:
        raise RuntimeInputError(f"integer weight out of range for the device (|q| > {device.qmax})")
    # the non-negative cell values in the narrowest unsigned type (uint8 for 8-bit weights): the
    # slicing below is memory bound; slices are written straight into the uint8 map
    q = np.ascontiguousarray(q, dtype=np.int32)  # the map is C-ordered; a transposed q copies slowly
    vtype = np.uint8 if device.weight_bits <= 8 else np.uint16 if device.weight_bits <= 16 else np.uint32
    if device.encoding == "differential":
        values = [np.maximum(q, 0).astype(vtype), np.maximum(-q, 0).astype(vtype)]
    else:
        values = [(q + np.int32(device.offset)).astype(vtype)]
    b, mask = device.bits_per_cell, device.levels - 1
    out = np.empty((device.planes, device.cells_per_weight, *q.shape), dtype=np.uint8)
    for p, v in enumerate(values):
        for k in range(device.cells_per_weight):
            part = v if device.cells_per_weight == 1 else (v >> vtype(b * k)) & vtype(mask)
            out[p, k] = part  # fits: 0 <= part < levels <= 256
    return out


def decode(levels: np.ndarray, device: DeviceConfig) -> np.ndarray:
    """Cell levels (planes, slices, R, C) -> signed integer matrix (R, C), int32. Vectorised; this
    is the function the fault runtime applies to faulty maps."""
    weights = (np.int64(1) << (device.bits_per_cell * np.arange(device.cells_per_weight, dtype=np.int64)))
    values = np.tensordot(weights, levels.astype(np.int64), axes=([0], [1]))  # (planes, R, C)
    if device.encoding == "differential":
        return (values[0] - values[1]).astype(np.int32)
    return (values[0] - device.offset).astype(np.int32)


SA1_LEVEL = 0  # stuck at HRS (G_min)


def sa0_level(device: DeviceConfig) -> int:
    """Stuck at LRS (G_max)."""
    return device.levels - 1

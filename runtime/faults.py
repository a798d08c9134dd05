"""Cell-level stuck-at faults on a conductance map (see ``runtime/README.md`` for what each fault
does under each encoding).

A *chip* is one draw of stuck cells over every cell of every mapped layer: each cell independently
stuck at SA1 (G_min, level 0) with probability ``p1``, at SA0 (G_max, level L-1) with probability
``p0``, fine otherwise. All layers' cells are drawn as one flat vector (no Python loop over cells
or weights), in the fixed order of the map's layers, so the same seed gives the same chip.

Measured fault-map file (a tested chip): an ``.npz`` with one uint8 array per mapped layer, keyed
by the layer key of ``crossbars.npz`` (``L0000``, ``L0001``, ...) or by the layer's initializer
name, shaped like that layer's levels (planes, slices, rows, cols); 0 = ok, 1 = SA1, 2 = SA0.
Every mapped layer must be present (a layer without faults is an all-zero array).
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact.crossbar_map import CrossbarMap
from .crossbar import SA1_LEVEL, sa0_level
from .errors import RuntimeInputError
from .fileio import atomic_write_with, check_npz_members

OK, SA1, SA0 = 0, 1, 2
RATE_SCALE = 1_000_000  # rates enter seeds as integers in parts per million


def check_rates(p1: float, p0: float = 0.0) -> None:
    for name, p in (("SA1", p1), ("SA0", p0)):
        if not isinstance(p, (int, float, np.floating)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise RuntimeInputError(f"{name} rate must be in [0, 1], got {p}")
    if p1 + p0 > 1.0 + 1e-12:
        raise RuntimeInputError(f"SA1 + SA0 rates must not exceed 1, got {p1} + {p0} = {p1 + p0:g}")


def run_seed(seed: int, p1: float, p0: float, run: int) -> np.random.SeedSequence:
    """The seed of run ``run`` at rates (p1, p0): a function of these alone, so any split of a
    campaign into shards or resumed pieces draws the same chips."""
    return np.random.SeedSequence([int(seed), round(p1 * RATE_SCALE), round(p0 * RATE_SCALE), int(run)])


MEASURED_CHIP_WORD = 0x3EA5ED  # above every SA1 word of ``run_seed`` (at most RATE_SCALE)


def measured_seed(seed: int) -> np.random.SeedSequence:
    """The seed of a measured chip's simulated programming errors and read noise (``rram validate
    --fault-map --variation/--read-noise``): ``SeedSequence([seed, 0x3EA5ED])``, a function of
    ``seed`` alone, never a campaign run's seed (whose second word, the SA1 rate in parts per
    million, is at most 10^6). The chip is programmed once: one draw per seed."""
    return np.random.SeedSequence([int(seed), MEASURED_CHIP_WORD])


@dataclass
class Chip:
    """One simulated chip: a fault code per cell (flat, over all layers in map order)."""
    codes: np.ndarray  # uint8, OK / SA1 / SA0
    info: dict | None = None  # what the chip's source adds to its results record (e.g. placement)
    nonideal: object | None = None  # variation.Nonideal: the chip's other non-idealities (None: none)
    seed: np.random.SeedSequence | None = None  # the run's seed, whose own streams draw them

    @property
    def noisy(self) -> bool:
        """Programming variation or read noise: the chip differs from its codes' weights even
        without a stuck cell."""
        n = self.nonideal
        return n is not None and (n.programming_sigma > 0 or n.read_sigma > 0)

    @property
    def read_noise(self) -> bool:
        return self.nonideal is not None and self.nonideal.read_sigma > 0

    @property
    def sa1_fraction(self) -> float:
        return float(np.count_nonzero(self.codes == SA1)) / max(1, self.codes.size)

    @property
    def sa0_fraction(self) -> float:
        return float(np.count_nonzero(self.codes == SA0)) / max(1, self.codes.size)

    @property
    def stuck_fraction(self) -> float:
        return float(np.count_nonzero(self.codes)) / max(1, self.codes.size)


def sample_chip(n_cells: int, p1: float, p0: float, seed: np.random.SeedSequence | int) -> Chip:
    """Independent per-cell draw: one uniform per cell, SA1 below p1, SA0 in [p1, p1 + p0)."""
    check_rates(p1, p0)
    return Chip(codes_from_uniform(np.random.Generator(np.random.PCG64(seed)), n_cells, p1, p0))


def codes_from_uniform(rng: np.random.Generator, n_cells: int, p1: float, p0: float) -> np.ndarray:
    """``n_cells`` fault codes from one uniform each: SA1 below p1, SA0 in [p1, p1 + p0)."""
    u = rng.random(n_cells, dtype=np.float32)  # half the memory of float64; steps of 2^-24 are fine for rates
    p1, p0 = np.float32(p1), np.float32(p0)
    codes = np.zeros(n_cells, dtype=np.uint8)
    codes[u < p1] = SA1
    codes[(u >= p1) & (u < p1 + p0)] = SA0
    return codes


def apply_faults(levels: np.ndarray, codes: np.ndarray, sa0: int) -> np.ndarray:
    """Levels with stuck cells forced to their stuck level (a new array; shapes must agree)."""
    out = np.where(codes == SA1, np.uint8(SA1_LEVEL), levels)
    return np.where(codes == SA0, np.uint8(sa0), out).astype(np.uint8, copy=False)


def split_codes(cmap: CrossbarMap, codes: np.ndarray) -> list[np.ndarray]:
    """Flat fault codes -> one array per layer, shaped like its levels."""
    if codes.size != cmap.cell_count():
        raise RuntimeInputError(f"fault codes cover {codes.size} cells, the map has {cmap.cell_count()}")
    out, start = [], 0
    for layer in cmap.layers:
        n = layer.levels.size
        out.append(codes[start:start + n].reshape(layer.levels.shape))
        start += n
    return out


def layer_names(cmap: CrossbarMap) -> list[str]:
    """The names layers go by in --protect and sensitivity reports: the map's node names."""
    return [layer.node for layer in cmap.layers]


def layer_indices(cmap: CrossbarMap, names: list[str]) -> list[int]:
    """Map layers by node name (or integer-initializer name); a one-line error for an unknown one."""
    nodes = layer_names(cmap)
    index = {**{lay.name: i for i, lay in enumerate(cmap.layers)}, **{n: i for i, n in enumerate(nodes)}}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise RuntimeInputError(f"unknown layer {unknown[0]!r}: the mapped layers are {', '.join(nodes)}")
    return sorted({index[n] for n in names})


def faulty_levels(cmap: CrossbarMap, codes: np.ndarray) -> list[np.ndarray]:
    """Per layer: the levels as the faulty chip holds them."""
    flat = np.concatenate([layer.levels.ravel() for layer in cmap.layers]) if cmap.layers else \
        np.zeros(0, np.uint8)
    faulty = apply_faults(flat, codes, sa0_level(cmap.device))
    return split_codes(cmap, faulty)


# ------------------------------------------------------------------ measured fault maps

def layer_keys(cmap: CrossbarMap) -> list[str]:
    return [f"L{i:04d}" for i in range(len(cmap.layers))]


def fault_map_layer_bytes(layer) -> int:
    """The most bytes a fault map's array for ``layer`` (a ``MappedLayer``) can hold: one code per
    cell of its levels (planes, slices, rows, cols), of any integer type (8 bytes at most). The one
    place the expected size of an entry is computed (``load_fault_map`` checks each entry's declared
    size against it before reading; a change of the map's shape changes it here)."""
    return math.prod(layer.levels.shape) * 8


def load_fault_map(path: str | os.PathLike, cmap: CrossbarMap) -> Chip:
    """Read a measured fault-map ``.npz`` (format in the module docstring), validated against the
    conductance map: every layer present, exact shapes, codes in {0, 1, 2}. Each entry's declared
    size is checked before it is read (``fault_map_layer_bytes``): a zip bomb is one line."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeInputError(f"fault map not found: {path}")
    expected = {}
    for key, layer in zip(layer_keys(cmap), cmap.layers):
        expected[key] = expected[layer.name] = fault_map_layer_bytes(layer)
    check_npz_members(path, expected, "fault map", unknown="an entry for no mapped layer")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # e.g. a text or pickle file: numpy's message is about pickles
        raise RuntimeInputError(f"{path} is not a fault map (.npz of integer arrays): "
                                f"{str(e).splitlines()[0][:120]}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise RuntimeInputError(f"corrupt fault map {path}: {e or 'empty file'}") from None
    parts, used = [], set()
    for key, layer in zip(layer_keys(cmap), cmap.layers):
        k = key if key in arrays else layer.name if layer.name in arrays else None
        if k is None:
            raise RuntimeInputError(f"fault map {path} has no entry for layer {layer.name!r} ({key})")
        a = arrays[k]
        used.add(k)
        if tuple(a.shape) != tuple(layer.levels.shape):
            raise RuntimeInputError(f"fault map {path}: layer {layer.name!r} has shape {a.shape}, "
                                    f"its cells are {layer.levels.shape}")
        if not np.issubdtype(a.dtype, np.integer) or a.size and (a.min() < 0 or a.max() > SA0):
            raise RuntimeInputError(f"fault map {path}: layer {layer.name!r} codes must be integers "
                                    f"0 (ok), 1 (SA1) or 2 (SA0)")
        parts.append(a.astype(np.uint8).ravel())
    extra = sorted(set(arrays) - used)
    if extra:
        raise RuntimeInputError(f"fault map {path} has entries for no mapped layer: {', '.join(extra[:3])}")
    return Chip(np.concatenate(parts) if parts else np.zeros(0, np.uint8))


def save_fault_map(path: str | os.PathLike, cmap: CrossbarMap, chip: Chip) -> None:
    """Write a chip in the measured fault-map format (e.g. to replay a simulated chip)."""
    arrays = dict(zip(layer_keys(cmap), split_codes(cmap, chip.codes)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda fh: np.savez_compressed(fh, **arrays))


def member_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The array shapes an ``.npz`` declares (read from the headers only: nothing is decompressed
    but the few header bytes); {} for a file that is not a readable archive (its reader says why)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read is not None:
                        shapes[info.filename.removesuffix(".npy")] = tuple(read(fh)[0])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return {}
    return shapes

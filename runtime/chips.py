"""The fault model: where a campaign's chips come from. One interface, ``ChipSource.sample(run)
-> Chip``, with its two implementations:

- ``RandomChips``: the simulated chips of a campaign at one pair of rates, run r drawn from
  ``faults.run_seed(seed, sa1, sa0, r)`` alone (so shards, resumes and Ray workers draw the same
  chips), optionally with the faults kept in some layers only (``--protect``, sensitivity);
- ``MeasuredChip``: one tested chip, read from its fault-map file (every run is that chip).

``rram validate`` (campaigns and ``--fault-map``), ``rram sensitivity`` and ``rram calibrate`` take
their chips from here; the next kinds of chip (placement on a measured map, device variation)
plug in as further sources. A source is small and picklable: Ray workers get it with each chip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .artifact.crossbar_map import CrossbarMap
from .faults import Chip, check_rates, layer_indices, load_fault_map, run_seed, sample_chip


class ChipSource(Protocol):
    def sample(self, run: int) -> Chip:
        """The chip of run ``run`` (a function of the source's settings and ``run`` alone)."""


def cell_ranges(cmap: CrossbarMap, layers: list[int]) -> tuple[tuple[int, int], ...]:
    """The flat cell index ranges [start, stop) of the map's layers ``layers`` (map order)."""
    ranges, start = [], 0
    for i, layer in enumerate(cmap.layers):
        if i in layers:
            ranges.append((start, start + layer.levels.size))
        start += layer.levels.size
    return tuple(ranges)


@dataclass(frozen=True)
class RandomChips:
    """Chips with each cell independently stuck at SA1 (G_min, reads as 0) with probability
    ``sa1`` and at SA0 (G_max) with probability ``sa0``, over ``cells`` cells. ``faulty``: the
    cell ranges whose faults are kept (the rest fault-free: verified crossbars or digital logic);
    None keeps every fault. The same cells of the same chip stay stuck whatever is kept, so
    campaigns that protect different layers compare the same chips."""
    cells: int
    sa1: float
    sa0: float
    seed: int
    faulty: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self):
        check_rates(self.sa1, self.sa0)

    @classmethod
    def of(cls, cmap: CrossbarMap, sa1: float, sa0: float, seed: int,
           faulty_layers: list[int] | None = None) -> RandomChips:
        return cls(cmap.cell_count(), float(sa1), float(sa0), int(seed),
                   None if faulty_layers is None else cell_ranges(cmap, faulty_layers))

    def sample(self, run: int) -> Chip:
        chip = sample_chip(self.cells, self.sa1, self.sa0, run_seed(self.seed, self.sa1, self.sa0, run))
        if self.faulty is None:
            return chip
        codes = np.zeros_like(chip.codes)
        for start, stop in self.faulty:
            codes[start:stop] = chip.codes[start:stop]
        return Chip(codes)


class MeasuredChip:
    """One tested chip: its measured fault map (format in ``faults``), checked against the map."""

    def __init__(self, path: str | os.PathLike, cmap: CrossbarMap):
        self.path = Path(path)
        self.chip = load_fault_map(self.path, cmap)

    def sample(self, run: int = 0) -> Chip:
        return self.chip


def protected_layers(cmap: CrossbarMap, protect: list[str] | None) -> list[int] | None:
    """--protect NAME,...: the indices of the layers whose faults are kept (None: all)."""
    if not protect:
        return None
    protected = layer_indices(cmap, list(protect))
    return [i for i in range(len(cmap.layers)) if i not in protected]

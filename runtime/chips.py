"""The fault model: where a campaign's chips come from. One interface, ``ChipSource.sample(run)
-> Chip``, with its two implementations:

- ``RandomChips``: the simulated chips of a campaign at one pair of rates, run r drawn from
  ``faults.run_seed(seed, sa1, sa0, r)`` alone (so shards, resumes and Ray workers draw the same
  chips), optionally with the faults kept in some layers only (``--protect``, sensitivity);
- ``MeasuredChip``: one tested chip, read from its fault-map file (every run is that chip).

``rram validate`` (campaigns and ``--fault-map``), ``rram sensitivity`` and ``rram calibrate`` take
their chips from here, each with its device non-idealities (``variation``) when given. A source
is small and picklable: Ray workers get it with each chip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .artifact.crossbar_map import CrossbarMap
from .faults import Chip, check_rates, layer_indices, measured_seed, run_seed, sample_chip


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
    nonideal: object | None = None  # variation.Nonideal, drawn from the run's seed in streams of its own

    def __post_init__(self):
        check_rates(self.sa1, self.sa0)

    @classmethod
    def of(cls, cmap: CrossbarMap, sa1: float, sa0: float, seed: int,
           faulty_layers: list[int] | None = None, nonideal=None) -> RandomChips:
        return cls(cmap.cell_count(), float(sa1), float(sa0), int(seed),
                   None if faulty_layers is None else cell_ranges(cmap, faulty_layers), nonideal)

    def sample(self, run: int) -> Chip:
        seed = run_seed(self.seed, self.sa1, self.sa0, run)
        chip = sample_chip(self.cells, self.sa1, self.sa0, seed)
        if self.faulty is not None:
            codes = np.zeros_like(chip.codes)
            for start, stop in self.faulty:
                codes[start:stop] = chip.codes[start:stop]
            chip = Chip(codes)
        if self.nonideal is not None:  # programming variation and read noise: the run's own streams
            chip.nonideal, chip.seed = self.nonideal, seed
        return chip


class PlacedChips:
    """``RandomChips`` placed, each with its own faults, before it is evaluated (``--place``:
    ``placement``): the chip's spare rows drawn from their own stream of the run's seed, the
    logical rows of every tile and each column's orientation chosen to minimise the deployed
    weights' error. The record gains the relative squared weight error of the fixed mapping and of
    the placement (``weight_error_fixed``, ``weight_error_placed``)."""

    def __init__(self, cmap: CrossbarMap, base: RandomChips, faulty_layers: list[int] | None = None):
        from .placement import spare_shape

        self.cmap, self.base = cmap, base
        self.sa1, self.sa0, self.seed = base.sa1, base.sa0, base.seed  # as RandomChips (--images auto)
        ranges, start = [], 0  # the spare cells of the layers whose faults are kept
        for i, layer in enumerate(cmap.layers):
            n = int(np.prod(spare_shape(layer, cmap.device)))
            if faulty_layers is None or i in faulty_layers:
                ranges.append((start, start + n))
            start += n
        self.spare_faulty = None if faulty_layers is None else tuple(ranges)

    def sample(self, run: int) -> Chip:
        from .placement import PhysicalChip, place_chip, placed_codes, sample_spares

        spare = sample_spares(self.cmap, self.sa1, self.sa0, self.seed, run)
        if self.spare_faulty is not None:
            kept = np.zeros_like(spare)
            for start, stop in self.spare_faulty:
                kept[start:stop] = spare[start:stop]
            spare = kept
        base = self.base.sample(run)
        physical = PhysicalChip(base, spare)
        placement = place_chip(self.cmap, physical)
        chip = placed_codes(self.cmap, physical, placement)
        chip.info = placement.errors()
        # placed on its faults alone; the variation is drawn per logical cell (independent cells:
        # the same distribution as per physical cell)
        chip.nonideal, chip.seed = base.nonideal, base.seed
        return chip


class MeasuredChip:
    """One tested chip: its measured fault map (format in ``faults``; of the used cells, or of
    full tiles with the spare rows), checked against the artifact; ``model``: the model the chip's
    stuck fraction selects (``stats_rate``). ``place``: placed with its own faults; ``placement``:
    as a placement file (``rram place``) places it. Every run is that chip, as the deployment
    computes with it (``chip.info``: what placement records). ``nonideal``: its simulated
    programming variation and read noise (``variation.Nonideal``), drawn from
    ``faults.measured_seed(seed)`` as a campaign's chip draws them from its run's seed (the stuck
    cells of the map keep their levels; placed chips are varied per logical cell, as
    ``PlacedChips``); the chip is programmed once: every run is the same draw."""

    def __init__(self, path: str | os.PathLike, artifact, stats_rate="auto", *, place: bool = False,
                 placement: str | os.PathLike | None = None, nonideal=None, seed: int = 0):
        from .placement_file import measured_chip

        self.path = Path(path)
        self.model, self.chip = measured_chip(artifact, self.path, stats_rate, place=place, placement=placement)
        if nonideal is not None:
            self.chip.nonideal, self.chip.seed = nonideal, measured_seed(seed)

    def sample(self, run: int = 0) -> Chip:
        return self.chip


def protected_layers(cmap: CrossbarMap, protect: list[str] | None) -> list[int] | None:
    """--protect NAME,...: the indices of the layers whose faults are kept (None: all)."""
    if not protect:
        return None
    protected = layer_indices(cmap, list(protect))
    return [i for i in range(len(cmap.layers)) if i not in protected]

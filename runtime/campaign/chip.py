"""One simulated chip of a campaign: ``measure_chip``, the per-chip function every executor runs
(this process, or Ray workers), and the --images auto sizing of each chip's image subset."""
from __future__ import annotations

import time

import numpy as np

from ..chips import ChipSource
from ..subsets import between_chip_sd, chip_ran, chip_subset, choose_size, optimal_size


def measure_chip(engine, cmap, chips: ChipSource, r: int, model: str, clean: float,
                 subset_size: int | None = None, images: int = 0) -> tuple[dict, bool]:
    """Run r of ``chips`` evaluated with ``model``: its results record, and whether it ran (False:
    no stuck cell, ``clean`` reused). ``subset_size`` (--images auto): evaluated on its own random
    subset of that many of the split's ``images``, drawn like the chip (``subsets.chip_subset``)."""
    t_chip = time.perf_counter()
    chip = chips.sample(r)
    # a chip without stuck cells (and without variation or read noise) computes with the clean
    # weights: its accuracy is known
    ran = bool(chip.codes.any()) or chip.noisy
    record = {}
    if subset_size is not None:  # --images auto: this chip's own images, and what it cost
        subset = chip_subset(chips.seed, chips.sa1, chips.sa0, r, subset_size, images)
        if ran:
            acc, _, eval_seconds = engine(model).timed_chip_accuracy(chip, subset)
            record["_costs"] = (time.perf_counter() - t_chip - eval_seconds, eval_seconds, len(subset))
        else:
            acc = clean
        record["images"] = len(subset) if ran else images  # a reused fault-free chip: all
    else:
        acc = engine(model).chip_accuracy(chip) if ran else clean
    return {"accuracy": acc, "stuck_fraction": chip.stuck_fraction, "sa1_fraction": chip.sa1_fraction,
            "sa0_fraction": chip.sa0_fraction, **(chip.info or {}), **record}, ran


def clean_accuracy(engine, cmap, model: str) -> float:
    return engine(model).clean_accuracy()


# ------------------------------------------------------------------ --images auto

class Costs:
    """Seconds this process spent per chip (sampling, weights, calibration, session) and per image
    (evaluation), over the chips it ran: what ``subset_size`` weighs."""

    def __init__(self):
        self.chips = self.images = 0
        self.chip_seconds = self.image_seconds = 0.0

    def add(self, chip_seconds: float, image_seconds: float, images: int) -> None:
        self.chips += 1
        self.images += images
        self.chip_seconds += chip_seconds
        self.image_seconds += image_seconds


def subset_size(entry: dict, r: int, config: dict, costs: Costs) -> tuple[int, dict | None]:
    """How many images run ``r`` of this rate is evaluated on (--images auto), and the rate's size
    record when it is chosen now (None otherwise). The first ``min_runs`` runs (the pilot):
    ``pilot``. Every later run: one size per rate, chosen once from the pilot runs (mean accuracy
    p, between-chip sd corrected for image sampling) and the costs this process measured
    (``subsets.choose_size``), recorded in ``entry["images_auto"]``, so a resume reuses it instead
    of re-timing (timings differ between machines; the size must not)."""
    auto, pilot_runs = config["images_auto"], config["min_runs"]
    if r < pilot_runs:
        return auto["pilot"], None
    if "images_auto" in entry:
        return entry["images_auto"]["size"], None
    later = [v["images"] for k, v in entry["runs"].items() if int(k) >= pilot_runs and chip_ran(v, config)]
    pilot = [entry["runs"][str(k)] for k in range(pilot_runs)]
    accs, sizes = [v["accuracy"] for v in pilot], [v["images"] for v in pilot]
    p, sd = float(np.mean(accs)), between_chip_sd(accs, sizes, config["images"])
    record = {"pilot_chips": pilot_runs, "p": p, "sd_between": sd}
    if later:  # a file whose record was lost (e.g. merged): the size its runs used
        record["size"] = later[0]
    elif costs.chips:
        chip_s, image_s = costs.chip_seconds / costs.chips, costs.image_seconds / costs.images
        n_opt = optimal_size(p, sd, chip_s, image_s)
        record.update(chip_seconds=chip_s, image_seconds=image_s,
                      optimal=None if not np.isfinite(n_opt) else n_opt,
                      size=choose_size(p, sd, chip_s, image_s, config["images"], auto["min"]))
    else:  # no chip ran here (all fault-free: their accuracy is known, no image is evaluated)
        record["size"] = auto["pilot"]
    return record["size"], record

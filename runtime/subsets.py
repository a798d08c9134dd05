"""Per-chip random image subsets (``rram validate --ci POINTS --images auto``, issue 15).

Each chip is evaluated on its own uniform random subset of the split (drawn without
replacement), so a chip's accuracy is an unbiased estimate of its accuracy on the whole split and
the mean over chips is unbiased for the whole-split campaign mean. Fewer images per chip buy more
chips for the same time; how many is chosen once per rate from the pilot chips (``choose_size``).

Reproducible like the chips themselves: the subset of run r at rates (p1, p0) is drawn from
(seed, p1, p0, r) only (the chip's ``run_seed`` entropy in its own stream, ``_STREAM``), as the
first n of one fixed permutation of the split, so it depends neither on how many runs came
before nor on how the work was split, and a larger n extends a smaller one. Imports only numpy at
load time (``results.py`` summarises with it and stays free of onnx).
"""
from __future__ import annotations

import math

import numpy as np

_STREAM = 0x1AA6E5  # the subset stream, distinct from the chip's (no spawn key) and --calibrate's

PILOT_IMAGES = 1000  # images per chip of the first --min-runs chips of a rate (the pilot)
MIN_IMAGES = 100     # the smallest subset the rule chooses (below it one image moves a chip by > 1 point)


def subset_seed(seed: int, p1: float, p0: float, run: int) -> np.random.SeedSequence:
    """The seed of run ``run``'s image subset: the entropy of ``faults.run_seed`` (seed, rates,
    run) in a stream of its own, so the subset and the chip are independent draws."""
    from .faults import run_seed  # here: faults loads onnx, and results.py imports this module

    return np.random.SeedSequence(run_seed(seed, p1, p0, run).entropy, spawn_key=(_STREAM,))


def chip_subset(seed: int, p1: float, p0: float, run: int, n: int, total: int) -> np.ndarray:
    """The indices (sorted, distinct) of the ``n`` of ``total`` images run ``run`` is evaluated on:
    the first n of a permutation drawn from ``subset_seed`` alone."""
    if not 1 <= int(n) <= int(total):
        raise ValueError(f"subset of {n} images out of {total}")
    rng = np.random.Generator(np.random.PCG64(subset_seed(seed, p1, p0, run)))
    return np.sort(rng.permutation(int(total))[:int(n)])


def sampling_variance(acc, n, total: int) -> np.ndarray:
    """Unbiased estimate of the image-sampling variance of a chip's subset accuracy ``acc`` on
    ``n`` of ``total`` images drawn without replacement: acc(1-acc)/(n-1) * (1 - n/total) (the
    finite population correction; 0 when the chip saw the whole split)."""
    acc, n = np.asarray(acc, np.float64), np.asarray(n, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = acc * (1 - acc) / (n - 1) * (1 - n / total)
    return np.where(n >= total, 0.0, v)


def between_chip_variance(accs, sizes, total: int) -> float:
    """The variance of the chips' whole-split accuracies, estimated from subset accuracies:
    the sample variance of the observed accuracies (which holds both) less the mean estimated
    image-sampling variance. Unbiased, so it can come out negative: ``between_chip_sd`` floors it."""
    a = np.asarray(accs, np.float64)
    if len(a) < 2:
        return 0.0
    return float(a.var(ddof=1) - sampling_variance(a, sizes, total).mean())


def between_chip_sd(accs, sizes, total: int) -> float:
    return math.sqrt(max(0.0, between_chip_variance(accs, sizes, total)))


def _grid(lo: int, hi: int) -> list[int]:
    """The sizes the rule may choose: lo, hi and the 1-2-5 series between them."""
    sizes = {lo, hi}
    decade = 1
    while decade <= hi:
        sizes.update(m * decade for m in (1, 2, 5) if lo < m * decade < hi)
        decade *= 10
    return sorted(sizes)


def optimal_size(p: float, sd_between: float, chip_seconds: float, image_seconds: float) -> float:
    """n* = sqrt(p(1-p) C / (sd^2 c)): the images per chip that minimise the time to a given
    CI width when a chip costs C + n c seconds and the mean's variance is (sd^2 + p(1-p)/n) / chips.
    Infinite when chips do not differ (then every image goes to one chip's worth of precision)."""
    if sd_between <= 0 or image_seconds <= 0:
        return math.inf
    return math.sqrt(p * (1 - p) * max(chip_seconds, 0.0) / (sd_between ** 2 * image_seconds))


def choose_size(p: float, sd_between: float, chip_seconds: float, image_seconds: float,
                total: int, lo: int = MIN_IMAGES) -> int:
    """``optimal_size`` clamped to [lo, total] and rounded (in log) to the nearest of lo, total and
    the 1-2-5 series between: the total time is flat near n* (within 5% from n*/1.6 to 1.6 n*),
    and a coarse grid makes two machines with slightly different timings choose the same size."""
    lo = min(int(lo), int(total))
    n = min(max(optimal_size(p, sd_between, chip_seconds, image_seconds), lo), total)
    return min(_grid(lo, int(total)), key=lambda g: (abs(math.log(g / n)), g))


def chip_ran(run: dict, config: dict) -> bool:
    """Whether a run's chip was evaluated rather than given the clean accuracy: it has a stuck
    cell, or the campaign's chips have programming variation or read noise (then every chip runs,
    on its own subset with --images auto; ``config``: the results file's)."""
    nonideal = config.get("nonideal") or {}
    return run["stuck_fraction"] > 0 or nonideal.get("programming_sigma", 0) > 0 or nonideal.get("read_sigma", 0) > 0


def summary_fields(runs: list[dict], total: int, config: dict | None = None) -> dict:
    """What a rate's summary adds with --images auto: the between-chip sd corrected for image
    sampling, the images evaluated (chips that ran: ``chip_ran``), the smallest subset, and the
    noise note."""
    if not runs:
        return {}
    accs = [v["accuracy"] for v in runs]
    sizes = [v.get("images", total) for v in runs]
    out = {"sd_between": between_chip_sd(accs, sizes, total),
           "images_evaluated": int(sum(s for s, v in zip(sizes, runs) if chip_ran(v, config or {}))),
           "images_min": int(min(sizes))}
    if min(sizes) < total:
        worst = float(np.sqrt(sampling_variance(0.5, min(sizes), total)))
        out["note"] = (f"per-chip accuracies are on random subsets of as few as {min(sizes)} of the {total} images: "
                       f"min, max and std carry image-sampling noise (sd up to {100 * worst:.1f} points); "
                       f"sd_between is the chips' spread with that noise removed")
    return out

"""Monte-Carlo validation campaigns: for each fault rate, ``runs`` simulated chips, the same
images on each; results appended run by run to a JSON file (write-then-rename; format in
``results.py``), resumable, shardable and mergeable. Run r at rates (p1, p0) always uses the chip
drawn from ``faults.run_seed(seed, p1, p0, r)``, so the numbers do not depend on how the work is
split, nor on who runs it: this process (``LocalExecutor``) or Ray workers (``ray_executor``), both
running ``measure_chip``.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import Artifact, check_stats_rate
from .engine import Engine
from .errors import RuntimeInputError
from .faults import check_rates, layer_indices, load_fault_map, run_seed, sample_chip, with_faults_only_in
from .fileio import file_sha256, output_lock
from .metadata import NORMALIZATION_EMBEDDED_KEY, NORMALIZATION_KEY, normalize_images
from .results import (
    FORMAT,
    VERSION,
    images_digest,
    precise_enough,
    read_results,
    refresh,
    write_results,
)
from .subsets import MIN_IMAGES, PILOT_IMAGES, between_chip_sd, chip_subset, choose_size, optimal_size


def _jobs(n_rates: int, runs: int, shard: tuple[int, int]) -> range:
    """This shard's jobs j (rate i, run r = divmod(j, runs)), in campaign order: every n-th of
    the rates x runs, from the k-th. A range, not a list: --runs 1000000000 must not build the
    job list (it ended in MemoryError before the first chip)."""
    k, n = shard
    return range(k - 1, n_rates * runs, n)


def _progress_seconds(default: float = 10.0) -> float:
    try:
        value = float(os.environ.get("RRAM_PROGRESS_SECONDS", default))
    except ValueError:  # a typo in the environment is no reason to stop a campaign
        return default
    return value if value >= 0 else default


PROGRESS_SECONDS = _progress_seconds()  # between progress lines when stderr is not a terminal


class _Progress:
    """tqdm's bar (with a total, so an ETA) on a terminal; elsewhere (batch jobs, logs) a line
    on stderr every ``PROGRESS_SECONDS``: chips done/total, elapsed, ETA."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.total, self.done, self.lines = total, 0, enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="validate", unit="chip", disable=None if enabled else True)
        self.t0 = self.last = time.monotonic()

    def update(self, note: str) -> None:
        self.done += 1
        self.bar.update(1)
        self.bar.set_postfix_str(note, refresh=False)
        now = time.monotonic()
        if self.lines and now - self.last >= PROGRESS_SECONDS:
            self.last = now
            elapsed = now - self.t0
            eta = elapsed / self.done * (self.total - self.done)
            print(f"validate: {self.done}/{self.total} chips, {_hms(elapsed)} elapsed, ETA {_hms(eta)} "
                  f"({note})", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


# ------------------------------------------------------------------ the campaign

def calibrate_config(calibrate: np.ndarray | None) -> dict:
    """How chips were calibrated, for a results file's config (nothing when they were not)."""
    if calibrate is None:
        return {}
    return {"calibrate": int(len(calibrate)), "calibrate_sha256": images_digest(calibrate, np.zeros(0, np.int64))}


def check_normalization(artifact: Artifact) -> None:
    """The models' recorded input normalisation, one for all (what every engine needs)."""
    if artifact.first.normalization is None and NORMALIZATION_EMBEDDED_KEY not in artifact.first.metadata:
        # Guessing (e.g. CIFAR statistics, or none) silently gives a wrong accuracy. A model whose
        # normalisation is in the graph (embed-normalization) takes the images in [0, 1].
        raise RuntimeInputError(f"{artifact.path}: model.onnx records no input normalisation "
                                f"(metadata {NORMALIZATION_KEY}); export it with rram export")
    norms = {m.normalization for m in artifact.models.values()}
    if len(norms) > 1:
        raise RuntimeInputError(f"{artifact.path}: the models use different input normalisations")


def engine_factory(artifact: Artifact, images, labels, engine_kw):
    cache: dict[str, Engine] = {}
    check_normalization(artifact)
    x = normalize_images(images, artifact.first.normalization)

    def get(name: str) -> Engine:
        if name not in cache:
            cache[name] = Engine(artifact.models[name], images, labels, normalized=x, **engine_kw)
        return cache[name]
    return get


def _locking_out(fn):
    """Run ``fn`` holding the lock of its ``out`` results file (``fileio.output_lock``), from
    before the resume check to the last write: two campaigns on one --out once both exited 0
    with only one's results kept."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        out = signature.bind(*args, **kwargs).arguments.get("out")
        with output_lock(out, "rram validate") if out is not None else nullcontext():
            return fn(*args, **kwargs)
    return locked


@_locking_out
def validate(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray, *,
             sa1: list[float], sa0: float = 0.0, runs: int = 100, seed: int = 0,
             stats_rate: str | float = "auto", shard: tuple[int, int] = (1, 1),
             out: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
             engine_kw: dict | None = None, info: dict | None = None, precision: str = "fp32",
             calibration: np.ndarray | None = None, calibrate: np.ndarray | None = None,
             protect: list[str] | None = None, ci: float | None = None, min_runs: int = 10,
             ray: bool | str | None = None, images_auto: bool = False, pilot_images: int = PILOT_IMAGES,
             min_images: int = MIN_IMAGES) -> dict:
    """Sweep the rates; return (and, with ``out``, keep writing) the results document.
    ``calibration``: training images for int8 activation ranges; ``calibrate``: training images on
    which each chip's periphery is calibrated before it is evaluated (then ``clean`` is the
    calibrated fault-free accuracy too); ``protect``: mapped layers (node names) kept fault-free
    (verified crossbars or digital logic), the same cells of the same chips left stuck elsewhere;
    ``ci``: a precision target in percentage points: each rate stops adding chips (in run order)
    once at least ``min_runs`` chips give a 95% CI half-width of the mean of at most ``ci``, with
    ``runs`` as the maximum. The stop depends on every earlier chip of the rate, so it cannot be
    split into shards; resuming continues exactly. ``ray``: run the chips on Ray workers
    (``executor``; True: as ``ray.init()`` connects, or an address); the results are the same run
    for run, written as chips finish; it replaces ``shard``. ``images_auto`` (with ``ci``, without
    ``ray``): each chip is evaluated on its own random subset of ``images``
    (``subsets.chip_subset``): the first ``min_runs`` chips of a rate on ``pilot_images``, the rest
    on a size chosen once from them and the measured costs (``_subset_size``), at least
    ``min_images``, recorded per run."""
    if ray and shard != (1, 1):
        raise RuntimeInputError("Ray replaces shards: run the whole campaign on the cluster (it resumes after "
                                "a kill), or shard without Ray")
    if ray and images_auto:
        raise RuntimeInputError("--images auto sizes the subsets from chips timed one after another in this "
                                "process: run it without --ray (or give --images N)")
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    if not sa1:
        raise RuntimeInputError("no fault rates given")
    for p in sa1:
        check_rates(p, sa0)
    if len(set(sa1)) != len(sa1):
        raise RuntimeInputError(f"repeated SA1 rate in {sa1}")
    if not isinstance(runs, int) or runs < 1:
        raise RuntimeInputError(f"runs must be at least 1, got {runs}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RuntimeInputError(f"seed must be a non-negative integer, got {seed}")
    stats_rate = check_stats_rate(stats_rate)
    selected = [artifact.select(p + sa0, stats_rate) for p in sa1]
    config = {
        "models": {n: {"sha256": m.sha256, "bn_rate": m.bn_rate} for n, m in artifact.models.items()},
        "device": artifact.first.cmap.device.to_dict(),
        "cells": artifact.first.cmap.cell_count(),
        "sa1": [float(p) for p in sa1], "sa0": float(sa0), "runs": runs, "seed": int(seed),
        "images": int(len(labels)), "images_sha256": images_digest(images, labels),
        "stats_rate": stats_rate, "precision": precision,
    }
    if precision == "int8":
        if calibration is None:
            raise RuntimeInputError("--precision int8 needs calibration images")
        config["calibration_sha256"] = images_digest(calibration, np.zeros(0, np.int64))
    config.update(calibrate_config(calibrate))  # part of every run: it belongs to the identity
    if ci is not None:
        if not (isinstance(ci, (int, float)) and ci > 0):
            raise RuntimeInputError(f"ci must be a positive number of percentage points, got {ci}")
        if not isinstance(min_runs, int) or not min_runs >= 2:
            raise RuntimeInputError(f"min runs must be at least 2, got {min_runs}")
        if shard != (1, 1):
            raise RuntimeInputError("a precision target (--ci) stops each rate on all its earlier chips, so it "
                                    "cannot be sharded: run it whole (it resumes after a kill)")
        config["ci"], config["min_runs"] = float(ci), int(min_runs)
    if images_auto:
        config["images_auto"] = _check_images_auto(artifact, images, ci, pilot_images, min_images)
    cmap = artifact.first.cmap
    kept_faulty = None
    if protect:
        protected = layer_indices(cmap, list(protect))
        kept_faulty = [i for i in range(len(cmap.layers)) if i not in protected]
        config["protect"] = [cmap.layers[i].node for i in protected]
        config["protected_cells"] = sum(cmap.layers[i].levels.size for i in protected) / max(1, cmap.cell_count())
    out = Path(out) if out is not None else None
    doc = None
    if out is not None and out.exists():
        if not resume:
            raise RuntimeInputError(f"{out} exists: pass --resume to continue it, or choose another --out")
        doc = read_results(out)
        _check_same(doc, config, list(shard), out)
    if doc is None:
        doc = {"format": FORMAT, "version": VERSION, "config": config,
               "shard": None if shard == (1, 1) else list(shard), "clean": {},
               "rates": [{"sa1": float(p), "sa0": float(sa0), "model": m, "runs": {}} for p, m in zip(sa1, selected)],
               "timing": {}, "complete": False, "info": {"artifact": str(artifact.path), **(info or {})}}
    engine_kw = {**(engine_kw or {}), "precision": precision, "calibration": calibration, "calibrate": calibrate}
    plan = ChipPlan(artifact.first.cmap.cell_count(), float(sa0), int(seed),
                    None if kept_faulty is None else tuple(kept_faulty), len(labels))
    jobs = _jobs(len(sa1), runs, shard)
    k, n = shard
    already = sum(1 for i, e in enumerate(doc["rates"]) for key in e["runs"] if (i * runs + int(key)) % n == k - 1)
    with executor(ray, artifact, images, labels, engine_kw) as chips:
        for name in sorted(set(selected)):
            if name not in doc["clean"]:
                doc["clean"][name] = chips.call(clean_accuracy, name)
        refresh(doc)
        if out is not None:
            write_results(doc, out)

        t0 = time.perf_counter()
        progress_ = _Progress(len(jobs) - already, progress)
        done = ran = 0
        costs = _Costs()  # --images auto: what this process measured per chip and per image

        def until_precise():
            """Jobs in order, each rate left as soon as it reaches the precision target (its summary
            is refreshed after every chip)."""
            for i in range(len(sa1)):
                for r in range(runs):
                    if precise_enough(doc["rates"][i]["summary"], config):
                        break
                    yield i * runs + r

        def tasks():
            """The chips still to run, generated lazily (--runs 1000000000; --ci's stop)."""
            for j in (jobs if ci is None else until_precise()):
                i, r = divmod(j, runs)
                entry = doc["rates"][i]
                if str(r) in entry["runs"]:  # resumed
                    continue
                size = _subset_size(entry, r, config, costs) if images_auto else None
                yield (i, r), i, measure_chip, (plan, entry["sa1"], r, entry["model"], doc["clean"][entry["model"]],
                                                size)

        def finished(key, result):
            nonlocal done, ran
            (i, r), (record, was_run) = key, result
            entry = doc["rates"][i]
            ran += was_run
            done += 1
            chip_costs = record.pop("_costs", None)
            if chip_costs is not None:
                costs.add(*chip_costs)
            entry["runs"][str(r)] = record
            seconds = time.perf_counter() - t0
            # only the chips that ran count for the speed: fault-free ones are reused, not run
            doc["timing"] = {"runs": done, "ran": ran, "reused": done - ran, "seconds": round(seconds, 3),
                             "runs_per_second": ran / seconds if seconds else None,
                             "images_per_second": ran * len(labels) / seconds if seconds else None}
            if images_auto:  # chips ran on subsets: count the images they really evaluated
                doc["timing"].update(images=costs.images, images_per_second=costs.images / seconds if seconds else None)
            refresh(doc)
            if out is not None:
                write_results(doc, out)
            accs = [v["accuracy"] for v in entry["runs"].values()]
            progress_.update(f"sa1={entry['sa1']:g} mean={100 * float(np.mean(accs)):.2f}%")

        # With --ci a rate's chips count in run order only (the stop depends on every earlier one):
        # a parallel executor delivers each rate's results in order and drops those past the stop.
        chips.run(tasks(), finished, in_order=ci is not None,
                  dropped=lambda key: ci is not None and precise_enough(doc["rates"][key[0]]["summary"], config))
        progress_.close()
    return doc


# ------------------------------------------------------------------ one simulated chip

@dataclass(frozen=True)
class ChipPlan:
    """How run r at an SA1 rate becomes a chip: everything the per-chip work needs but the
    engine. Small and picklable: Ray workers (runtime/ray_executor.py) get it with each chip."""
    cells: int
    sa0: float
    seed: int
    kept_faulty: tuple[int, ...] | None = None  # --protect: the layers whose faults stay
    images: int = 0  # the split's size (--images auto draws each chip's subset from it)


def measure_chip(engine, cmap, plan: ChipPlan, p1: float, r: int, model: str, clean: float,
                 subset_size: int | None = None) -> tuple[dict, bool]:
    """Run r at SA1 rate p1 (the chip ``faults.run_seed(seed, p1, sa0, r)`` draws) evaluated with
    ``model``: its results record, and whether it ran (False: no stuck cell, ``clean`` reused).
    The one per-chip function of every executor (this process, or Ray workers)."""
    t_chip = time.perf_counter()
    chip = sample_chip(plan.cells, p1, plan.sa0, run_seed(plan.seed, p1, plan.sa0, r))
    if plan.kept_faulty is not None:
        chip = with_faults_only_in(cmap, chip, list(plan.kept_faulty))
    # a chip without stuck cells computes with the clean weights: its accuracy is known
    ran = bool(chip.codes.any())
    record = {}
    if subset_size is not None:  # --images auto: this chip's own images, and what it cost
        subset = chip_subset(plan.seed, p1, plan.sa0, r, subset_size, plan.images)
        if ran:
            acc, _, eval_seconds = engine(model).timed_chip_accuracy(chip, subset)
            record["_costs"] = (time.perf_counter() - t_chip - eval_seconds, eval_seconds, len(subset))
        else:
            acc = clean
        record["images"] = len(subset) if ran else plan.images  # a reused fault-free chip: all
    else:
        acc = engine(model).chip_accuracy(chip) if ran else clean
    return {"accuracy": acc, "stuck_fraction": chip.stuck_fraction, "sa1_fraction": chip.sa1_fraction,
            "sa0_fraction": chip.sa0_fraction, **record}, ran


def clean_accuracy(engine, cmap, model: str) -> float:
    return engine(model).clean_accuracy()


# ------------------------------------------------------------------ executors

class LocalExecutor:
    """Runs tasks ``fn(engine, cmap, *args)`` one after the other in this process, pulling each
    from the (lazy) task iterator only when the previous one is recorded. The interface
    ``ray_executor.RayExecutor`` shares: ``call`` (one task, its result), ``run`` (tasks
    ``(key, group, fn, args)``, each result handed to ``finished(key, result)``)."""

    def __init__(self, artifact: Artifact, images, labels, engine_kw: dict):
        self.engine = engine_factory(artifact, images, labels, engine_kw)
        self.cmap = artifact.first.cmap

    def call(self, fn, *args):
        return fn(self.engine, self.cmap, *args)

    def run(self, tasks, finished, *, in_order: bool = False, dropped=None) -> None:
        # one at a time, in order: nothing runs past a stop (in_order, dropped: parallel executors)
        for key, _group, fn, args in tasks:
            finished(key, fn(self.engine, self.cmap, *args))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def executor(ray: bool | str | None, artifact: Artifact, images, labels, engine_kw: dict):
    """This process (``ray`` false), or Ray workers: ``True`` connects as ``ray.init()`` does
    (RAY_ADDRESS, else the cluster `ray start` began on this machine, else a new local instance),
    a string is the cluster's address (``"auto"``, ``"local"``, ``"host:port"``, ``"ray://..."``)."""
    if not ray:
        return LocalExecutor(artifact, images, labels, engine_kw)
    from .ray_executor import RayExecutor

    check_normalization(artifact)  # before starting Ray: the workers would only fail later
    return RayExecutor(None if ray is True else str(ray), artifact, images, labels, engine_kw)


# ------------------------------------------------------------------ --images auto

class _Costs:
    """Seconds this process spent per chip (sampling, weights, calibration, session) and per image
    (evaluation), over the chips it ran: what ``_subset_size`` weighs."""

    def __init__(self):
        self.chips = self.images = 0
        self.chip_seconds = self.image_seconds = 0.0

    def add(self, chip_seconds: float, image_seconds: float, images: int) -> None:
        self.chips += 1
        self.images += images
        self.chip_seconds += chip_seconds
        self.image_seconds += image_seconds


def _check_images_auto(artifact: Artifact, images: np.ndarray, ci, pilot_images, min_images) -> dict:
    """The --images auto part of the config (pilot and smallest size, clamped to the split)."""
    if ci is None:
        raise RuntimeInputError("--images auto sizes each chip's image subset for a precision target: give --ci "
                                "POINTS too")
    for what, v in (("pilot images", pilot_images), ("min images", min_images)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 2:
            raise RuntimeInputError(f"--images auto: {what} must be an integer of at least 2, got {v}")
    for name, m in artifact.models.items():
        if m.fixed_batch(images.shape) is not None:
            raise RuntimeInputError(f"--images auto evaluates each chip on a different number of images, and the "
                                    f"model {name} fixes its batch size: give --images N instead")
    total = len(images)
    return {"pilot": int(min(pilot_images, total)), "min": int(min(min_images, total))}


def _subset_size(entry: dict, r: int, config: dict, costs: _Costs) -> int:
    """How many images run ``r`` of this rate is evaluated on (--images auto). The first
    ``min_runs`` runs (the pilot): ``pilot``. Every later run: one size per rate, chosen once from
    the pilot runs (mean accuracy p, between-chip sd corrected for image sampling) and the costs
    this process measured (``subsets.choose_size``), and recorded in ``entry["images_auto"]``, so
    a resume reuses it instead of re-timing (timings differ between machines; the size must not)."""
    auto, pilot_runs = config["images_auto"], config["min_runs"]
    if r < pilot_runs:
        return auto["pilot"]
    if "images_auto" not in entry:
        later = [v["images"] for k, v in entry["runs"].items() if int(k) >= pilot_runs and v["stuck_fraction"] > 0]
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
        entry["images_auto"] = record
    return entry["images_auto"]["size"]


def _check_same(doc: dict, config: dict, shard, path) -> None:
    if doc.get("config") != json.loads(json.dumps(config)):
        diff = sorted(k for k in set(config) | set(doc.get("config", {}))
                      if doc.get("config", {}).get(k) != json.loads(json.dumps(config)).get(k))
        raise RuntimeInputError(f"{path} holds results of a different configuration (differs in "
                                f"{', '.join(diff)}); choose another --out")
    if (doc.get("shard") or [1, 1]) != list(shard):
        raise RuntimeInputError(f"{path} holds shard {doc.get('shard')}, not {list(shard)}")


# ------------------------------------------------------------------ one measured chip

def validate_fault_map(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                       fault_map: str | os.PathLike, *, stats_rate: str | float = "auto",
                       engine_kw: dict | None = None, info: dict | None = None,
                       calibrate: np.ndarray | None = None, chip_calibration: str | os.PathLike | None = None) -> dict:
    """Accuracy of the deployed model on one tested chip (a measured fault-map file); with
    ``calibrate``, after calibrating the chip's periphery on those training images; with
    ``chip_calibration``, with the periphery parameters `rram calibrate` wrote for this chip."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    chip = load_fault_map(fault_map, artifact.first.cmap)
    name = artifact.select(chip.stuck_fraction, check_stats_rate(stats_rate))
    periphery = None
    if chip_calibration is not None:
        from .calibration import read_chip_calibration

        periphery = read_chip_calibration(chip_calibration, model_sha256=artifact.models[name].sha256,
                                          fault_map_sha256=file_sha256(fault_map))
    engine = engine_factory(artifact, images, labels, {**(engine_kw or {}), "calibrate": calibrate})(name)
    chip_engine = engine if periphery is None else engine_factory(
        artifact, images, labels, {**(engine_kw or {}), "periphery": periphery})(name)
    return {"format": FORMAT + "-chip", "version": VERSION,
            "config": {"artifact": str(artifact.path), "model": name,
                       "model_sha256": artifact.models[name].sha256,
                       "device": artifact.first.cmap.device.to_dict(), "fault_map": str(fault_map),
                       "fault_map_sha256": file_sha256(fault_map), "images": int(len(labels)),
                       "images_sha256": images_digest(images, labels),
                       "precision": (engine_kw or {}).get("precision", "fp32"),
                       **calibrate_config(calibrate),
                       **({} if chip_calibration is None else {"chip_calibration": file_sha256(chip_calibration)})},
            "clean": engine.clean_accuracy(),
            "chip": {"accuracy": chip_engine.chip_accuracy(chip), "stuck_fraction": chip.stuck_fraction,
                     "sa1_fraction": chip.sa1_fraction, "sa0_fraction": chip.sa0_fraction},
            "info": info or {}}


def calibrate_fault_map(artifact: Artifact | str | os.PathLike, fault_map: str | os.PathLike,
                        calibrate: np.ndarray, *, stats_rate: str | float = "auto",
                        engine_kw: dict | None = None) -> dict:
    """The periphery parameters of one measured chip (``rram calibrate``): its faulty weights,
    the calibration images, and the resulting per-layer, per-channel digital scale and offset."""
    from .calibration import chip_calibration_doc

    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    chip = load_fault_map(fault_map, artifact.first.cmap)
    name = artifact.select(chip.stuck_fraction, check_stats_rate(stats_rate))
    model = artifact.models[name]
    labels = np.zeros(1, np.int64)  # the engine evaluates nothing here; it only measures the chip
    engine = Engine(model, calibrate[:1], labels, **{**(engine_kw or {}), "calibrate": calibrate})
    affines = engine.calibrator.measure(engine.weights(chip))  # fp32: float weights; int8: crossbar integers
    return chip_calibration_doc(affines, model_sha256=model.sha256, fault_map_sha256=file_sha256(fault_map),
                                calibrate=len(calibrate), precision=engine.precision,
                                calibrate_sha256=images_digest(calibrate, np.zeros(0, np.int64)))

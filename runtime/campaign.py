"""Monte-Carlo validation campaigns: for each fault rate, ``runs`` simulated chips, the same
images on each; results appended run by run to a JSON file (write-then-rename), resumable,
shardable and mergeable. Run r at rates (p1, p0) always uses the chip drawn from
``faults.run_seed(seed, p1, p0, r)``, so the numbers do not depend on how the work is split.

Results file (``format: rram-validate-results``)::

    {"format", "version",
     "config": {models {name: {sha256, bn_rate}}, device, cells, sa1 [...], sa0, runs, seed,
                images, images_sha256, stats_rate, precision[, calibration_sha256]},
                                 # identity (content hashes, not paths): resume/merge compare it
     "shard": [k, n] | null,
     "clean": {model name: fault-free accuracy},
     "rates": [{"sa1", "sa0", "model", "runs": {"<r>": {accuracy, stuck_fraction, sa1_fraction,
                sa0_fraction}}, "summary": {n, mean, std, sem, min, max, ci95}}],
     "timing": {runs, seconds, runs_per_second, images_per_second},   # this process (or sums)
     "complete": bool,
     "info": {artifact path, data path, split}}                      # informative only
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import atomic_write_json, read_json_document
from .engine import MODEL_NAME, DeployedModel, Engine, normalize_images
from .errors import RuntimeInputError
from .faults import check_rates, load_fault_map, run_seed, sample_chip

FORMAT = "rram-validate-results"
VERSION = 1


# ------------------------------------------------------------------ artifacts with several BN rates

@dataclass
class Artifact:
    path: Path
    models: dict[str, DeployedModel]  # name ("." for a plain quantized folder) -> model

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Artifact":
        path = Path(path)
        if not path.is_dir():
            raise RuntimeInputError(f"artifact folder not found: {path}")
        if (path / MODEL_NAME).is_file():
            return cls(path, {".": DeployedModel.load(path)})
        subs = sorted(p for p in path.iterdir() if p.is_dir() and (p / MODEL_NAME).is_file())
        if not subs:
            raise RuntimeInputError(f"{path} is not a quantized artifact: no {MODEL_NAME} in it or its subfolders")
        models = {p.name: DeployedModel.load(p) for p in subs}
        missing = [n for n, m in models.items() if m.bn_rate is None]
        if missing:
            raise RuntimeInputError(f"{path}: with several models each needs rram.bn_rate metadata; "
                                    f"{missing[0]} has none")
        rates = [m.bn_rate for m in models.values()]
        if len(set(rates)) < len(rates):
            raise RuntimeInputError(f"{path}: two models are recalibrated for the same BN rate "
                                    f"({sorted(rates)}); keep one per rate")
        devices = {json.dumps(m.cmap.device.to_dict(), sort_keys=True) for m in models.values()}
        cells = {m.cmap.cell_count() for m in models.values()}
        if len(devices) > 1 or len(cells) > 1:
            raise RuntimeInputError(f"{path}: the models are mapped onto different crossbars")
        return cls(path, models)

    @property
    def first(self) -> DeployedModel:
        return next(iter(self.models.values()))

    def select(self, chip_rate: float, stats_rate: str | float) -> str:
        """The model to run on a chip with this total fault rate: the one recalibrated for the
        nearest rate (``auto``; ties go to the lower rate) or for exactly ``stats_rate``."""
        if len(self.models) == 1:
            name, model = self.first_item()
            if stats_rate != "auto" and model.bn_rate is not None and not math.isclose(model.bn_rate, float(stats_rate)):
                raise RuntimeInputError(f"{self.path} holds statistics for rate {model.bn_rate}, not {stats_rate}")
            return name
        rates = {n: m.bn_rate for n, m in self.models.items()}
        if stats_rate == "auto":
            return min(rates, key=lambda n: (round(abs(rates[n] - chip_rate), 9), rates[n]))
        for n, r in rates.items():
            if math.isclose(r, float(stats_rate), abs_tol=1e-9):
                return n
        raise RuntimeInputError(f"{self.path} has no model for stats rate {stats_rate}; it has "
                                f"{', '.join(str(r) for r in sorted(rates.values()))}")

    def first_item(self):
        return next(iter(self.models.items()))


def parse_stats_rate(text: str | float) -> str | float:
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    try:
        v = float(text)
    except ValueError:
        raise RuntimeInputError(f"--stats-rate must be 'auto' or a rate, got {text!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise RuntimeInputError(f"--stats-rate must be 'auto' or a rate in [0, 1], got {text}")
    return v


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (1, 1)
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise RuntimeInputError(f"--shard must look like k/n (e.g. 2/4), got {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise RuntimeInputError(f"--shard k/n needs 1 <= k <= n, got {text}")
    return (k, n)


# ------------------------------------------------------------------ statistics

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228}


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t critical value: table to 10 degrees of freedom, then the
    Cornish-Fisher expansion around the normal quantile (error < 1e-3)."""
    if df in _T975:
        return _T975[df]
    z, v = 1.959963984540054, float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


def summarize(accs: list[float]) -> dict:
    a = np.asarray(accs, dtype=np.float64)
    n = len(a)
    if n == 0:
        return {"n": 0}
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    sem = std / math.sqrt(n) if n > 1 else 0.0
    half = t_quantile_975(n - 1) * sem if n > 1 else 0.0
    # an accuracy lies in [0, 1]: the t interval is clipped there (it overshoots with few runs)
    return {"n": n, "mean": mean, "std": std, "sem": sem, "min": float(a.min()), "max": float(a.max()),
            "ci95": [max(0.0, mean - half), min(1.0, mean + half)]}


# ------------------------------------------------------------------ results file

def images_digest(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def write_results(doc: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc)


def _is_fraction(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1


def read_results(path: str | os.PathLike) -> dict:
    doc = read_json_document(path, FORMAT, "validate results file")
    try:  # the structure merge, resume and plot rely on
        config = doc["config"]
        assert isinstance(config, dict) and isinstance(doc["rates"], list)
        assert isinstance(config["runs"], int) and config["runs"] >= 1 and isinstance(config["images"], int)
        assert isinstance(config["sa1"], list) and len(config["sa1"]) == len(doc["rates"])
        for p, entry in zip(config["sa1"], doc["rates"]):
            assert isinstance(entry["runs"], dict) and float(entry["sa1"]) == float(p)
            for key, run in entry["runs"].items():
                assert key.isdigit() and int(key) < config["runs"]
                assert _is_fraction(run["accuracy"]) and _is_fraction(run["stuck_fraction"])
        clean = doc.get("clean", {})
        assert isinstance(clean, dict) and all(_is_fraction(v) for v in clean.values())
        assert isinstance(doc.get("timing", {}), dict)
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError):
        raise RuntimeInputError(f"{path}: malformed results file (config, rates[].runs)") from None
    return doc


def _refresh(doc: dict) -> dict:
    """Summaries and completeness recomputed from the runs (so a merge equals an unsharded run)."""
    runs = doc["config"]["runs"]
    complete = True
    for entry in doc["rates"]:
        entry["runs"] = {str(r): entry["runs"][str(r)] for r in sorted(int(k) for k in entry["runs"])}
        entry["summary"] = summarize([v["accuracy"] for v in entry["runs"].values()])
        entry["summary"]["stuck_fraction"] = float(np.mean([v["stuck_fraction"] for v in entry["runs"].values()])) \
            if entry["runs"] else None
        complete &= len(entry["runs"]) == runs
    doc["complete"] = complete
    return doc


def _jobs(n_rates: int, runs: int, shard: tuple[int, int]) -> list[tuple[int, int]]:
    k, n = shard
    all_jobs = [(i, r) for i in range(n_rates) for r in range(runs)]
    return [job for j, job in enumerate(all_jobs) if j % n == k - 1]


# ------------------------------------------------------------------ the campaign

def _engine_factory(artifact: Artifact, images, labels, engine_kw):
    cache: dict[str, Engine] = {}
    if artifact.first.normalization is None:
        # Guessing (e.g. CIFAR statistics, or none) silently gives a wrong accuracy.
        raise RuntimeInputError(f"{artifact.path}: model.onnx records no input normalisation "
                                f"(metadata rram.normalization); export it with rram export")
    x = normalize_images(images, artifact.first.normalization)
    norms = {json.dumps(m.normalization) for m in artifact.models.values()}
    if len(norms) > 1:
        raise RuntimeInputError(f"{artifact.path}: the models use different input normalisations")

    def get(name: str) -> Engine:
        if name not in cache:
            cache[name] = Engine(artifact.models[name], images, labels, normalized=x, **engine_kw)
        return cache[name]
    return get


def validate(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray, *,
             sa1: list[float], sa0: float = 0.0, runs: int = 100, seed: int = 0,
             stats_rate: str | float = "auto", shard: tuple[int, int] = (1, 1),
             out: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
             engine_kw: dict | None = None, info: dict | None = None, precision: str = "fp32",
             calibration: np.ndarray | None = None) -> dict:
    """Sweep the rates; return (and, with ``out``, keep writing) the results document."""
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
    stats_rate = parse_stats_rate(stats_rate)
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
    engine = _engine_factory(artifact, images, labels, {**(engine_kw or {}), "precision": precision,
                                                        "calibration": calibration})

    todo = [(i, r) for i, r in _jobs(len(sa1), runs, shard) if str(r) not in doc["rates"][i]["runs"]]
    for name in sorted(set(selected)):
        if name not in doc["clean"]:
            doc["clean"][name] = engine(name).clean_accuracy()
    _refresh(doc)
    if out is not None:
        write_results(doc, out)

    from tqdm import tqdm

    n_cells = artifact.first.cmap.cell_count()
    t0, done = time.perf_counter(), 0
    bar = tqdm(todo, desc="validate", unit="chip", disable=None if progress else True)
    for i, r in bar:
        entry = doc["rates"][i]
        p1 = entry["sa1"]
        chip = sample_chip(n_cells, p1, sa0, run_seed(seed, p1, sa0, r))
        # a chip without stuck cells computes with the clean weights: its accuracy is known
        acc = doc["clean"][entry["model"]] if not chip.codes.any() else engine(entry["model"]).chip_accuracy(chip)
        entry["runs"][str(r)] = {"accuracy": acc, "stuck_fraction": chip.stuck_fraction,
                                 "sa1_fraction": chip.sa1_fraction, "sa0_fraction": chip.sa0_fraction}
        done += 1
        seconds = time.perf_counter() - t0
        doc["timing"] = {"runs": done, "seconds": round(seconds, 3), "runs_per_second": done / seconds,
                         "images_per_second": done * len(labels) / seconds}
        _refresh(doc)
        if out is not None:
            write_results(doc, out)
        accs = [v["accuracy"] for v in entry["runs"].values()]
        bar.set_postfix_str(f"sa1={p1:g} mean={100 * float(np.mean(accs)):.2f}%")
    bar.close()
    return doc


def _check_same(doc: dict, config: dict, shard, path) -> None:
    if doc.get("config") != json.loads(json.dumps(config)):
        diff = sorted(k for k in set(config) | set(doc.get("config", {}))
                      if doc.get("config", {}).get(k) != json.loads(json.dumps(config)).get(k))
        raise RuntimeInputError(f"{path} holds results of a different configuration (differs in "
                                f"{', '.join(diff)}); choose another --out")
    if (doc.get("shard") or [1, 1]) != list(shard):
        raise RuntimeInputError(f"{path} holds shard {doc.get('shard')}, not {list(shard)}")


def merge(paths: list[str | os.PathLike]) -> dict:
    """Combine results files of one configuration (shards, resumed pieces); duplicated runs must
    agree exactly. Equals the unsharded result, timing aside (summed)."""
    if not paths:
        raise RuntimeInputError("nothing to merge")
    seen: dict = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise RuntimeInputError(f"{p} is given twice (also as {seen[key]})")
        seen[key] = p
    docs = [read_results(p) for p in paths]
    base = docs[0]
    out = {"format": FORMAT, "version": VERSION, "config": base["config"], "shard": None, "clean": {},
           "rates": [{k: e[k] for k in ("sa1", "sa0", "model")} | {"runs": {}} for e in base["rates"]],
           "timing": {}, "complete": False, "info": base.get("info", {})}
    seconds = 0.0
    for path, doc in zip(paths, docs):
        if doc["config"] != base["config"]:
            diff = sorted(k for k in set(doc["config"]) | set(base["config"])
                          if doc["config"].get(k) != base["config"].get(k))
            raise RuntimeInputError(f"{path} is from a different configuration than {paths[0]} "
                                    f"(differs in {', '.join(diff)})")
        for name, acc in doc.get("clean", {}).items():
            if out["clean"].setdefault(name, acc) != acc:
                raise RuntimeInputError(f"{path}: fault-free accuracy of {name} differs from another file")
        for mine, theirs in zip(out["rates"], doc["rates"]):
            for r, v in theirs["runs"].items():
                if mine["runs"].setdefault(r, v) != v:
                    raise RuntimeInputError(f"{path}: run {r} at SA1 {mine['sa1']} differs from another file")
        seconds += doc.get("timing", {}).get("seconds", 0.0)
    # distinct runs over the summed time of all files (a run found in two files counts once)
    runs_done = sum(len(e["runs"]) for e in out["rates"])
    images = base["config"]["images"]
    out["timing"] = {"runs": int(runs_done), "seconds": round(seconds, 3),
                     "runs_per_second": runs_done / seconds if seconds else None,
                     "images_per_second": runs_done * images / seconds if seconds else None}
    out["clean"] = dict(sorted(out["clean"].items()))
    return _refresh(out)


# ------------------------------------------------------------------ one measured chip

def validate_fault_map(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                       fault_map: str | os.PathLike, *, stats_rate: str | float = "auto",
                       engine_kw: dict | None = None, info: dict | None = None) -> dict:
    """Accuracy of the deployed model on one tested chip (a measured fault-map file)."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    chip = load_fault_map(fault_map, artifact.first.cmap)
    name = artifact.select(chip.stuck_fraction, parse_stats_rate(stats_rate))
    engine = _engine_factory(artifact, images, labels, engine_kw or {})(name)
    from .artifact import file_sha256

    return {"format": FORMAT + "-chip", "version": VERSION,
            "config": {"artifact": str(artifact.path), "model": name,
                       "model_sha256": artifact.models[name].sha256,
                       "device": artifact.first.cmap.device.to_dict(), "fault_map": str(fault_map),
                       "fault_map_sha256": file_sha256(fault_map), "images": int(len(labels)),
                       "images_sha256": images_digest(images, labels),
                       "precision": (engine_kw or {}).get("precision", "fp32")},
            "clean": engine.clean_accuracy(),
            "chip": {"accuracy": engine.chip_accuracy(chip), "stuck_fraction": chip.stuck_fraction,
                     "sa1_fraction": chip.sa1_fraction, "sa0_fraction": chip.sa0_fraction},
            "info": info or {}}


def subset_indices(total: int, n: int | None) -> np.ndarray:
    """``n`` images spread evenly over the split (test folders are sorted by class, so the first
    n would cover only a few classes)."""
    if n is None or n >= total:
        return np.arange(total)
    return (np.arange(n, dtype=np.int64) * total) // n

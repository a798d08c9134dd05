"""The results format of validation campaigns: read, write, merge, summarise (statistics).
Imports neither onnx nor onnxruntime, so ``rram plot`` and ``rram merge`` stay light. Every field
is documented in docs/results-format.md.

Results file (``format: rram-validate-results``)::

    {"format", "version",
     "config": {models {name: {sha256, bn_rate}}, device, cells, sa1 [...], sa0, runs, seed,
                images, images_sha256, stats_rate, precision[, calibration_sha256][, ci, min_runs]
                [, images_auto {pilot, min}]},
                                 # identity (content hashes, not paths): resume/merge compare it
     "shard": [k, n] | null,
     "clean": {model name: fault-free accuracy},
     "rates": [{"sa1", "sa0", "model", "runs": {"<r>": {accuracy, stuck_fraction, sa1_fraction,
                sa0_fraction[, images]}}, "summary": {n, mean, std, sem, min, max, ci95[, sd_between,
                images_evaluated, images_min, note]}[, "images_auto": {size, ...}]}],
     "timing": {runs, ran, reused, seconds, runs_per_second, images_per_second},
                                 # this process (or sums); fault-free chips are reused, not run:
                                 # the speeds count only the chips that ran
     "complete": bool,
     "info": {artifact path, data path, split}}                      # informative only
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from .errors import RuntimeInputError
from .fileio import atomic_write_json, read_json_document
from .subsets import summary_fields

FORMAT = "rram-validate-results"
SENSITIVITY_FORMAT = "rram-sensitivity"
VERSION = 1


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
                if "images_auto" in config:  # the subset its accuracy is over
                    assert isinstance(run["images"], int) and 2 <= run["images"] <= config["images"]
        clean = doc.get("clean", {})
        assert isinstance(clean, dict) and all(_is_fraction(v) for v in clean.values())
        assert isinstance(doc.get("timing", {}), dict)
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError):
        raise RuntimeInputError(f"{path}: malformed results file (config, rates[].runs)") from None
    return doc


def precise_enough(summary: dict, config: dict) -> bool:
    """With a precision target (``rram validate --ci POINTS``): at least ``min_runs`` chips and a
    95% CI half-width of the mean of at most POINTS percentage points."""
    target = config.get("ci")
    if target is None or summary.get("n", 0) < config.get("min_runs", 2) or summary["n"] < 2:
        return False
    return 100 * (summary["ci95"][1] - summary["ci95"][0]) / 2 <= target


def refresh(doc: dict) -> dict:
    """Summaries and completeness recomputed from the runs (so a merge equals an unsharded run).
    A rate is complete with all ``runs`` chips, or, with a precision target, once it is reached."""
    runs = doc["config"]["runs"]
    complete = True
    for entry in doc["rates"]:
        entry["runs"] = {str(r): entry["runs"][str(r)] for r in sorted(int(k) for k in entry["runs"])}
        entry["summary"] = summarize([v["accuracy"] for v in entry["runs"].values()])
        entry["summary"]["stuck_fraction"] = float(np.mean([v["stuck_fraction"] for v in entry["runs"].values()])) \
            if entry["runs"] else None
        if "images_auto" in doc["config"]:  # per-chip subsets: the corrected spread, images used, noise note
            entry["summary"].update(summary_fields(list(entry["runs"].values()), doc["config"]["images"]))
        complete &= len(entry["runs"]) == runs or precise_enough(entry["summary"], doc["config"])
    doc["complete"] = complete
    return doc


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
            if "images_auto" in theirs:  # --images auto: the size chosen after the pilot chips, kept
                mine.setdefault("images_auto", theirs["images_auto"])
        seconds += doc.get("timing", {}).get("seconds", 0.0)
    # distinct runs over the summed time of all files (a run found in two files counts once);
    # a chip without stuck cells was reused (its accuracy is the fault-free one), not run
    runs_done = sum(len(e["runs"]) for e in out["rates"])
    ran = sum(1 for e in out["rates"] for v in e["runs"].values() if v["stuck_fraction"] > 0)
    images = base["config"]["images"]
    out["timing"] = {"runs": int(runs_done), "ran": ran, "reused": runs_done - ran, "seconds": round(seconds, 3),
                     "runs_per_second": ran / seconds if seconds else None,
                     "images_per_second": ran * images / seconds if seconds else None}
    if "images_auto" in base["config"]:  # chips ran on subsets of their own sizes
        evaluated = sum(v["images"] for e in out["rates"] for v in e["runs"].values() if v["stuck_fraction"] > 0)
        out["timing"].update(images=evaluated, images_per_second=evaluated / seconds if seconds else None)
    out["clean"] = dict(sorted(out["clean"].items()))
    return refresh(out)


# ------------------------------------------------------------------ sensitivity report (runtime/sensitivity.py)

def read_sensitivity(path: str | os.PathLike) -> dict:
    doc = read_json_document(path, SENSITIVITY_FORMAT, "sensitivity report")
    rates = doc.get("rates")
    if not isinstance(rates, list) or not rates or not all(
            isinstance(r, dict) and isinstance(r.get("layers"), list) and all(
                isinstance(e, dict) and {"name", "drop", "drop_ci95", "cell_share"} <= set(e) for e in r["layers"])
            for r in rates):
        raise RuntimeInputError(f"{path}: malformed sensitivity report")
    return doc


def is_sensitivity(path: str | os.PathLike) -> bool:
    import json

    try:
        with open(path) as fh:
            return json.load(fh).get("format") == SENSITIVITY_FORMAT
    except (OSError, ValueError, AttributeError):
        return False

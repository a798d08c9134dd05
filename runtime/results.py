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
     "info": {artifact path, data path, split, provenance}}          # informative only (provenance.py)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import RuntimeInputError
from .fileio import atomic_write_json, read_json_document
from .subsets import chip_ran, summary_fields

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


def _summary(n: int, mean: float, std: float | None, lo: float, hi: float) -> dict:
    """The summary fields from the moments. One chip has no spread to estimate: its std, sem and
    CI are None (not available), not a zero-width interval."""
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "sem": None, "min": lo, "max": hi, "ci95": None}
    sem = std / math.sqrt(n)
    half = t_quantile_975(n - 1) * sem
    # an accuracy lies in [0, 1]: the t interval is clipped there (it overshoots with few runs)
    return {"n": n, "mean": mean, "std": std, "sem": sem, "min": lo, "max": hi,
            "ci95": [max(0.0, mean - half), min(1.0, mean + half)]}


def summarize(accs: list[float]) -> dict:
    a = np.asarray(accs, dtype=np.float64)
    n = len(a)
    if n == 0:
        return {"n": 0}
    return _summary(n, float(a.mean()), float(a.std(ddof=1)) if n > 1 else None, float(a.min()), float(a.max()))


class RunningStats:
    """``summarize`` kept up to date one accuracy at a time (Welford's update: O(1) per chip, so
    a campaign's bookkeeping does not grow with the chips already in its file). Its mean and std
    can differ from ``summarize``'s in the last bits; the file's summaries are always
    ``summarize``'s (``refresh``), this one only decides a --ci stop and labels progress, and a
    resume rebuilds it from the file's runs in run order, as the straight run added them."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)

    def summary(self) -> dict:
        if not self.n:
            return {"n": 0}
        std = math.sqrt(max(0.0, self.m2 / (self.n - 1))) if self.n > 1 else None
        return _summary(self.n, self.mean, std, self.lo, self.hi)


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


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_run(key, run: dict, config: dict) -> None:
    """One run record as the campaign writes it (AssertionError otherwise)."""
    # "01" or "+1" would be a second spelling of run 1: only the canonical decimal is a key
    assert isinstance(key, str) and key.isdigit() and str(int(key)) == key and int(key) < config["runs"]
    assert isinstance(run, dict) and _is_fraction(run["accuracy"]) and _is_fraction(run["stuck_fraction"])
    for k in ("sa1_fraction", "sa0_fraction"):
        assert k not in run or _is_fraction(run[k])
    if "images_auto" in config:  # the subset its accuracy is over
        assert isinstance(run["images"], int) and 2 <= run["images"] <= config["images"]


def check_version(doc: dict, path, what: str) -> None:
    if doc.get("version") != VERSION:
        raise RuntimeInputError(f"{path}: {what} of version {doc.get('version')!r}; this rram reads version "
                                f"{VERSION}")


def read_results(path: str | os.PathLike, *, journal: bool = True) -> dict:
    """A results file, checked (every number read is of the right type, finite and in range), with
    the chips of its journal (``JOURNAL_SUFFIX``: a campaign still running, or killed) folded in."""
    doc = read_json_document(path, FORMAT, "validate results file")
    check_version(doc, path, "a results file")
    try:  # the structure merge, resume and plot rely on
        config = doc["config"]
        assert isinstance(config, dict) and isinstance(doc["rates"], list)
        assert isinstance(config["runs"], int) and config["runs"] >= 1 and isinstance(config["images"], int)
        assert isinstance(config["sa1"], list) and len(config["sa1"]) == len(doc["rates"])
        assert all(_is_fraction(p) for p in config["sa1"]) and _is_fraction(config.get("sa0", 0.0))
        for p, entry in zip(config["sa1"], doc["rates"]):
            assert isinstance(entry["runs"], dict) and _is_fraction(entry["sa1"]) and entry["sa1"] == p
            for key, run in entry["runs"].items():
                _check_run(key, run, config)
        clean = doc.get("clean", {})
        assert isinstance(clean, dict) and all(_is_fraction(v) for v in clean.values())
        timing = doc.get("timing", {})
        assert isinstance(timing, dict) and all(v is None or _is_number(v) for v in timing.values())
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError):
        raise RuntimeInputError(f"{path}: malformed results file (config, rates[].runs)") from None
    if journal:
        apply_journal(doc, journal_path(path))
    return doc


# ------------------------------------------------------------------ the journal

JOURNAL_SUFFIX = ".journal"
JOURNAL_FORMAT = "rram-validate-journal"


def journal_path(path: str | os.PathLike) -> Path:
    """Beside the results file: the chips finished since its last rewrite, one JSON line each."""
    path = Path(path)
    return path.with_name(path.name + JOURNAL_SUFFIX)


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def apply_journal(doc: dict, path: Path) -> int:
    """Fold the journal's lines into ``doc`` (a no-op without one); how many chips were new. A
    line already in the document must agree with it (the journal is emptied right after each
    rewrite, so a kill between the two leaves such lines); a last line cut short by a kill is
    ignored, any other bad line is an error."""
    if not path.is_file():
        return 0
    lines = path.read_bytes().split(b"\n")
    new = 0
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if n == 0:
                assert item.get("format") == JOURNAL_FORMAT and item.get("version") == VERSION
                if item.get("config_sha256") != config_digest(doc["config"]):
                    raise RuntimeInputError(f"{path} is the journal of another campaign than {path.name[:-8]}: "
                                            f"remove it, or restore its results file")
                continue
            entry = doc["rates"][item["rate"]]
            assert isinstance(item["rate"], int) and item["rate"] >= 0
            if "images_auto" in item:
                assert isinstance(item["images_auto"], dict)
                entry.setdefault("images_auto", item["images_auto"])
                continue
            key, record = str(item["run"]), item["record"]
            _check_run(key, record, doc["config"])
            old = entry["runs"].setdefault(key, record)
            if old != record:
                raise RuntimeInputError(f"{path}: run {key} at SA1 {entry['sa1']} differs from the results file")
            new += old is record
        except RuntimeInputError:
            raise
        except (AssertionError, KeyError, TypeError, ValueError, IndexError, AttributeError):
            if n == len(lines) - 1:  # the line a kill cut short
                break
            raise RuntimeInputError(f"{path}: malformed journal line {n + 1}") from None
    return new


def precise_enough(summary: dict, config: dict) -> bool:
    """With a precision target (``rram validate --ci POINTS``): at least ``min_runs`` chips and a
    95% CI half-width of the mean of at most POINTS percentage points."""
    target = config.get("ci")
    if target is None or summary.get("n", 0) < config.get("min_runs", 2) or summary.get("ci95") is None:
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
            entry["summary"].update(summary_fields(list(entry["runs"].values()), doc["config"]["images"],
                                                   doc["config"]))
        precise = precise_enough(entry["summary"], doc["config"])
        if "ci" in doc["config"] and entry["runs"]:  # all --runs chips may still miss the target: say so
            entry["summary"]["ci_target_met"] = precise
        complete &= len(entry["runs"]) == runs or precise
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
    # a chip without stuck cells (nor variation or read noise) was reused (its accuracy is the
    # fault-free one), not run
    runs_done = sum(len(e["runs"]) for e in out["rates"])
    ran = sum(1 for e in out["rates"] for v in e["runs"].values() if chip_ran(v, base["config"]))
    images = base["config"]["images"]
    out["timing"] = {"runs": int(runs_done), "ran": ran, "reused": runs_done - ran, "seconds": round(seconds, 3),
                     "runs_per_second": ran / seconds if seconds else None,
                     "images_per_second": ran * images / seconds if seconds else None}
    if "images_auto" in base["config"]:  # chips ran on subsets of their own sizes
        evaluated = sum(v["images"] for e in out["rates"] for v in e["runs"].values() if chip_ran(v, base["config"]))
        out["timing"].update(images=evaluated, images_per_second=evaluated / seconds if seconds else None)
    out["clean"] = dict(sorted(out["clean"].items()))
    return refresh(out)


# ------------------------------------------------------------------ sensitivity report (runtime/sensitivity.py)

def read_sensitivity(path: str | os.PathLike) -> dict:
    doc = read_json_document(path, SENSITIVITY_FORMAT, "sensitivity report")
    check_version(doc, path, "a sensitivity report")
    rates = doc.get("rates")
    if not isinstance(rates, list) or not rates or not all(
            isinstance(r, dict) and isinstance(r.get("layers"), list) and all(
                isinstance(e, dict) and {"name", "drop", "drop_ci95", "cell_share"} <= set(e) for e in r["layers"])
            for r in rates):
        raise RuntimeInputError(f"{path}: malformed sensitivity report")
    return doc


def is_sensitivity(path: str | os.PathLike) -> bool:
    try:
        with open(path) as fh:
            return json.load(fh).get("format") == SENSITIVITY_FORMAT
    except (OSError, ValueError, AttributeError):
        return False

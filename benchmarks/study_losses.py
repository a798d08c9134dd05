"""The figures docs/RESULTS.md states beside its tables (issue 36), from the committed results files:
each campaign's method (read from its config), the model's plain fault-free accuracy, the losses
against it and against the campaign's own fault-free chips, and the best row per model and method
against the target. Used by benchmarks/study_tables.py (the generated blocks) and
tests/test_results_doc.py (the figures of the prose).

- **Plain fault-free accuracy** of a model: the SA1 0 mean of its campaign with neither per-chip
  calibration nor placement, on the same images (the file of the same stem, ``STEM.json`` or
  ``STEM.fixed-N.json``, whose config has neither ``calibrate`` nor ``place``; on the validation
  split ``STEM.plain.json``, before any other such file).
- **Loss against plain** (the main figure): that accuracy minus the mean at the rate; **against own
  chips**: the campaign's own SA1 0 mean (calibrated and placed like its faulty chips) minus it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TARGET = 1.0  # points lost at most at every SA1 rate, against the plain fault-free accuracy (issue 36)
RATES = (0.1, 0.2, 0.3)  # the target's rates


@cache
def _read(path: Path, mtime: int) -> dict:
    return json.loads(path.read_text())


def read(path: Path) -> dict:
    return _read(path, path.stat().st_mtime_ns)


def means(path: Path) -> dict[float, float]:
    """{SA1 rate: mean accuracy (0-1)} of a results file (SA0-free rates)."""
    return {round(r["sa1"], 6): r["summary"]["mean"] for r in read(path)["rates"] if r.get("sa0", 0) == 0}


def method(path: Path) -> str:
    """What a campaign did to each chip, from its config: calibration to targets measured on the
    fault-free model says so, and so does one artifact chosen out of several (``--bn-rate 0``)."""
    cfg = read(path)["config"]
    measured = " to measured targets" if cfg.get("calibration_targets") == "measured" else ""
    one = cfg.get("stats_rate", "auto")
    artifact = f"rate-{float(one):g} artifact" if len(cfg["models"]) > 1 and one != "auto" else ""
    cal = (f"per-chip calibration{measured} ({cfg['calibrate']} images{', ' + artifact if artifact else ''})"
           if cfg.get("calibrate") else "")
    if cfg.get("place"):
        return "placement" + (f" + {cal}" if cal else f" ({artifact})" if artifact else "")
    if cal:
        return cal
    if artifact:
        return f"BN of the {artifact}"
    return "per-rate BN" if len(cfg["models"]) > 1 else "BN of the fault-free model"


def stem(path: Path) -> str:
    return path.name.split(".")[0]


def plain_file(path: Path) -> Path | None:
    """The campaign of the same model with neither calibration nor placement, on the same images:
    MODEL.plain.json where there is one (the validation split's), else the first such by name, a
    20-chip campaign before its 100-chip run (the same fault-free chip, so the same accuracy)."""
    cfg = read(path)["config"]
    for other in sorted(path.parent.glob(f"{stem(path)}.*json"),
                        key=lambda p: (not p.name.endswith(".plain.json"), ".100-chips." in p.name, p.name)):
        if stem(other) != stem(path):
            continue
        o = read(other)["config"]
        if not o.get("calibrate") and not o.get("place") and o["images_sha256"] == cfg["images_sha256"] \
                and 0.0 in means(other):
            return other
    return None


def plain_accuracy(path: Path) -> float | None:
    plain = plain_file(path)
    return None if plain is None else means(plain)[0.0]


def losses(path: Path) -> tuple[dict[float, float], dict[float, float]]:
    """({rate: loss against plain}, {rate: loss against own fault-free chips}) in points, faulty rates."""
    m, plain = means(path), plain_accuracy(path)
    own = m.get(0.0)
    faulty = [r for r in m if r > 0]
    return ({r: 100 * (plain - m[r]) for r in faulty} if plain is not None else {},
            {r: 100 * (own - m[r]) for r in faulty} if own is not None else {})


def fmt_losses(values: dict[float, float], rates) -> str:
    return " / ".join(f"{values[r]:.2f}" if r in values else "n/a" for r in rates)


@dataclass
class Best:
    path: Path
    plain: dict[float, float]
    own: dict[float, float]

    @property
    def missing(self) -> list[float]:
        """The target's rates without a loss against plain (not run, or no plain campaign)."""
        return [r for r in RATES if r not in self.plain]

    @property
    def worst(self) -> float:
        """The largest loss against plain at the target's rates measured (inf: none)."""
        return max((self.plain[r] for r in RATES if r in self.plain), default=float("inf"))

    @property
    def rank(self) -> tuple:
        """Closer to the target first: more of its rates measured, then the smaller largest loss."""
        return (len(self.missing), self.worst)

    @property
    def met(self) -> str:
        measured = [r for r in RATES if r in self.plain]
        if not measured:
            return "n/a"
        ok = [r for r in measured if self.plain[r] <= TARGET]
        if len(ok) == len(RATES):
            return "yes"
        if not ok:
            return "no"
        return "at " + " and ".join(f"{100 * r:g}%" for r in ok)


def best_per_method(files: list[Path]) -> dict[str, Best]:
    """Per method, the file with the smallest largest loss against plain (ties: the first)."""
    out: dict[str, Best] = {}
    for f in files:
        b = Best(f, *losses(f))
        key = method(f).split(" (")[0]  # without the calibration size
        if key not in out or b.rank < out[key].rank:
            out[key] = b
    return out


def gap(best: Best) -> str:
    """How far a row is from the target, in words."""
    if best.worst == float("inf"):
        return "no loss against a plain fault-free campaign measured"
    over = best.worst - TARGET
    text = (f"{over:.2f} points over the target at its worst rate" if over > 0
            else f"within the target by {-over:.2f} points at its worst rate")
    if best.missing:
        text += " (" + " and ".join(f"{100 * r:g}%" for r in best.missing) + " not measured)"
    return text

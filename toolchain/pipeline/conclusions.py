"""The report's conclusions: per model and method, one sentence computed from the campaign's
numbers (what they say, and how far to trust them), which artifact to deploy, and what to run next
for a trustworthy figure; and the words that explain the fault-free table's columns.

Pure functions of the results documents (``runtime.results``), so that a test can change a number
and see the sentence change (tests/test_report_conclusions.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from runtime.artifact.layout import RATE_PREFIX, rate_folder

# Below these a campaign is a smoke test: it shows the flow works, not what the model does on chips.
MIN_CHIPS = 20  # simulated chips per SA1 rate
MIN_IMAGES = 10_000  # test images per chip (all of CIFAR-10's test split)
TRUST_POINTS = 2.0  # 95% CI half-width (percentage points) a trustworthy mean has at every rate
Z95 = 1.96  # the normal quantile the chips-needed estimate uses (the report's CIs are Student t)


@dataclass(frozen=True)
class Series:
    """One model and method: its label, its variant folder and whether chips were calibrated."""

    label: str
    variant: str
    calibrated: bool
    doc: dict


@dataclass(frozen=True)
class Rate:
    sa1: float
    n: int
    mean: float  # percent
    sd: float | None  # points
    low: float
    high: float
    half: float | None  # 95% CI half-width, points
    bn_rate: str


def rates_of(doc: dict) -> list[Rate]:
    """Each SA1 rate's chip statistics, in percent / points, lowest rate first."""
    out = []
    for e in sorted(doc["rates"], key=lambda e: e["sa1"]):
        s = e["summary"]
        if not s.get("n"):
            continue
        ci = s.get("ci95")
        out.append(Rate(e["sa1"], s["n"], 100 * s["mean"], None if s.get("std") is None else 100 * s["std"],
                        100 * s["min"], 100 * s["max"], None if ci is None else 100 * (ci[1] - ci[0]) / 2,
                        e["model"].removeprefix(RATE_PREFIX)))
    return out


def clean_of(doc: dict) -> float | None:
    """The fault-free accuracy proper (the artifact of the lowest BN rate), percent."""
    clean = doc.get("clean") or {}
    if not clean:
        return None
    key = min(clean, key=lambda k: float(k.removeprefix(RATE_PREFIX)) if k.startswith(RATE_PREFIX) else 0.0)
    return 100 * clean[key]


def _pts(x: float) -> str:
    return f"{x:.2f}"


def _ci(r: Rate) -> str:
    return "no interval (1 chip)" if r.half is None else f"95% CI ±{_pts(r.half)} points"


def chips_needed(sd_points: float, half: float = TRUST_POINTS) -> int:
    """About how many chips give a 95% CI half-width of ``half`` points at this chip-to-chip sd."""
    return max(MIN_CHIPS, math.ceil((Z95 * sd_points / half) ** 2))


def is_smoke_test(chips: int, images: int) -> bool:
    return chips < MIN_CHIPS or images < MIN_IMAGES


def sentence(s: Series, images: int, calibrate: int | None, uncalibrated: Series | None) -> str:
    """What ``s``'s numbers say and how far to trust them, in one sentence (two with calibration's
    effect on the fault-free chip)."""
    rates = rates_of(s.doc)
    faulty = [r for r in rates if r.sa1 > 0]
    clean = clean_of(s.doc)
    method = f"with per-chip calibration on {calibrate} images" if s.calibrated else "with BN re-alignment only"
    if not faulty:
        return f"**{s.label}** ({method}): the campaign holds no faulty chip, so it says nothing about faults yet."
    worst = faulty[-1]
    parts = [f"at SA1 {100 * r.sa1:g}% the mean of {r.n} chips is {r.mean:.2f}% ({_ci(r)}, chips from "
             f"{r.low:.2f}% to {r.high:.2f}%)" for r in faulty]
    text = f"**{s.label}** ({method}): " + "; ".join(parts)
    if clean is not None:
        text += f", {_pts(clean - worst.mean)} points below its fault-free {clean:.2f}% at {100 * worst.sa1:g}%"
    halves = [r.half for r in faulty if r.half is not None]
    chips = min(r.n for r in faulty)
    if is_smoke_test(chips, images):
        text += (f". **A smoke test**: {chips} chips x {images:,} images is below the {MIN_CHIPS} chips x "
                 f"{MIN_IMAGES:,} images this report calls a measurement")
        if halves:
            text += f"; with intervals up to ±{_pts(max(halves))} points, differences smaller than that are noise"
    elif halves and max(halves) > TRUST_POINTS:
        text += (f". The interval reaches ±{_pts(max(halves))} points, wider than the ±{TRUST_POINTS:g} a "
                 f"trustworthy figure has")
    elif halves:
        text += f". Trustworthy to ±{_pts(max(halves))} points (95% CI at every rate)"
    text += "."
    if s.calibrated and uncalibrated is not None:
        text += " " + _calibration_effect(s, uncalibrated, calibrate)
    return text


def _calibration_effect(cal: Series, plain: Series, calibrate: int | None) -> str:
    before = {r.sa1: r for r in rates_of(plain.doc)}
    after = {r.sa1: r for r in rates_of(cal.doc)}
    common = sorted(set(before) & set(after))
    faulty = [p for p in common if p > 0]
    words = []
    if faulty:
        p = faulty[-1]
        gain = after[p].mean - before[p].mean
        words.append(f"Per-chip calibration {'raises' if gain >= 0 else 'lowers'} the mean at SA1 {100 * p:g}% "
                     f"by {_pts(abs(gain))} points")
    if 0.0 in common:
        cost = before[0.0].mean - after[0.0].mean
        if cost > 0:
            words.append(f"costs {_pts(cost)} points on a fault-free chip, where it replaces BN statistics "
                         f"measured on the whole training set by ones re-estimated from only {calibrate} images "
                         f"(their sampling noise is the cost; more --calibrate images shrink it)")
        else:
            words.append("costs nothing on a fault-free chip")
    return (" and ".join(words) + ".") if words else ""


def best(series: list[Series]) -> tuple[Series, Rate, Series | None, Rate | None]:
    """The series with the highest mean at the highest faulty SA1 rate they share, and the runner-up."""
    tops = []
    for s in series:
        faulty = [r for r in rates_of(s.doc) if r.sa1 > 0]
        if faulty:
            tops.append((faulty[-1].sa1, faulty[-1].mean, s, faulty[-1]))
    if not tops:
        return series[0], None, None, None
    rate = min(t[0] for t in tops)  # the highest rate every series has
    at = sorted(((r.mean, s, r) for s in series for r in rates_of(s.doc) if r.sa1 == rate),
                key=lambda t: -t[0])
    first = at[0]
    second = at[1] if len(at) > 1 else (None, None, None)
    return first[1], first[2], second[1], second[2]


def deploy_sentence(series: list[Series], bn_rates: list[str], calibrate: int | None, docs_link: str) -> str:
    s, r, s2, r2 = best(series)
    arts = ", ".join(f"`{s.variant}/art/{rate_folder(b)}/`" for b in bn_rates)
    text = f"**Deploy**: the {s.label.removesuffix(' + per-chip calibration')} artifacts ({arts}; a chip gets " \
           f"the one whose BN rate is nearest its measured SA1 rate)"
    if s.calibrated:
        text += (f", each chip calibrated once it is programmed (`rram calibrate --fault-map CHIP --calibrate "
                 f"{calibrate}` writes its calibration file)")
    text += f"; how to apply them on hardware: [docs/deploying.md]({docs_link})."
    if r is not None:
        text += f" It has the best mean at SA1 {100 * r.sa1:g}%, {r.mean:.2f}%"
        if r2 is not None:
            gap = r.mean - r2.mean
            text += f", {_pts(gap)} points above {s2.label} ({r2.mean:.2f}%)"
            if r.half is None or r2.half is None or gap <= r.half + r2.half:
                text += "; their intervals overlap, so this order is not established by these chips"
        text += "."
    return text


def next_sentence(series: list[Series], images: int, config_name: str) -> str:
    """What to run next for a trustworthy figure, computed from the widest chip-to-chip spread."""
    sds = [(r.sd, s, r) for s in series for r in rates_of(s.doc) if r.sa1 > 0 and r.sd is not None]
    chips = min((r.n for s in series for r in rates_of(s.doc) if r.sa1 > 0), default=0)
    halves = [r.half for s in series for r in rates_of(s.doc) if r.sa1 > 0 and r.half is not None]
    if not sds:
        return (f"**Next**: set `validate.runs` to at least {MIN_CHIPS} chips per rate (`{config_name}`) and "
                f"run `rram pipeline {config_name}` again: only validation and the report re-run.")
    sd, s, r = max(sds, key=lambda t: t[0])
    need = chips_needed(sd)
    if not is_smoke_test(chips, images) and halves and max(halves) <= TRUST_POINTS:
        return (f"**Next**: nothing for precision: every interval is within ±{TRUST_POINTS:g} points. More "
                f"epochs of fault-aware training (`train.epochs`) are what would move the numbers.")
    text = (f"**Next, for a trustworthy figure**: in `{config_name}` set `validate.runs = {need}` (the widest "
            f"chip-to-chip spread here, sd {_pts(sd)} points for {s.label} at SA1 {100 * r.sa1:g}%, needs about "
            f"that many chips for a 95% CI of ±{TRUST_POINTS:g} points")
    chosen = best(series)[0]
    own = [x.sd for x in rates_of(chosen.doc) if x.sa1 > 0 and x.sd is not None]
    if chosen is not s and own:
        text += f"; {chips_needed(max(own))} suffice for the deployed {chosen.label}"
    text += ")"
    if images < MIN_IMAGES:
        text += f" and remove `validate.images` (every test image, not {images:,})"
    return text + f", then run `rram pipeline {config_name}`: only validation and the report re-run."


def fault_free_columns(series: list[Series], bn_rates: list[str]) -> str:
    """Why a BN rate above 0 looks poor on a perfect chip, with this run's numbers."""
    plain = [s for s in series if not s.calibrated]
    if len(bn_rates) < 2 or not plain:
        return ""
    hi = bn_rates[-1]
    key = rate_folder(hi)
    seen = [(s, s.doc["clean"][key]) for s in plain if key in (s.doc.get("clean") or {})]
    if not seen:
        return ""
    on_chip = []
    for s, _ in seen:
        r = next((r for r in rates_of(s.doc) if r.bn_rate == hi and r.sa1 > 0), None)
        if r is not None:
            on_chip.append(f"{r.mean:.2f}% for {s.label} at SA1 {100 * r.sa1:g}%")
    values = ", ".join(f"{100 * a:.2f}% for {s.label}" for s, a in seen)
    text = (f"The BN rate {hi} column ({values}) is not an accuracy any chip gets: that artifact's BN "
            f"statistics were re-aligned for chips with {100 * float(hi):g}% of "
            f"their cells stuck, whose layer outputs are weaker, so on a perfect chip they mis-normalise. It is "
            f"only given to chips whose SA1 rate is nearest {hi}")
    if on_chip:
        text += f", where it reaches {', '.join(on_chip)} (next table)"
    return text + "."

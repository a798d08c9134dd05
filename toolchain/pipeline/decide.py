"""The rerun decision: a step is skipped when its settings and the content of its input and output
files are those ``state.py`` recorded when it last finished, as in a build system; otherwise it
runs, and the reason is said (``--dry-run`` prints it)."""
from __future__ import annotations

from pathlib import Path

from .plan import Step
from .state import State, fingerprint, listing_fingerprint, settings_key


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def rel(p: Path, run: Path) -> str:
    """Output paths are recorded relative to the run folder, so a moved folder stays current."""
    return p.relative_to(run).as_posix()


def _recorded_form(step: Step, state: State, inputs: dict) -> dict:
    """A folder input (the data set) recorded in the older (path, size, mtime) form, or a step
    started under it, keeps that form while it still describes the folder: a run folder written
    before folders were fingerprinted by content neither re-runs nor restarts its steps."""
    folders = {label: p for label, p in step.inputs.items() if p.is_dir()}
    recorded = (state.record(step.name) or {}).get("inputs", {})
    started = state.started_key(step.name)
    if not any(recorded.get(label) not in (None, inputs[label]) for label in folders) and (
            started is None or started == settings_key(step.settings, inputs)):
        return inputs  # nothing recorded in another form: no second listing of the data set
    older = {label: listing_fingerprint(p) for label, p in folders.items()}
    if started == settings_key(step.settings, {**inputs, **older}):
        return {**inputs, **older}  # an interrupted step resumes
    return {**inputs, **{label: h for label, h in older.items() if recorded.get(label) == h}}


def decide(step: Step, state: State, run: Path, forced: bool, pending: dict[str, str], from_stage: str | None):
    """("run" | "skip", why, input fingerprints or None when an input is still to be rebuilt)."""
    if forced:
        return "run", f"--from {from_stage}", None
    for label, producer in step.producers.items():
        if producer in pending:
            return "run", f"input {label} is rebuilt by {producer}", None
    inputs = _recorded_form(step, state, {label: fingerprint(p) for label, p in step.inputs.items()})
    if state.started_key(step.name) == settings_key(step.settings, inputs):
        return "run", "resuming an interrupted run", inputs
    rec = state.record(step.name)
    if rec is None:
        missing = next((lb for lb, h in inputs.items() if h is None), None)
        if missing:
            return "run", f"never run here (input {missing} missing)", inputs
        return "run", "never run in this folder", inputs
    old = rec.get("settings", {})
    for k in sorted(set(old) | set(step.settings)):
        if old.get(k) != step.settings.get(k):
            if k == "versions":
                return "run", "package versions changed", inputs
            if k == "config":
                continue  # the report's quote of the file: reported below if nothing else changed
            where = step.stage if step.stage != "report" else "report"
            return "run", f"setting {where}.{k} changed: {_show(old.get(k))} -> {_show(step.settings.get(k))}", inputs
    old_in = rec.get("inputs", {})
    for label in sorted(set(old_in) | set(inputs)):
        if old_in.get(label) != inputs.get(label):
            what = "missing" if inputs.get(label) is None else "new" if label not in old_in else "changed"
            return "run", f"input {label} {what}", inputs
    for p, h in rec.get("outputs", {}).items():
        now = fingerprint(run / p)
        if now is None:
            return "run", f"output {p} missing", inputs
        if now != h:
            return "run", f"output {p} changed since it was built", inputs
    if set(rec.get("outputs", {})) != {rel(p, run) for p in step.outputs}:
        return "run", "its outputs changed", inputs
    if old.get("config") != step.settings.get("config"):
        return "run", "the config file changed (the report quotes it)", inputs
    return "skip", "inputs and settings unchanged", inputs

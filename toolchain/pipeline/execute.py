"""The executor: the steps of a plan in order, each skipped or run as ``decide.py`` says, the state
file updated as each starts and finishes (``state.py``)."""
from __future__ import annotations

import sys
import time

from runtime.fileio import output_lock

from ..errors import UserError
from .actions import run_step
from .decide import decide, rel
from .plan import STAGES, Pipeline, Step
from .preflight import preflight
from .report import write_report
from .runfolder import check_apart_from_data, check_outputs, check_own, written
from .state import STATE_NAME, State, fingerprint, settings_key


def _check_stages(pipe: Pipeline, from_stage: str | None, until_stage: str | None) -> None:
    for flag, stage in (("--from", from_stage), ("--until", until_stage)):
        if stage is not None and stage not in STAGES:
            raise UserError(f"{flag} {stage}: not a stage; stages: {', '.join(STAGES)}")
        if stage == "train" and not pipe.cfg.has_train:
            raise UserError(f"{flag} train: the config has no [train] table")
    if from_stage and until_stage and STAGES.index(until_stage) < STAGES.index(from_stage):
        raise UserError(f"--until {until_stage} comes before --from {from_stage}")


def _act(pipe: Pipeline, step: Step, resume: bool, mine) -> int:
    if step.stage == "report":
        return write_report(pipe, step)
    return run_step(pipe, step, resume, mine)


def execute(pipe: Pipeline, *, dry_run: bool = False, from_stage: str | None = None,
            until_stage: str | None = None) -> int:
    _check_stages(pipe, from_stage, until_stage)
    pipe.check_inputs()
    check_apart_from_data(pipe)
    check_own(pipe)
    preflight(pipe)  # every step's arguments, before the first one runs
    if dry_run:
        return _steps(pipe, dry_run, from_stage, until_stage)
    # one pipeline per run folder: a second one would take the first's running step for an
    # interrupted one and restart it (deleting its results file)
    with output_lock(pipe.run / STATE_NAME, "rram pipeline"):
        return _steps(pipe, dry_run, from_stage, until_stage)


def _steps(pipe: Pipeline, dry_run: bool, from_stage: str | None, until_stage: str | None) -> int:
    state = State(pipe.run)
    first = STAGES.index(from_stage) if from_stage else len(STAGES)
    pending: dict[str, str] = {}
    total = time.perf_counter()
    ran = 0
    last = STAGES.index(until_stage) if until_stage else len(STAGES)
    steps = [s for s in pipe.steps if STAGES.index(s.stage) <= last]
    for step in steps:
        forced = STAGES.index(step.stage) >= first
        what, why, inputs = decide(step, state, pipe.run, forced, pending if dry_run else {}, from_stage)
        print(f"[{what}] {step.name}: {why}", flush=True)
        if what == "skip":
            continue
        if dry_run:
            pending[step.name] = why
            continue
        if inputs is None:
            inputs = {label: fingerprint(p) for label, p in step.inputs.items()}
        missing = next((lb for lb, h in inputs.items() if h is None), None)
        if missing:
            raise UserError(f"{step.name}: input {missing} not found: {step.inputs[missing]}")
        key = settings_key(step.settings, inputs)
        resume = state.started_key(step.name) == key
        check_outputs(pipe, step, written(pipe, state))
        state.start(step.name, key, [rel(p, pipe.run) for p in step.outputs])
        t0 = time.perf_counter()
        code = _act(pipe, step, resume, written(pipe, state))
        seconds = time.perf_counter() - t0
        if code:
            print(f"rram: note: pipeline stopped at {step.name} (finished steps are kept; "
                  f"run it again to resume)", file=sys.stderr)
            return code
        outputs = {}
        for p in step.outputs:
            h = fingerprint(p)
            if h is None:
                raise UserError(f"{step.name} did not write {p}")
            outputs[rel(p, pipe.run)] = h
        state.finish(step.name, {"settings": step.settings, "inputs": inputs, "outputs": outputs,
                                 "seconds": round(seconds, 2),
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        ran += 1
    if dry_run:
        print(f"dry run: {len(pending)} of {len(steps)} steps would run; nothing was changed")
    elif until_stage:
        print(f"pipeline: {ran} of {len(steps)} steps up to {until_stage} ran "
              f"({time.perf_counter() - total:.1f} s); run it again without --until to go on")
    else:
        print(f"pipeline: {ran} of {len(steps)} steps ran ({time.perf_counter() - total:.1f} s); "
              f"report: {pipe.run / 'report.md'}")
    return 0

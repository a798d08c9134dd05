"""The run folder is the pipeline's own. It writes only into a folder it created or has marked as
its own (its state file, ``pipeline-state.json``); an existing folder holding anything else
(``out = "."`` in a folder of the user's files, ``/tmp``, a home folder) is refused before any
work. Within its folder it deletes or replaces only the files its state records it wrote."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..training import LAST, LOG, MODEL
from .decide import rel
from .plan import TRAIN_DIR, Pipeline, Step
from .state import STATE_NAME, State, is_state_file

LOCK_NAME = STATE_NAME + ".lock"  # runtime.fileio.output_lock(OUT/pipeline-state.json)
CARRIED = {LAST, MODEL, LOG}  # a training carried in from another machine (benchmarks/study_on_gpu.py)


def check_apart_from_data(pipe: Pipeline) -> None:
    """The run folder inside the data folder would become one more class folder (every later
    command on that data fails) or sit beside the splits; one that holds the data folder would
    hold files the pipeline did not write."""
    run, data = pipe.run.resolve(), pipe.cfg.data.resolve()
    if run == data or run.is_relative_to(data):
        raise UserError(f"{pipe.cfg.path}: out {pipe.run} is inside the data folder {pipe.cfg.data}; "
                        f"choose a run folder outside it")
    if data.is_relative_to(run):
        raise UserError(f"{pipe.cfg.path}: out {pipe.run} holds the data folder {pipe.cfg.data}; "
                        f"choose a run folder of its own")


def check_own(pipe: Pipeline) -> None:
    """Refuse an existing run folder that the pipeline did not make, in one line."""
    run, where = pipe.run, f"{pipe.cfg.path}: out {pipe.run}"
    if not run.is_dir():
        return  # none yet: the pipeline makes it (a file there is check_inputs' error)
    state = run / STATE_NAME
    if state.exists():
        if is_state_file(state):
            return
        raise UserError(f"{where}: its {STATE_NAME} is not a pipeline state file; choose another out")
    entries = sorted(e.name for e in run.iterdir() if e.name != LOCK_NAME)
    if not entries or _carried_training(run, entries):
        return
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise UserError(f"{where} holds files the pipeline did not write ({shown}); it writes only into a new "
                    f"or empty folder or one it made (with its {STATE_NAME}): choose another out")


def _carried_training(run: Path, entries: list[str]) -> bool:
    """``train/`` alone, holding only what ``rram train`` writes: a training run on another machine
    (``--until train``) and copied in without the state file; ``rram train --auto-resume`` takes it
    up or refuses it."""
    if entries != [TRAIN_DIR] or not (run / TRAIN_DIR).is_dir():
        return False
    files = list((run / TRAIN_DIR).iterdir())
    return bool(files) and all(f.is_file() and f.name in CARRIED for f in files)


def written(pipe: Pipeline, state: State) -> set[Path]:
    """Every file the state records the pipeline wrote, plus the outputs of a step it started."""
    out = {pipe.run / p for p in state.written()}
    return out | {p for s in pipe.steps if state.started_key(s.name) for p in s.outputs}


def check_outputs(pipe: Pipeline, step: Step, mine: set[Path]) -> None:
    """A step replaces only outputs the pipeline wrote: a file of the same name put there by
    someone else is refused, not overwritten (the training's folder is ``rram train
    --auto-resume``'s own: it resumes or replaces only its own run)."""
    if step.stage == "train":
        return
    for p in step.outputs:
        if p.exists() and p not in mine:
            raise UserError(f"{step.name}: {rel(p, pipe.run)} is in the run folder but the pipeline did not "
                            f"write it; move it away (the pipeline replaces only its own files)")

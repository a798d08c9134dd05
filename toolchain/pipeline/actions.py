"""The pipeline's actions: each step is one or more in-process calls of an ``rram`` subcommand
(``toolchain.cli.main``), its argument list built by ``toolchain.api.argv``, so that the pipeline
depends on the command line only, not on the modules behind it.

``commands(pipe, step)`` is every argument list a step runs; the executor also parses them all,
with each subcommand's own parser and checks, before the first step runs (``execute.preflight``).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path

from runtime.artifact import layout

from ..api import argv
from .plan import CALIBRATED, Pipeline, Step, folded_name


def cli(args: list[str]) -> int:
    """One ``rram`` subcommand, in this process."""
    from ..cli import main

    print(f"$ rram {' '.join(args)}", flush=True)
    return main(args)


# ------------------------------------------------------------------------ argument lists per stage

def _train(pipe: Pipeline, step: Step, resume: bool) -> list[list[str]]:
    # No clean-up: --auto-resume continues a run of the same options (also one trained elsewhere,
    # e.g. on a GPU machine, and copied in) and replaces a run of other options.
    t, m = pipe.v["train"], pipe.v["model"]
    return [argv("train", pipe.init, model=m["arch"], drop_rate=t["drop_rate"], epochs=t["epochs"],
                 lr=pipe.train_lr(), batch_size=t["batch_size"], seed=t["seed"], data=pipe.cfg.data,
                 out=step.outputs[0].parent, auto_resume=True, width=m["width"], pad_1x1=m["pad_1x1"],
                 shortcut=m["shortcut"],
                 train_precision=t["precision"],  # always said: the run does not lean on the CLI's default
                 train_images=t["images"], eval_images=t["eval_images"], hold_out_val=t["hold_out_val"],
                 variation=t["variation"] or None,  # none at 0: the command lines of older runs
                 programming_model=t["programming_model"] if t["variation"] else None)]


def _recalibrate(pipe: Pipeline, step: Step, resume: bool) -> list[list[str]]:
    r = pipe.v["recalibrate"]
    return [argv("recalibrate", step.inputs["checkpoint"], model=pipe.v["model"]["arch"], bn_rate=pipe.rates,
                 batch_size=r["batch_size"], seed=r["seed"], data=pipe.cfg.data, out=step.outputs[0],
                 batches=r["batches"], train_images=r["images"])]


def _export(pipe: Pipeline, step: Step, resume: bool) -> list[list[str]]:
    (src,) = step.inputs.values()
    # the model factory comes from the config, never from the checkpoint's word (it is checked against it)
    return [argv("export", src, model=pipe.v["model"]["arch"], all_rates=True, seed=pipe.v["export"]["seed"],
                 out=step.outputs[0])]


def _passes(pipe: Pipeline, step: Step, resume: bool) -> list[list[str]]:
    p = pipe.v["passes"]
    (src,) = step.inputs.values()
    if pipe.onnx:  # one model, no BN rates; its normalisation recorded when the config gives it
        m = pipe.v["model"]
        return [argv("passes", src, out=step.outputs[0], passes=p["passes"], tolerance=p["tolerance"],
                     pad_1x1=p["pad_1x1"], mean=m["mean"], std=m["std"])]
    return [argv("passes", src, out=out, passes=p["passes"], bn_rate=rate, tolerance=p["tolerance"],
                 pad_1x1=p["pad_1x1"])
            for out, rate in zip(step.outputs, pipe.rates)]


def _quantize(pipe: Pipeline, step: Step, resume: bool) -> list[list[str]]:
    if pipe.onnx:
        (src,) = step.inputs.values()
        return [argv("quantize", src, out=pipe.art(step.variant), preset=pipe.v["quantize"]["preset"], force=True)]
    d = pipe.folder(step.variant)
    return [argv("quantize", d / folded_name(rate), out=pipe.rate_folder(step.variant, rate),
                 preset=pipe.v["quantize"]["preset"], force=True) for rate in pipe.rates]


def _validate(pipe: Pipeline, step: Step, resume: bool) -> list[list[str]]:
    """The campaign with the per-rate BN statistics, and with per-chip calibration when
    ``validate.calibrate`` is set (a second results file); ``--resume`` where a resumed step
    finds its results file."""
    v = pipe.v["validate"]
    ray = True if v["ray"] == "default" else v["ray"]
    return [argv("validate", pipe.art(step.variant), bn_rate="auto", data=pipe.cfg.data, sa1=v["sa1"],
                 sa0=v["sa0"], runs=v["runs"], seed=v["seed"], precision=v["precision"], out=out,
                 images=v["images"], calibrate=v["calibrate"] if out.name == CALIBRATED else None,
                 place=v["place"], ray=ray, resume=resume and out.is_file())
            for out in step.outputs]


COMMANDS: dict[str, Callable[[Pipeline, Step, bool], list[list[str]]]] = {
    "train": _train, "recalibrate": _recalibrate, "export": _export, "passes": _passes,
    "quantize": _quantize, "validate": _validate}


def commands(pipe: Pipeline, step: Step, resume: bool = False) -> list[list[str]]:
    """The ``rram`` argument lists ``step`` runs, in order (none for the report)."""
    build = COMMANDS.get(step.stage)
    return build(pipe, step, resume) if build else []


# ------------------------------------------------------------------------ running a step

def run_step(pipe: Pipeline, step: Step, resume: bool, written: set[Path]) -> int:
    """Run ``step``'s commands, after removing what they would refuse or misread, where the
    pipeline wrote it (``written``: the state's record; nothing else is touched)."""
    if step.stage == "quantize" and not pipe.onnx:
        _drop_unconfigured_rates(pipe, step, written)
    for args, out in zip(commands(pipe, step, resume), step.outputs):
        if step.stage == "validate" and "--resume" not in args and out in written and out.exists():
            out.unlink()  # a campaign of other settings: started afresh
    with _config_in_environment(pipe):
        for args in commands(pipe, step, resume):
            code = cli(args)
            if code:
                return code
    return 0


@contextmanager
def _config_in_environment(pipe: Pipeline):
    """The config's sha256 (of its text and its base chain's, as the report quotes them) in the
    environment of the step's commands: every results file records it (``runtime/provenance.py``)."""
    from runtime.provenance import PIPELINE_ENV

    before = os.environ.get(PIPELINE_ENV)
    os.environ[PIPELINE_ENV] = hashlib.sha256(pipe.cfg.text.encode()).hexdigest()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PIPELINE_ENV, None)
        else:
            os.environ[PIPELINE_ENV] = before


def _drop_unconfigured_rates(pipe: Pipeline, step: Step, written: set[Path]) -> None:
    """validate reads every rate-* folder of art/: the artifacts of rates no longer configured
    go, file by file, where the pipeline wrote them; a folder left holding anything else stays."""
    art = pipe.art(step.variant)
    if not art.is_dir():
        return
    keep = {pipe.rate_folder(step.variant, r) for r in pipe.rates}
    for d in sorted(art.iterdir()):
        if not d.is_dir() or d in keep:
            continue
        mine = [d / f for f in layout.FILES if d / f in written and (d / f).is_file()]
        if not mine:
            continue
        print(f"removing {d} (rate not in recalibrate.rates)")
        for f in mine:
            f.unlink()
        with suppress(OSError):  # a folder still holding something the pipeline did not write stays
            d.rmdir()

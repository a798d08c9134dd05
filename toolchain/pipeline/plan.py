"""The pipeline's plan: the steps of the flow, what each reads and writes, and the run folder's
layout. Pure data: nothing here runs a step. The actions (``actions.py``), the rerun decision
(``decide.py``), the executor (``execute.py``) and the report (``report.py``) all read it.

Run folder::

    OUT/pipeline-state.json                what each finished step was built from (state.py)
    OUT/train/                             rram train (model.pt, last.pt, log.json)
    OUT/<variant>/recalibrated.pt          per-rate BN statistics
    OUT/<variant>/model.onnx               rram export --all-rates
    OUT/<variant>/model.r<rate>.onnx       rram passes --bn-rate <rate>
    OUT/<variant>/art/rate-<rate>/         rram quantize (one deployable folder per BN rate)
    OUT/<variant>/results.json             rram validate --bn-rate auto over art/
    OUT/report.md, OUT/*.png               the report

<variant> is ``fault-aware`` (the drop-connect model of [train]) and ``baseline`` (the initial
checkpoint without drop-connect training, through the same steps), or ``model`` alone for a
config without [train]. A config starting from an ONNX model (``model.onnx``) has ``model`` alone
and no BN rates: ``model/model.passes.onnx`` (rram passes) and one artifact, ``model/art/``.
"""
from __future__ import annotations

import importlib.metadata
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from runtime.artifact import layout

from ..commands.recalibrate import RECALIBRATED
from ..dropconnect import rate_key as rate_name  # how a rate is written in file names and --bn-rate
from ..errors import UserError
from ..training import ADDED_LATER, LOG as TRAIN_LOG, MODEL as TRAINED_MODEL, default_lr
from .config import Config

# (7) sensitivity analysis would go between validate and report: no stage runs it yet, so the
# config accepts no [sensitivity] table. HOOK: add "sensitivity" here and a step in _steps().
STAGES = ["train", "recalibrate", "export", "passes", "quantize", "validate", "report"]
VERSIONED = ["rram-toolchain", "torch", "onnx", "onnxruntime", "numpy"]

TRAIN_DIR = "train"
EXPORTED = "model.onnx"  # rram export --all-rates, in <variant>/
ART_DIR = "art"  # <variant>/art/rate-<rate>/: the artifact folders
RESULTS = "results.json"  # the campaign
CALIBRATED = "results-calibrated.json"  # the campaign with per-chip calibration (validate.calibrate)
REPORT = "report.md"
ACCURACY_PNG = "accuracy.png"
USAGE_PNG = "crossbar-usage.png"


ONNX_PASSED = "model.passes.onnx"  # model.onnx after rram passes, in model/


def folded_name(rate: str) -> str:
    """The model of one BN rate after ``rram passes``, in <variant>/."""
    return f"model.r{rate}.onnx"


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class Step:
    stage: str
    variant: str | None
    settings: dict
    inputs: dict[str, Path]  # label -> file (or folder: the data set)
    outputs: list[Path]
    producers: dict[str, str] = field(default_factory=dict)  # input label -> step producing it

    @property
    def name(self) -> str:
        return self.stage if self.variant is None else f"{self.stage}:{self.variant}"


@dataclass
class Variant:
    name: str
    source: Path  # checkpoint it starts from
    source_step: str | None  # the step that writes it (train), or None for the given checkpoint
    label: str  # legend / report name


class Pipeline:
    """A config's plan: its initial checkpoint, variants, BN rates and steps, and where each
    file of the run folder lives."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run = cfg.out
        self.v = cfg.values
        self.onnx = _resolve_onnx(cfg)  # an ONNX model as the starting point (no checkpoint, no BN rates)
        self.init = None if self.onnx else _resolve_checkpoint(cfg)
        self.versions = package_versions()
        self.rates = [] if self.onnx else [rate_name(r) for r in self.v["recalibrate"]["rates"]]
        self.variants = self._variants()
        self.steps = self._steps()

    # -------------------------------------------------------------------- where files live
    def folder(self, variant: str) -> Path:
        return self.run / variant

    def art(self, variant: str) -> Path:
        return self.run / variant / ART_DIR

    def rate_folder(self, variant: str, rate: str | None) -> Path:
        """The artifact of one BN rate (an ONNX starting point: the one artifact, art/ itself)."""
        return self.art(variant) if self.onnx else self.art(variant) / layout.rate_folder(rate)

    def train_lr(self) -> float:
        """train.lr, or the default: 0.01 fine-tuning, 0.1 from scratch (rram train's own)."""
        lr = self.v["train"]["lr"]
        return lr if lr is not None else default_lr(self.init is not None)

    def check_inputs(self) -> None:
        """One-line errors for inputs no step can make, before any work."""
        data = self.cfg.data
        if not data.is_dir():
            raise UserError(f"{self.cfg.path}: data folder not found: {data}")
        if self.run.exists() and not self.run.is_dir():
            raise UserError(f"{self.cfg.path}: out {self.run} is a file, not a folder")

    # -------------------------------------------------------------------- the steps
    def _variants(self) -> list[Variant]:
        if self.onnx:
            return [Variant("model", self.onnx, None, "model")]
        if not self.cfg.has_train:
            return [Variant("model", self.init, None, "model")]
        t = self.v["train"]
        label = f"drop-connect p={t['drop_rate']:g}" if t["drop_rate"] > 0 else "plain training"
        out = [Variant("fault-aware", self.run / TRAIN_DIR / TRAINED_MODEL, "train", label)]
        if self.v[""]["baseline"]:
            out.append(Variant("baseline", self.init, None, "baseline (no drop-connect)"))
        return out

    def _steps(self) -> list[Step]:
        v, run, data, rates = self.v, self.run, self.cfg.data, self.rates
        steps: list[Step] = []
        arch = v["model"]["arch"]
        common = {"versions": self.versions}
        if self.cfg.has_train:
            t = v["train"]
            m = v["model"]  # width / pad_1x1 / shortcut only when set: older run folders stay current
            shape = {k: m[k] for k in ("width", "pad_1x1", "shortcut") if m[k] not in (None, False)}
            start = {"checkpoint": self.init} if self.init is not None else {}
            # a key added later only when not at its old value: run folders recorded before stay current
            tset = {k: x for k, x in t.items() if not (k in ADDED_LATER and x == ADDED_LATER[k])}
            steps.append(Step("train", None, {**common, "arch": arch, **shape, **tset},
                              {**start, "data": data},
                              [run / TRAIN_DIR / TRAINED_MODEL, run / TRAIN_DIR / TRAIN_LOG]))
        for var in self.variants:
            d = self.folder(var.name)
            if self.onnx:
                steps += self._onnx_steps(var, common)
                continue
            src = {"checkpoint": var.source}
            prod = {"checkpoint": var.source_step} if var.source_step else {}
            steps.append(Step("recalibrate", var.name, {**common, "arch": arch, **v["recalibrate"]},
                              {**src, "data": data}, [d / RECALIBRATED], prod))
            steps.append(Step("export", var.name, {**common, **v["export"]},
                              {RECALIBRATED: d / RECALIBRATED}, [d / EXPORTED]))
            # passes.pad_1x1 only when set: run folders recorded before the key stay current
            passes = {k: x for k, x in v["passes"].items() if k != "pad_1x1" or x}
            steps.append(Step("passes", var.name, {**common, "rates": rates, **passes},
                              {EXPORTED: d / EXPORTED}, [d / folded_name(r) for r in rates]))
            steps.append(Step("quantize", var.name, {**common, "rates": rates, **v["quantize"]},
                              {folded_name(r): d / folded_name(r) for r in rates},
                              [self.rate_folder(var.name, r) / f for r in rates for f in layout.FILES]))
            # report.json (it holds timings) is not an input: only what the campaign reads
            art_files = {f"{ART_DIR}/{layout.rate_folder(r)}/{f}": self.rate_folder(var.name, r) / f
                         for r in rates for f in layout.FILES if f != layout.REPORT_NAME}
            results = [d / RESULTS] + ([d / CALIBRATED] if v["validate"]["calibrate"] else [])
            # where the chips run (validate.ray) does not change a number: not a setting of the step
            settings = {k: x for k, x in v["validate"].items() if k != "ray"}
            steps.append(Step("validate", var.name, {**common, **settings}, {**art_files, "data": data}, results))
        # HOOK (stage 7, sensitivity): a per-variant step reading art/ would be appended here.
        rep_inputs = {}
        for var in self.variants:
            rep_inputs[f"{var.name}/{RESULTS}"] = self.folder(var.name) / RESULTS
            if v["validate"]["calibrate"]:
                rep_inputs[f"{var.name}/{CALIBRATED}"] = self.folder(var.name) / CALIBRATED
            for r in rates or [None]:
                art = f"{ART_DIR}/{layout.rate_folder(r)}" if r is not None else ART_DIR
                rep_inputs[f"{var.name}/{art}/{layout.REPORT_NAME}"] = \
                    self.rate_folder(var.name, r) / layout.REPORT_NAME
        if self.cfg.has_train:
            rep_inputs[f"{TRAIN_DIR}/{TRAIN_LOG}"] = run / TRAIN_DIR / TRAIN_LOG
        steps.append(Step("report", None, {**common, "config": self.cfg.text, **v["report"]}, rep_inputs,
                          [run / REPORT, run / ACCURACY_PNG, run / USAGE_PNG]))
        # which step writes which input (for the dry run's "rebuilt by" and the --from order)
        writer = {str(o): s.name for s in steps for o in s.outputs}
        for s in steps:
            for label, p in s.inputs.items():
                if str(p) in writer and label not in s.producers:
                    s.producers[label] = writer[str(p)]
        return steps


    def _onnx_steps(self, var: Variant, common: dict) -> list[Step]:
        """passes, quantize and validate of an ONNX starting point: one artifact, art/."""
        v, d, art = self.v, self.folder(var.name), self.art(var.name)
        m = {k: v["model"][k] for k in ("mean", "std") if v["model"][k] is not None}
        art_files = {f"{ART_DIR}/{f}": art / f for f in layout.FILES if f != layout.REPORT_NAME}
        results = [d / RESULTS] + ([d / CALIBRATED] if v["validate"]["calibrate"] else [])
        settings = {k: x for k, x in v["validate"].items() if k != "ray"}
        return [Step("passes", var.name, {**common, **m, **v["passes"]}, {"model.onnx": var.source}, [d / ONNX_PASSED]),
                Step("quantize", var.name, {**common, **v["quantize"]}, {ONNX_PASSED: d / ONNX_PASSED},
                     [art / f for f in layout.FILES]),
                Step("validate", var.name, {**common, **settings}, {**art_files, "data": self.cfg.data}, results)]


def _resolve_onnx(cfg: Config) -> Path | None:
    """model.onnx's path (relative to the config that sets it), checked to be a file."""
    ref = cfg.values["model"].get("onnx")
    if ref is None:
        return None
    path = (cfg.folder("model.onnx") / Path(ref).expanduser()).resolve()
    if not path.is_file():
        raise UserError(f"{cfg.path}: model.onnx: no such file: {path}")
    return path


def _resolve_checkpoint(cfg: Config) -> Path | None:
    """The initial checkpoint's path; None when [train] trains from scratch."""
    ref = cfg.values["model"]["checkpoint"]
    if ref is None:
        return None
    local = cfg.folder("model.checkpoint") / Path(ref).expanduser()
    if local.is_file():
        return local
    if os.sep in ref or "/" in ref or ref.endswith((".pt", ".pth", ".th")):
        raise UserError(f"{cfg.path}: model.checkpoint: no such file: {local}")
    from ..checkpoints import resolve_checkpoint  # a known name, looked up in the weights folder

    with _env("RRAM_WEIGHTS", str(cfg.weights) if cfg.weights else None):
        try:
            return Path(resolve_checkpoint(ref)[0]).resolve()
        except UserError as e:
            raise UserError(f"{cfg.path}: model.checkpoint: {e}") from None


@contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old

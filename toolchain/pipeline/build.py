"""``rram pipeline``: the steps of the flow, each an in-process call of an ``rram`` subcommand
(``toolchain.cli.main``), so that the pipeline depends on the command line only, not on the
modules behind it. Steps run in order; each is skipped when its settings and the content of its
input and output files are those recorded when it last finished (``state.py``).

Run folder::

    OUT/pipeline-state.json                what each finished step was built from
    OUT/train/                             rram train (model.pt, last.pt, log.json)
    OUT/<variant>/recalibrated.pt          per-rate BN statistics
    OUT/<variant>/model.onnx               rram export --all-rates
    OUT/<variant>/model.r<rate>.onnx       rram passes --bn-rate <rate>
    OUT/<variant>/art/rate-<rate>/         rram quantize (one deployable folder per BN rate)
    OUT/<variant>/results.json             rram validate --stats-rate auto over art/
    OUT/report.md, OUT/*.png               the report

<variant> is ``fault-aware`` (the drop-connect model of [train]) and ``baseline`` (the initial
checkpoint without drop-connect training, through the same steps), or ``model`` alone for a
config without [train].
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..commands.recalibrate import RECALIBRATED
from ..errors import UserError
from ..training import ADDED_LATER, default_lr
from .config import Config
from .state import State, fingerprint, listing_fingerprint, settings_key

# (7) sensitivity analysis would go between validate and report: no such command exists yet, so
# the config accepts no [sensitivity] table. HOOK: add "sensitivity" here and a step in plan().
STAGES = ["train", "recalibrate", "export", "passes", "quantize", "validate", "report"]
VERSIONED = ["rram-toolchain", "torch", "onnx", "onnxruntime", "numpy"]


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


CALIBRATED = "results-calibrated.json"  # the campaign with per-chip calibration (validate.calibrate)


def rate_name(r: float) -> str:
    """How a rate is written in file names and --bn-rate (rram's rate_key: 0 -> "0.0")."""
    return repr(float(r))


def cli(argv: list[str]) -> int:
    """One ``rram`` subcommand, in this process."""
    from ..cli import main

    print(f"$ rram {' '.join(argv)}", flush=True)
    return main(argv)


@dataclass
class Step:
    stage: str
    variant: str | None
    settings: dict
    inputs: dict[str, Path]  # label -> file (or folder: the data set)
    outputs: list[Path]
    action: Callable[[Step, bool], int]  # (step, resume) -> exit status
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
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run = cfg.out
        self.v = cfg.values
        self.init = self._resolve_checkpoint()
        self.versions = package_versions()
        self.steps = self.plan()

    # -------------------------------------------------------------------- inputs that must exist
    def _resolve_checkpoint(self) -> Path | None:
        """The initial checkpoint's path; None when [train] trains from scratch."""
        ref = self.v["model"]["checkpoint"]
        if ref is None:
            return None
        local = self.cfg.folder("model.checkpoint") / Path(ref).expanduser()
        if local.is_file():
            return local
        if os.sep in ref or "/" in ref or ref.endswith((".pt", ".pth", ".th")):
            raise UserError(f"{self.cfg.path}: model.checkpoint: no such file: {local}")
        from ..checkpoints import resolve_checkpoint  # a known name, looked up in the weights folder

        with _env("RRAM_WEIGHTS", str(self.cfg.weights) if self.cfg.weights else None):
            try:
                return Path(resolve_checkpoint(ref)[0]).resolve()
            except UserError as e:
                raise UserError(f"{self.cfg.path}: model.checkpoint: {e}") from None

    def check_inputs(self) -> None:
        """One-line errors for inputs no step can make, before any work."""
        data = self.cfg.data
        if not data.is_dir():
            raise UserError(f"{self.cfg.path}: data folder not found: {data}")
        if self.run.exists() and not self.run.is_dir():
            raise UserError(f"{self.cfg.path}: out {self.run} is a file, not a folder")

    # -------------------------------------------------------------------- the steps
    def variants(self) -> list[Variant]:
        if not self.cfg.has_train:
            return [Variant("model", self.init, None, "model")]
        t = self.v["train"]
        label = f"drop-connect p={t['drop_rate']:g}" if t["drop_rate"] > 0 else "plain training"
        out = [Variant("fault-aware", self.run / "train" / "model.pt", "train", label)]
        if self.v[""]["baseline"]:
            out.append(Variant("baseline", self.init, None, "baseline (no drop-connect)"))
        return out

    def plan(self) -> list[Step]:
        v, run, data = self.v, self.run, self.cfg.data
        steps: list[Step] = []
        arch = v["model"]["arch"]
        rates = [rate_name(r) for r in v["recalibrate"]["rates"]]
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
                              [run / "train" / "model.pt", run / "train" / "log.json"], self._train))
        for var in self.variants():
            d = run / var.name
            src = {"checkpoint": var.source}
            prod = {"checkpoint": var.source_step} if var.source_step else {}
            steps.append(Step("recalibrate", var.name, {**common, "arch": arch, **v["recalibrate"]},
                              {**src, "data": data}, [d / RECALIBRATED], self._recalibrate, prod))
            steps.append(Step("export", var.name, {**common, **v["export"]},
                              {RECALIBRATED: d / RECALIBRATED}, [d / "model.onnx"], self._export))
            steps.append(Step("passes", var.name, {**common, "rates": rates, **v["passes"]},
                              {"model.onnx": d / "model.onnx"}, [d / f"model.r{r}.onnx" for r in rates],
                              self._passes))
            steps.append(Step("quantize", var.name, {**common, "rates": rates, **v["quantize"]},
                              {f"model.r{r}.onnx": d / f"model.r{r}.onnx" for r in rates},
                              [d / "art" / f"rate-{r}" / f for r in rates
                               for f in ("model.onnx", "crossbars.json", "crossbars.npz", "report.json")],
                              self._quantize))
            # report.json (it holds timings) is not an input: only what the campaign reads
            art_files = {f"art/rate-{r}/{f}": d / "art" / f"rate-{r}" / f for r in rates
                         for f in ("model.onnx", "crossbars.json", "crossbars.npz")}
            results = [d / "results.json"] + ([d / CALIBRATED] if v["validate"]["calibrate"] else [])
            # where the chips run (validate.ray) does not change a number: not a setting of the step
            settings = {k: x for k, x in v["validate"].items() if k != "ray"}
            steps.append(Step("validate", var.name, {**common, **settings},
                              {**art_files, "data": data}, results, self._validate))
        # HOOK (stage 7, sensitivity): a per-variant step reading art/ would be appended here.
        rep_inputs = {}
        for var in self.variants():
            rep_inputs[f"{var.name}/results.json"] = run / var.name / "results.json"
            if v["validate"]["calibrate"]:
                rep_inputs[f"{var.name}/{CALIBRATED}"] = run / var.name / CALIBRATED
            for r in rates:
                art = run / var.name / "art" / f"rate-{r}"
                rep_inputs[f"{var.name}/art/rate-{r}/report.json"] = art / "report.json"
        if self.cfg.has_train:
            rep_inputs["train/log.json"] = run / "train" / "log.json"
        steps.append(Step("report", None, {**common, "config": self.cfg.text, **v["report"]}, rep_inputs,
                          [run / "report.md", run / "accuracy.png", run / "crossbar-usage.png"], self._report))
        # which step writes which input (for the dry run's "rebuilt by" and the --from order)
        writer = {str(o): s.name for s in steps for o in s.outputs}
        for s in steps:
            for label, p in s.inputs.items():
                if str(p) in writer and label not in s.producers:
                    s.producers[label] = writer[str(p)]
        return steps

    # -------------------------------------------------------------------- actions
    def _train(self, step: Step, resume: bool) -> int:
        t, m = self.v["train"], self.v["model"]
        out = self.run / "train"
        # No clean-up here: --auto-resume continues a run of the same options (also one trained
        # elsewhere, e.g. on a GPU machine, and copied in) and replaces a run of other options.
        lr = t["lr"] if t["lr"] is not None else default_lr(self.init is not None)
        argv = ["train", "--model", m["arch"]] + ([str(self.init)] if self.init is not None else []) + [
            "--drop-rate", str(t["drop_rate"]), "--epochs", str(t["epochs"]), "--lr", str(lr),
            "--batch-size", str(t["batch_size"]), "--seed", str(t["seed"]), "--data", str(self.cfg.data),
            "--out", str(out), "--auto-resume"]
        if m["width"] is not None:
            argv += ["--width", repr(m["width"])]
        if m["pad_1x1"]:
            argv.append("--pad-1x1")
        if m["shortcut"] is not None:
            argv += ["--shortcut", m["shortcut"]]
        argv += ["--precision", t["precision"]]  # always said: the run does not lean on the CLI's default
        for k in ("images", "eval_images"):
            if t[k] is not None:
                argv += [f"--{k.replace('_', '-')}", str(t[k])]
        return cli(argv)

    def _recalibrate(self, step: Step, resume: bool) -> int:
        r = self.v["recalibrate"]
        argv = ["recalibrate", str(step.inputs["checkpoint"]), "--model", self.v["model"]["arch"],
                "--bn-rate", ",".join(rate_name(x) for x in r["rates"]), "--batch-size", str(r["batch_size"]),
                "--seed", str(r["seed"]), "--data", str(self.cfg.data), "--out", str(step.outputs[0])]
        for k in ("batches", "images"):
            if r[k] is not None:
                argv += [f"--{k}", str(r[k])]
        return cli(argv)

    def _export(self, step: Step, resume: bool) -> int:
        return cli(["export", str(step.inputs[RECALIBRATED]), "--all-rates", "--seed",
                    str(self.v["export"]["seed"]), "--out", str(step.outputs[0])])

    def _passes(self, step: Step, resume: bool) -> int:
        p = self.v["passes"]
        for out, rate in zip(step.outputs, step.settings["rates"]):
            argv = ["passes", str(step.inputs["model.onnx"]), str(out), "--passes", p["passes"], "--bn-rate", rate]
            if p["tolerance"] is not None:
                argv += ["--tolerance", str(p["tolerance"])]
            code = cli(argv)
            if code:
                return code
        return 0

    def _quantize(self, step: Step, resume: bool) -> int:
        art = self.run / step.variant / "art"
        rates = step.settings["rates"]
        if art.is_dir():  # validate reads every rate-* folder: drop rates no longer configured
            for d in sorted(art.iterdir()):
                if d.is_dir() and d.name.removeprefix("rate-") not in rates:
                    print(f"removing {d} (rate not in recalibrate.rates)")
                    shutil.rmtree(d)
        for rate in rates:
            code = cli(["quantize", str(self.run / step.variant / f"model.r{rate}.onnx"),
                        str(art / f"rate-{rate}"), "--preset", self.v["quantize"]["preset"], "--force"])
            if code:
                return code
        return 0

    def _validate(self, step: Step, resume: bool) -> int:
        """The campaign with the per-rate BN statistics, and with per-chip calibration when
        ``validate.calibrate`` is set (a second results file)."""
        v = self.v["validate"]
        for out in step.outputs:
            again = resume and out.is_file()
            if out.exists() and not again:
                out.unlink()
            argv = ["validate", str(self.run / step.variant / "art"), "--bn-rate", "auto",
                    "--data", str(self.cfg.data), "--sa1", ",".join(repr(x) for x in v["sa1"]),
                    "--sa0", repr(v["sa0"]), "--runs", str(v["runs"]), "--seed", str(v["seed"]),
                    "--precision", v["precision"], "--out", str(out)]
            if v["images"] is not None:
                argv += ["--images", str(v["images"])]
            if out.name == CALIBRATED:
                argv += ["--calibrate", str(v["calibrate"])]
            if v["ray"] is not None:
                argv.append("--ray" if v["ray"] == "default" else f"--ray={v['ray']}")
            if again:
                argv.append("--resume")
            code = cli(argv)
            if code:
                return code
        return 0

    def _report(self, step: Step, resume: bool) -> int:
        from .report import write_report

        return write_report(self, step)


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


# ------------------------------------------------------------------------ deciding and running

def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _rel(p: Path, run: Path) -> str:
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
    if set(rec.get("outputs", {})) != {_rel(p, run) for p in step.outputs}:
        return "run", "its outputs changed", inputs
    if old.get("config") != step.settings.get("config"):
        return "run", "the config file changed (the report quotes it)", inputs
    return "skip", "inputs and settings unchanged", inputs


def execute(pipe: Pipeline, *, dry_run: bool = False, from_stage: str | None = None,
            until_stage: str | None = None) -> int:
    for flag, stage in (("--from", from_stage), ("--until", until_stage)):
        if stage is not None and stage not in STAGES:
            raise UserError(f"{flag} {stage}: not a stage; stages: {', '.join(STAGES)}")
        if stage == "train" and not pipe.cfg.has_train:
            raise UserError(f"{flag} train: the config has no [train] table")
    if from_stage and until_stage and STAGES.index(until_stage) < STAGES.index(from_stage):
        raise UserError(f"--until {until_stage} comes before --from {from_stage}")
    pipe.check_inputs()
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
        state.start(step.name, key)
        t0 = time.perf_counter()
        code = step.action(step, resume)
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
            outputs[_rel(p, pipe.run)] = h
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

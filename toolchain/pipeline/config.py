"""The pipeline configuration: a TOML file read with ``tomllib`` and checked against ``SCHEMA``
before any work starts. Every key is documented (type, default, meaning) in docs/pipeline.md;
tests/test_pipeline.py checks that the two agree.

Paths in the file are relative to the file's folder; ``data`` and ``weights`` fall back to
$RRAM_DATA / $RRAM_WEIGHTS (relative to the current folder, as for every other command).
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from runtime import PRECISIONS as VALIDATE_PRECISIONS
from runtime.campaign.plan import RUNS as CAMPAIGN_RUNS
from runtime.variation import PROGRAMMING_MODELS

from ..errors import UserError
from ..models import MODEL_NAMES
from ..training import PRECISIONS as TRAIN_PRECISIONS

try:  # the standard library from Python 3.11 on; the project still runs on 3.10 without the pipeline
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - only on Python 3.10
    tomllib = None

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    kind: str  # "str", "bool", "int", "float", "floats" (list of distinct numbers), "vector" (list of numbers)
    default: object = REQUIRED
    low: float | None = None  # inclusive lower bound of a number (each number of a list)
    high: float | None = None  # upper bound
    high_open: bool = False  # the upper bound itself is not allowed
    choices: tuple[str, ...] | None = None


RATE = {"low": 0.0, "high": 1.0, "high_open": True}
# section -> key -> Key; "" is the top level. [train] is optional as a whole: without it the
# initial checkpoint goes through the flow as it is (and there is no separate baseline).
SCHEMA: dict[str, dict[str, Key]] = {
    "": {
        "base": Key("str", None),  # read by load_config: another config whose keys this one replaces
        "out": Key("str"),
        "data": Key("str", None),
        "weights": Key("str", None),
        "baseline": Key("bool", None),  # default: true when there is an initial checkpoint
    },
    "model": {
        "checkpoint": Key("str", None),  # none: [train] trains from scratch
        "onnx": Key("str", None),  # an ONNX model instead: passes, quantize, validate (no train/recalibrate/export)
        "mean": Key("vector", None),  # with onnx: its input normalisation, if it records none (rram passes --mean)
        "std": Key("vector", None, low=1e-12),
        "arch": Key("str", None, choices=MODEL_NAMES + ("package.module:factory",)),  # required but with onnx
        "width": Key("float", None, low=1e-6),
        "pad_1x1": Key("bool", False),
        "shortcut": Key("str", None, choices=("A", "B")),
    },
    "train": {
        "drop_rate": Key("float", **RATE),
        "epochs": Key("int", low=1),
        "images": Key("int", None, low=1),
        "eval_images": Key("int", None, low=1),
        "lr": Key("float", None, low=1e-12),  # default: toolchain.training.default_lr (fine-tuning or not)
        "batch_size": Key("int", 128, low=2),
        "seed": Key("int", 0, low=0),
        "precision": Key("str", "fp32", choices=TRAIN_PRECISIONS),  # rram train --train-precision
        "hold_out_val": Key("bool", False),  # rram train --hold-out-val (docs/RESULTS.md)
        "variation": Key("float", 0.0, low=0.0),  # rram train --variation: programming variation trained for
        "programming_model": Key("str", "additive", choices=PROGRAMMING_MODELS),  # rram train --programming-model
    },
    "recalibrate": {
        "rates": Key("floats", **RATE),
        "batches": Key("int", None, low=1),
        "batch_size": Key("int", 256, low=2),
        "images": Key("int", None, low=1),
        "seed": Key("int", 0, low=0),
    },
    "export": {
        "seed": Key("int", 0, low=0),
    },
    "passes": {
        "passes": Key("str", "standard"),
        "tolerance": Key("float", None, low=0.0),
        "pad_1x1": Key("bool", False),  # rram passes --pad-1x1: pad 1x1 kernels of a model not trained padded
    },
    "quantize": {
        "preset": Key("str", "paper"),
    },
    "validate": {
        "sa1": Key("floats", low=0.0, high=1.0),
        "sa0": Key("float", 0.0, low=0.0, high=1.0),
        "runs": Key("int", CAMPAIGN_RUNS, low=1),
        "images": Key("int", None, low=1),
        "seed": Key("int", 0, low=0),
        "precision": Key("str", "fp32", choices=VALIDATE_PRECISIONS),  # rram validate --precision
        "calibrate": Key("int", None, low=1),
        "place": Key("bool", False),  # rram validate --place: fault-aware placement of every chip
        "ray": Key("str", None),
    },
    "report": {
        "title": Key("str", None),
    },
}
OPTIONAL_SECTIONS = {"train", "export", "passes", "quantize", "report"}


def all_keys() -> list[str]:
    """Every valid dotted key name ("out", "train.epochs", ...)."""
    return [f"{s}.{k}" if s else k for s, keys in SCHEMA.items() for k in keys]


@dataclass
class Config:
    path: Path  # the TOML file
    text: str  # its exact contents, then its base chain's (the report quotes them)
    values: dict  # section -> key -> value, defaults filled in ("" = top level)
    has_train: bool
    out: Path
    data: Path
    weights: Path | None
    folders: dict  # dotted key -> folder of the file that set it (a ``base`` sets some)

    def section(self, name: str) -> dict:
        return self.values[name]

    def folder(self, name: str) -> Path:
        """The folder a relative path in key ``name`` is taken from: that of the file that set it."""
        return self.folders.get(name, self.path.resolve().parent)


def _fail(path: Path, message: str):
    raise UserError(f"{path}: {message}")


def _unknown(path: Path, name: str, valid: list[str]):
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; valid keys are listed in docs/pipeline.md"
    _fail(path, f"unknown key {name!r}{hint}")


def _check_value(path: Path, name: str, key: Key, value):
    def number(v, what):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(path, f"{name} must be {what}, got {v!r}")
        if not math.isfinite(v):
            _fail(path, f"{name} must be finite, got {v!r}")
        if key.low is not None and v < key.low:
            _fail(path, f"{name} must be at least {key.low:g}, got {v!r}")
        if key.high is not None and (v >= key.high if key.high_open else v > key.high):
            _fail(path, f"{name} must be {'below' if key.high_open else 'at most'} {key.high:g}, got {v!r}")
        return v

    if key.kind == "str":
        if not isinstance(value, str) or not value:
            _fail(path, f"{name} must be a non-empty string, got {value!r}")
        factory = name == "model.arch" and isinstance(value, str) and ":" in value  # your own model
        if key.choices and value not in key.choices and not factory:
            _fail(path, f"{name} must be one of {', '.join(key.choices)}, got {value!r}")
        return value
    if key.kind == "bool":
        if not isinstance(value, bool):
            _fail(path, f"{name} must be true or false, got {value!r}")
        return value
    if key.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(path, f"{name} must be an integer, got {value!r}")
        return number(value, "an integer")
    if key.kind == "float":
        return float(number(value, "a number"))
    # "floats": a non-empty list of distinct numbers
    if not isinstance(value, list) or not value:
        _fail(path, f"{name} must be a non-empty list of numbers, e.g. [0.0, 0.1], got {value!r}")
    out = [float(number(v, "a list of numbers")) for v in value]
    if key.kind == "floats" and len(set(out)) != len(out):
        _fail(path, f"{name} repeats a value: {value!r}")
    return out


def _env_path(value: str | None, base: Path, env: str) -> Path | None:
    """A config path (relative to the config's folder), else the environment's (relative to cwd)."""
    if value is not None:
        return (base / Path(value).expanduser()).resolve()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser().resolve()
    return None


def _read(path: Path) -> tuple[dict, str]:
    try:
        text = path.read_text()
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        _fail(path, f"not valid TOML: {e}")
    except (OSError, UnicodeDecodeError) as e:
        _fail(path, f"cannot read it: {e}")


def _check_names(path: Path, raw: dict) -> None:
    """Unknown names first, in the file that has them: a typo explains a missing key."""
    sections = [s for s in SCHEMA if s]
    valid = all_keys() + sections
    for name, value in raw.items():
        if name in SCHEMA[""]:
            continue
        if name not in sections:
            _unknown(path, name, valid)
        if not isinstance(value, dict):
            _fail(path, f"{name} must be a [{name}] table")
        for k in value:
            if k not in SCHEMA[name]:
                _unknown(path, f"{name}.{k}", [f"{name}.{x}" for x in SCHEMA[name]] + valid)


def _layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict, str]]:
    """The file and the files its ``base`` names, in turn: [(path, table, text)], the root base
    first. Each file is checked on its own, so an error names the file that has the fault."""
    raw, text = _read(path)
    _check_names(path, raw)
    if "base" not in raw:
        return [(path, raw, text)]
    ref = raw["base"]
    if not isinstance(ref, str) or not ref:
        _fail(path, f"base must be a non-empty string (a pipeline config's path), got {ref!r}")
    base = (path.resolve().parent / Path(ref).expanduser()).resolve()
    if base in chain + (path.resolve(),):
        _fail(path, f"base {ref!r} leads back to {base.name}: a config cannot be its own base")
    if not base.is_file():
        _fail(path, f"base: no such pipeline config: {base}")
    return _layers(base, chain + (path.resolve(),)) + [(path, raw, text)]


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    if tomllib is None:
        raise UserError("rram pipeline needs Python 3.11 or later (tomllib)")
    if not path.is_file():
        raise UserError(f"pipeline config not found: {path}")
    layers = _layers(path)
    # ``base``: the base's keys are defaults that this file replaces key by key (a table is merged
    # key by key, not replaced whole). Each value remembers the file that set it: its messages
    # name that file, and its paths are relative to that file's folder.
    raw: dict = {}
    origin: dict[str, Path] = {}  # dotted key -> the file that set it
    for file, table, _ in layers:
        for name, value in table.items():
            if name == "base":
                continue
            if name in SCHEMA and name and isinstance(value, dict):  # a [section]: merged key by key
                raw.setdefault(name, {}).update(value)
                origin.update({f"{name}.{k}": file for k in value})
            else:
                raw[name] = value
                origin[name] = file
    if "base" in layers[-1][1]:  # this file's own base only: what values[""]["base"] shows
        raw["base"], origin["base"] = layers[-1][1]["base"], path
    if len(layers) > 1 and "out" not in layers[-1][1]:
        _fail(path, "missing required key 'out': a config with a base sets its own run folder "
                    "(two configs sharing one would overwrite each other's results)")
    onnx = isinstance(raw.get("model"), dict) and raw["model"].get("onnx") is not None
    if onnx:  # an ONNX model skips the PyTorch stages: their sections would say nothing
        given = [s for s in ("train", "recalibrate", "export") if s in raw] + \
            [f"model.{k}" for k in ("checkpoint", "arch", "width", "pad_1x1", "shortcut") if k in raw["model"]]
        if given:
            _fail(path, f"model.onnx starts the flow from an ONNX model (passes, quantize, validate): drop "
                        f"{given[0]}, which belongs to the PyTorch flow")
    values: dict[str, dict] = {s: {} for s in SCHEMA}
    for section, keys in SCHEMA.items():
        given = raw if section == "" else raw.get(section)
        if onnx and section == "recalibrate":
            continue
        if section and given is None and section in OPTIONAL_SECTIONS:
            given = {} if section != "train" else None
        if given is None:
            if section == "train":
                continue
            _fail(path, f"missing required section [{section}]")
        for k, key in keys.items():
            name = f"{section}.{k}" if section else k
            if k in given:
                values[section][k] = _check_value(origin[name], name, key, given[k])
            elif key.default is REQUIRED:
                _fail(path, f"missing required key {name!r}" + (f" in [{section}]" if section else ""))
            else:
                values[section][k] = key.default
    has_train = "train" in raw
    model = values["model"]
    if (model["mean"] is None) != (model["std"] is None) or (model["mean"] is not None and not onnx):
        _fail(path, "model.mean and model.std go together, with model.onnx (a model that records no input "
                    "normalisation; rram export records it for the PyTorch flow)")
    if model["mean"] is not None and (len(model["mean"]) != 3 or len(model["std"]) != 3):
        _fail(path, "model.mean and model.std need three numbers each (r, g, b of images in [0, 1])")
    if onnx:
        values["recalibrate"] = {}
    elif model["arch"] is None:
        _fail(path, "missing required key 'model.arch' in [model] (or model.onnx: an ONNX model instead of a "
                    "checkpoint)")
    if model["checkpoint"] is None and not has_train and not onnx:
        _fail(path, "missing required key 'model.checkpoint' (without [train] there is no model to take "
                    "through the flow)")
    if values[""]["baseline"] is None:
        values[""]["baseline"] = model["checkpoint"] is not None
    elif values[""]["baseline"] and model["checkpoint"] is None:
        _fail(path, "baseline = true needs model.checkpoint (the baseline is the initial checkpoint "
                    "without drop-connect training); set baseline = false to train from scratch")
    factory = model["arch"] is not None and ":" in model["arch"]
    if factory and any(model[k] not in (None, False) for k in ("width", "pad_1x1", "shortcut")):
        _fail(path, "model.width, model.pad_1x1 and model.shortcut are for the built-in models; "
                    f"{model['arch']} builds its own architecture")
    folders = {name: file.resolve().parent for name, file in origin.items()}
    here = path.resolve().parent
    data = _env_path(values[""]["data"], folders.get("data", here), "RRAM_DATA")
    if data is None:
        _fail(path, "no data: set 'data' in the config or the RRAM_DATA environment variable")
    # The report quotes the configuration: with a base, every file of the chain, this one first.
    text = "".join(t if f is path else f"\n# ---- base: {os.path.relpath(f.resolve(), here)}\n{t}"
                   for f, _, t in reversed(layers))
    return Config(path=path, text=text, values=values, has_train=has_train, folders=folders,
                  out=(here / values[""]["out"]).resolve(), data=data,
                  weights=_env_path(values[""]["weights"], folders.get("weights", here), "RRAM_WEIGHTS"))

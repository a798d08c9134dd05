"""Checkpoints: the toolchain's own format, import of foreign files, and named public weights.

Own format (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "rram-toolchain-checkpoint", "version": 1,
     "model": ModelSpec.to_dict(), "normalization": {"mean": [...], "std": [...]},
     "state_dict": {...},
     "bn_stats": {"0.1": {<bn buffer name>: tensor, ...}, ...},   # per-rate BN statistics (optional)
     "meta": {...}}                                                 # training info (optional)

Foreign files: a bare state dict or ``{"state_dict": ...}`` (akamaster's), with an optional
``module.`` prefix from DataParallel. The architecture comes from ``--model`` (a built-in name or
``package.module:factory``) or from the named registry entry whose SHA-256 prefix matches the file.
Our own format records a factory model's ``package.module:factory`` for checking only: nothing a
file says is imported or called, so such a checkpoint is built only with ``--model`` naming the
same factory (a different one is refused). A foreign file records no image size: it is taken
as 32x32 until a command with data (``eval``, ``recalibrate``, ``train``) adopts the data's (``Checkpoint.imported``).
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from runtime.fileio import atomic_path, file_sha256

from .data import IMAGE_SIZE, IMAGENET_NORM, Normalization
from .errors import UserError
from .models import ModelSpec, build_model, call_factory, is_factory, probe_outputs, resolve_factory

FORMAT = "rram-toolchain-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    spec: ModelSpec
    url: str
    filename: str
    sha256_prefix: str
    normalization: Normalization
    note: str = ""


KNOWN_CHECKPOINTS = {
    "resnet20-akamaster": KnownCheckpoint(
        name="resnet20-akamaster",
        spec=ModelSpec("resnet20", 1.0, "A"),
        url="https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet20-12fca82f.th",
        filename="resnet20-12fca82f.th",
        sha256_prefix="12fca82f",
        normalization=IMAGENET_NORM,
        note="91.78% on original CIFAR-10 test set; BSD-2-Clause (c) 2018 Yerlan Idelbayev",
    ),
}


@dataclass
class Checkpoint:
    spec: ModelSpec
    normalization: Normalization
    state_dict: dict
    bn_stats: dict  # rate string -> {buffer name: tensor}
    meta: dict
    source: str = ""
    imported: bool = False  # read from a foreign file just now: its image size is not recorded
    width_recorded: bool = True  # False: a foreign file of unknown origin, its width is what --width says
    # False: the spec's ``package.module:factory`` was read from the file, not given by --model (or a
    # pipeline config): a file names its factory for checking only, so build() refuses to call it
    factory_given: bool = True

    def build(self) -> nn.Module:
        """The model with the checkpoint's weights (and its own BN statistics)."""
        if self.spec.is_factory and not self.factory_given:
            raise UserError(f"{self.source or 'the checkpoint'} records the model factory {self.spec.name}; "
                            f"code is never run on a checkpoint's word: pass --model {self.spec.name} to build it")
        model = build_model(self.spec)
        load_state_dict_checked(model, self.state_dict, self.spec, self.source)
        model.eval()
        return model

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.spec.to_dict(),
                "normalization": self.normalization.to_dict(), "state_dict": self.state_dict,
                "bn_stats": self.bn_stats, "meta": self.meta}


def _weights_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("RRAM_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def resolve_checkpoint(ref: str | os.PathLike, *, download: bool = False) -> tuple[Path, KnownCheckpoint | None]:
    """A path; a model of the repository's zoo (``toolchain.zoo``); or a registry name looked up in
    RRAM_WEIGHTS, then the torch hub cache, then online."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_file():
            raise UserError(f"checkpoint is not a file: {path}")
        return path, None
    from .zoo import names as zoo_names, zoo_path

    in_zoo = zoo_path(str(ref))  # a model of the repository's zoo (zoo/manifest.json), sha256 checked
    if in_zoo is not None:
        return in_zoo, None
    known = KNOWN_CHECKPOINTS.get(str(ref))
    if known is None:
        hint = f"; known names: {', '.join([*KNOWN_CHECKPOINTS, *zoo_names()])}"
        raise UserError(f"checkpoint not found: {ref}{hint}")
    for d in _weights_dirs():
        candidate = d / known.filename
        if candidate.is_file():
            _check_hash(candidate, known)
            return candidate, known
    if not download:
        raise UserError(f"{known.name}: {known.filename} not found in RRAM_WEIGHTS or the torch hub "
                        f"cache; set RRAM_WEIGHTS to its folder, or pass --download when online")
    dst = Path(torch.hub.get_dir()) / "checkpoints" / known.filename
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(known.url, str(dst), hash_prefix=known.sha256_prefix)
    except Exception as e:  # network errors come in many types
        raise UserError(f"cannot download {known.name} from {known.url}: {e}") from None
    return dst, known


def _check_hash(path: Path, known: KnownCheckpoint) -> None:
    digest = file_sha256(path)
    if not digest.startswith(known.sha256_prefix):
        raise UserError(f"{path}: SHA-256 {digest[:8]}... does not match {known.name} "
                        f"({known.sha256_prefix}...)")


def _torch_load(path: Path):
    with open(path, "rb") as fh:
        head = fh.read(2)
    # torch.save writes a zip archive ("PK"); legacy files start with a pickle protocol byte.
    if not (head == b"PK" or head[:1] == b"\x80"):
        raise UserError(f"{path} is not a PyTorch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        # torch's weights_only unpickler refuses code and foreign objects naming the GLOBAL it
        # will not load; other "Weights only load failed" errors ("Unsupported operand") are damage
        if "GLOBAL" in text or "Unsupported global" in text or "Unsupported class" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise UserError(f"{path} holds code or objects{what} that weights_only loading refuses: "
                            f"refused (checkpoints load with weights_only=True)") from None
        raise UserError(f"corrupt or unreadable checkpoint {path}: not a valid pickle") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"corrupt or unreadable checkpoint {path}: {msg[:200]}") from None


def load_checkpoint(ref: str | os.PathLike, *, model: str | None = None, width: float | None = None,
                    shortcut: str | None = None, padded: bool | None = None,
                    normalization: Normalization | None = None, download: bool = False) -> Checkpoint:
    """Load our own checkpoint or import a foreign one; explicit options override/complete it."""
    if model is not None:
        ModelSpec(model)  # an unknown name fails here, before any file is read
        if is_factory(model):
            resolve_factory(model)  # so does a factory that does not import
    path, known = resolve_checkpoint(ref, download=download)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = _own_checkpoint(obj, path)
        if model is not None and model != ckpt.spec.name:
            raise UserError(f"checkpoint {path} holds a {ckpt.spec.name}, not a {model}")
        # a factory named by the file alone is not imported or called (build() refuses it): the
        # name is checked against --model, which is what says which code runs
        ckpt.factory_given = model is not None
        if normalization is not None and normalization != ckpt.normalization:
            raise UserError(f"{path} records its own input normalisation {ckpt.normalization.to_dict()}; "
                            f"--mean/--std are for foreign checkpoints")
        return ckpt

    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} is not a model checkpoint (no state dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    _check_finite(state, f"checkpoint {path}")
    if known is None:  # a path: recognise a registry file by its hash
        digest = file_sha256(path)
        known = next((k for k in KNOWN_CHECKPOINTS.values() if digest.startswith(k.sha256_prefix)), None)
    if model is None and known is None:
        raise UserError(f"{path} is a foreign checkpoint: pass --model to say its architecture")
    if is_factory(model or ""):
        if width is not None or shortcut is not None:
            raise UserError(f"--width and --shortcut are for the built-in models; {model} builds its own "
                            f"architecture")
        # its output count is the model's own: measured on a CIFAR-sized batch (no data here)
        classes = probe_outputs(call_factory(model), IMAGE_SIZE, f"--model {model}")
        spec = ModelSpec(model, padded=bool(padded), num_classes=classes)
    else:
        base = known.spec if known is not None else ModelSpec(model)
        spec = ModelSpec(model or base.name,
                         width if width is not None else base.width,
                         shortcut or base.shortcut,
                         bool(padded) if padded is not None else base.padded)
    norm = normalization or (known.normalization if known else None)
    if norm is None:
        raise UserError(f"{path} records no input normalisation: pass --mean and --std")
    return Checkpoint(spec, norm, state, {}, {"imported_from": str(path)}, str(path), imported=True,
                      width_recorded=known is not None or is_factory(spec.name))


def adopt_image_size(ckpt: Checkpoint, size: tuple[int, int]) -> None:
    """A checkpoint imported from a foreign file records no image size: it takes its data's
    (``size``, H x W), so that the checkpoints and ONNX models written from it record that one."""
    if ckpt.imported and tuple(size) != ckpt.spec.image_size:
        ckpt.spec = replace(ckpt.spec, image_size=tuple(size))


def _check_finite(tensors: dict, where: str) -> None:
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{where}: {key!r} holds NaN or Inf values")


def _own_checkpoint(obj: dict, path: Path) -> Checkpoint:
    """Our format, every field checked: a damaged or hand-edited file is a one-line error here,
    not a KeyError (or a silently wrong export) later."""
    def bad(why: str) -> UserError:
        return UserError(f"{path} is not a valid rram checkpoint: {why}")

    for key in ("model", "normalization", "state_dict"):
        if key not in obj:
            raise bad(f"no {key!r} entry")
    try:
        spec = ModelSpec.from_dict(obj["model"])
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise bad(f"unreadable 'model' entry ({e})") from None
    try:
        norm = Normalization.from_dict(obj["normalization"])
    except (TypeError, ValueError, KeyError, AttributeError):
        raise bad("'normalization' needs 'mean' and 'std', three numbers each, finite, std > 0") from None
    state = obj["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise bad("'state_dict' is not a dict of tensors")
    _check_finite(state, f"checkpoint {path}")
    bn_stats = obj.get("bn_stats") or {}
    if not isinstance(bn_stats, dict):
        raise bad("'bn_stats' is not a dict of rate -> statistics")
    for rate, table in bn_stats.items():
        try:
            r = float(rate)
        except (TypeError, ValueError):
            raise bad(f"BN rate {rate!r} is not a number") from None
        if not 0.0 <= r < 1.0:
            raise bad(f"BN rate {rate} is outside [0, 1)")
        if not isinstance(table, dict) or not all(torch.is_tensor(v) for v in table.values()):
            raise bad(f"the BN statistics of rate {rate} are not a dict of tensors")
        for key, t in table.items():
            if key not in state or tuple(state[key].shape) != tuple(t.shape):
                raise bad(f"the BN statistics of rate {rate} hold {key!r}"
                          + (f" of shape {tuple(t.shape)}, the model's is {tuple(state[key].shape)}"
                             if key in state else ", not a buffer of the model"))
        _check_finite(table, f"checkpoint {path}, BN statistics of rate {rate}")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise bad("'meta' is not a dict")
    return Checkpoint(spec, norm, state, dict(bn_stats), dict(meta), str(path))


def load_state_dict_checked(model: nn.Module, state: dict, spec: ModelSpec, source: str = "") -> None:
    """load_state_dict, with a one-line error naming the first mismatched key."""
    own = model.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 (akamaster's) have no BN step counters; they only
    # matter for momentum=None BN, so take the model's own.
    state = dict(state)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    where = f"checkpoint {source}" if source else "checkpoint"
    for key, value in own.items():
        if key not in state:
            raise UserError(f"{where} does not match {spec.describe()}: missing key {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserError(f"{where} does not match {spec.describe()}: key {key!r} has shape "
                            f"{tuple(state[key].shape)}, the model expects {tuple(value.shape)}")
    for key in state:
        if key not in own:
            raise UserError(f"{where} does not match {spec.describe()}: unexpected key {key!r}")
    model.load_state_dict(state, strict=True)


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write atomically (temporary name, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(ckpt.to_dict(), tmp)
        except RuntimeError as e:
            # torch's zip writer reports a failed write (a full disk: "[enforce fail at
            # inline_container.cc] unexpected pos ...") as RuntimeError, not OSError
            why = (str(e).strip().splitlines() or ["RuntimeError"])[0][:200]
            if shutil.disk_usage(tmp.parent).free < (1 << 20):
                why = f"no space left on the device ({why})"
            raise UserError(f"cannot write {path}: {why}") from None
    return path


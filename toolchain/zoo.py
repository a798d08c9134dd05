"""The model zoo (issue 36; zoo/README.md): trained checkpoints committed in the repository's
``zoo/`` folder with a manifest, loadable by name wherever a checkpoint is read (``rram eval
NAME``, ``export``, ``recalibrate``, ``train NAME`` to fine-tune, the pipeline's
``model.checkpoint``), like ``resnet20-akamaster``. Each entry records how the model was made
(training config and its hash, seed, epochs, precision, hardware, git commit, package versions)
and its fault-free test accuracy; the file's sha256 is checked on every load."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import UserError

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
MANIFEST = "manifest.json"
FORMAT = "rram-zoo"
VERSION = 1
REQUIRED = ("file", "sha256", "arch", "width", "drop_rate", "epochs", "seed", "precision", "training",
            "training_sha256", "data_sha256", "hardware", "git_commit", "packages", "fault_free")


def manifest(zoo: Path = ZOO_DIR) -> dict:
    """{name: entry} of the zoo's manifest ({} without one), each entry checked for its fields."""
    path = zoo / MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"corrupt model zoo manifest {path}: {e}") from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION or not isinstance(doc.get("models"), dict):
        raise UserError(f"{path} is not a version-{VERSION} model zoo manifest")
    for name, entry in doc["models"].items():
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise UserError(f"{path}: model {name!r} lacks {', '.join(missing)}")
    return doc["models"]


def zoo_path(name: str, zoo: Path = ZOO_DIR) -> Path | None:
    """The checkpoint file of zoo model ``name`` (its sha256 checked), or None when not in the zoo."""
    entry = manifest(zoo).get(name)
    if entry is None:
        return None
    path = zoo / entry["file"]
    if not path.is_file():
        raise UserError(f"zoo model {name}: {path} is missing (a shallow or partial checkout?)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise UserError(f"zoo model {name}: {path} has sha256 {digest[:12]}, the manifest says "
                        f"{entry['sha256'][:12]}")
    return path


def names(zoo: Path = ZOO_DIR) -> list[str]:
    return sorted(manifest(zoo))


STATE_DIR = "state"  # zoo/state/NAME/last.pt: the resume point of a training in progress
# A resume point over this size is kept as numbered parts (last.pt.0, last.pt.1, ...; the entry's
# "parts"): the usual git host refuses a file over 100 MB, and MobileNetV2 at width 1 with every 1x1
# padded to 3x3 (19 M weights) has a 154 MB resume point (weights + momentum buffers, float32)
PART_BYTES = 95 * 2**20
IN_PROGRESS_REQUIRED = ("file", "sha256", "status", "epoch", "epochs", "training", "training_sha256", "command",
                        "hardware", "git_commit", "packages", "updated")


def in_progress(zoo: Path = ZOO_DIR) -> dict:
    """{name: entry} of the trainings in progress (the manifest's ``in_progress``; zoo/README.md):
    each a resume point ``state/NAME/last.pt`` that another machine continues with ``rram train
    ... --resume``; {} without any."""
    path = zoo / MANIFEST
    if not path.is_file():
        return {}
    manifest(zoo)  # the format checks
    entries = json.loads(path.read_text()).get("in_progress", {})
    for name, entry in entries.items():
        missing = [k for k in IN_PROGRESS_REQUIRED if k not in entry]
        if missing:
            raise UserError(f"{path}: training in progress {name!r} lacks {', '.join(missing)}")
    return entries


def state_bytes(entry: dict, zoo: Path = ZOO_DIR) -> bytes:
    """The resume point of an ``in_progress`` entry: its file, or its parts joined in order (with
    ``parts``, ``file`` is the name the joined parts restore to, not a file in the zoo)."""
    files = [zoo / name for name in entry.get("parts", [entry["file"]])]
    missing = [f.relative_to(zoo).as_posix() for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{zoo}: the resume point's {', '.join(missing)} missing (a partial checkout?)")
    return b"".join(f.read_bytes() for f in files)

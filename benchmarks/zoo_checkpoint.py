"""Keep a long training's resume point in the model zoo (zoo/README.md; issue 36), so that another
machine can continue it when this one goes away.

    # save: RUN/last.pt -> zoo/state/NAME/last.pt (or its parts), manifest entry "in progress, epoch k of n"
    PYTHONPATH=. python benchmarks/zoo_checkpoint.py save NAME RUN [--commit] [--watch SECONDS] [--note TEXT]
    # continue elsewhere: zoo/state/NAME/last.pt -> OUT/last.pt, and the `rram train ... --resume` to run
    PYTHONPATH=. python benchmarks/zoo_checkpoint.py restore NAME OUT

`save` copies the run folder's `last.pt` (the weights, the optimizer's momentum buffers and the
schedule's position: what an exact resume needs; all float32) and records in zoo/manifest.json,
under `in_progress`, the epoch reached, the run's training record and its sha256, the `rram train`
command that continues it, this machine's CPU, the git commit and package versions. With
`--commit` it also commits zoo/state/NAME and the manifest (only those paths); with `--watch S` it
checks every S seconds and saves (and commits) each new epoch until the run has all its epochs.
A resume point over 95 MB (the usual git host's limit per file) is kept as parts, last.pt.0,
last.pt.1, ..., listed in the entry's ``parts``; ``restore`` joins them.
`restore` checks the file's sha256 against the manifest and prints the command. A finished
training goes into the zoo with benchmarks/zoo_add.py, which drops its `in_progress` entry.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runtime.fileio import atomic_write_bytes  # noqa: E402
from runtime.provenance import cpu  # noqa: E402
from toolchain.errors import UserError  # noqa: E402
from toolchain.zoo import (  # noqa: E402
    FORMAT,
    MANIFEST,
    PART_BYTES,
    STATE_DIR,
    VERSION,
    ZOO_DIR,
    in_progress,
    state_bytes,
)

# VGG13-BN at width 1 (9.4 M weights) has a 75 MB resume point (weights + momentum buffers), MobileNetV2
# at width 1 padded 154 MB (kept in parts of PART_BYTES each, the git host's limit per file); over this,
# a resume point means something else (another dtype, a stray tensor)
MAX_BYTES = 4 * PART_BYTES
PACKAGES = ("torch", "numpy", "onnx", "onnxruntime")


def train_command(record: dict, out: str, eval_images: int | None = None) -> str:
    """The `rram train` command that continues a run of this training record in OUT (and, where the
    run measured each epoch on a subset, on the same number of images)."""
    m = record["model"]
    argv = ["rram", "train", *([record["init"]] if record.get("init") else []), "--model", m["name"]]
    if m.get("width", 1.0) != 1.0:
        argv += ["--width", f"{m['width']:g}"]
    if m.get("shortcut", "A") != "A":
        argv += ["--shortcut", m["shortcut"]]
    if m.get("padded"):
        argv.append("--pad-1x1")
    argv += ["--drop-rate", repr(record["drop_rate"]), "--epochs", str(record["epochs"]),
             "--batch-size", str(record["batch_size"]), "--lr", repr(record["lr"]),
             "--momentum", repr(record["momentum"]), "--weight-decay", repr(record["weight_decay"]),
             "--seed", str(record["seed"]), "--train-precision", record.get("precision", "fp32")]
    if record.get("images"):
        argv += ["--train-images", str(record["images"])]
    argv += [flag for key, flag in (("include_first", "--no-drop-first"), ("include_last", "--no-drop-last"))
             if not record.get(key, True)]
    if record.get("hold_out_val"):
        argv.append("--hold-out-val")
    if eval_images:
        argv += ["--eval-images", str(eval_images)]
    return f'{shlex.join(argv)} --data "$RRAM_DATA" --out {shlex.quote(out)} --resume'


def _state(run: Path):
    from toolchain.checkpoints import load_checkpoint

    last = run / "last.pt"
    if not last.is_file():
        raise UserError(f"{run} holds no last.pt: not an `rram train --out` folder, or no epoch finished yet")
    if last.stat().st_size > MAX_BYTES:
        raise UserError(f"{last} is {last.stat().st_size / 2**20:.0f} MB: over the zoo's {MAX_BYTES // 2**20} MB")
    ckpt = load_checkpoint(last)
    wide = sorted({str(t.dtype) for t in ckpt.state_dict.values() if t.is_floating_point()} - {"torch.float32"})
    if wide:
        raise UserError(f"{last} holds {', '.join(wide)} weights: the zoo keeps float32 only")
    state = ckpt.meta.get("train_state")
    if not state or "config" not in ckpt.meta:
        raise UserError(f"{last} has no resume state (train_state): not written by `rram train`")
    return last, ckpt.meta["config"], int(state["epoch"]), ckpt.meta.get("eval_images")


def _manifest(zoo: Path) -> dict:
    path = zoo / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"format": FORMAT, "version": VERSION, "models": {}}


def save(name: str, run: Path, zoo: Path, note: str) -> tuple[int, int]:
    import torch

    last, record, epoch, eval_images = _state(run)
    dest = zoo / STATE_DIR / name / "last.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = last.read_bytes()
    count = -(-len(data) // PART_BYTES)  # ceil
    parts = [dest.with_name(f"last.pt.{i}") for i in range(count)] if count > 1 else []
    # The new state first, then the manifest, then the previous save's leftovers: a kill in between
    # leaves the previous state's files beside the new ones, not a manifest naming files that are gone.
    # (Parts rewritten in place are each replaced atomically, not all at once: the committed state is
    # the one to trust after a kill mid-save, and `restore` checks the sha256 of the whole.)
    for i, part in enumerate(parts):
        atomic_write_bytes(part, data[i * PART_BYTES:(i + 1) * PART_BYTES])
    if not parts:
        atomic_write_bytes(dest, data)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = _manifest(zoo)
    doc.setdefault("in_progress", {})[name] = {
        "file": dest.relative_to(zoo).as_posix(), "sha256": hashlib.sha256(data).hexdigest(),
        **({"parts": [part.relative_to(zoo).as_posix() for part in parts]} if parts else {}),
        "status": f"in progress, epoch {epoch} of {record['epochs']}", "epoch": epoch, "epochs": record["epochs"],
        "training": record, "training_sha256": hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest(),
        "command": train_command(record, f"out/{name}", eval_images),
        "hardware": f"{cpu()}, {torch.get_num_threads()} threads", "git_commit": commit,
        "packages": {p: metadata.version(p) for p in PACKAGES},
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": note}
    atomic_write_bytes(zoo / MANIFEST, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    for stale in dest.parent.glob("last.pt*"):  # a previous save's file or parts that this one did not rewrite
        if stale not in (parts or [dest]):
            stale.unlink()
    where = f"zoo/{dest.relative_to(zoo)}" + (f" ({len(parts)} parts)" if parts else "")
    print(f"{where}: {name} in progress, epoch {epoch} of {record['epochs']}")
    return epoch, record["epochs"]


def git_commit(name: str, zoo: Path, epoch: int, epochs: int) -> None:
    paths = [str(zoo / STATE_DIR / name), str(zoo / MANIFEST)]
    subprocess.run(["git", "add", "--", *paths], cwd=ROOT, check=True)
    subprocess.run(["git", "commit", "-m", f"zoo: {name} in progress, epoch {epoch} of {epochs}", "--", *paths],
                   cwd=ROOT, check=True)


def restore(name: str, out: Path, zoo: Path) -> str:
    entry = in_progress(zoo).get(name)
    if entry is None:
        raise UserError(f"no training in progress named {name!r} in {zoo / MANIFEST}")
    data = state_bytes(entry, zoo)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        what = ", ".join(entry.get("parts", [entry["file"]]))
        raise UserError(f"{zoo}: {what}: sha256 differs from the manifest's (a partial checkout?)")
    dest = out / "last.pt"
    if dest.exists():
        raise UserError(f"{dest} exists: restore into an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, data)
    command = entry["command"].replace(f"out/{name}", shlex.quote(str(out)))
    print(f"{dest}: {entry['status']}; continue with:\n  {command}")
    return command


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="action", required=True)
    s = sub.add_parser("save", help="RUN/last.pt -> zoo/state/NAME/last.pt")
    s.add_argument("name")
    s.add_argument("run", type=Path, help="the `rram train --out` folder")
    s.add_argument("--commit", action="store_true", help="git commit zoo/state/NAME and the manifest")
    s.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="save each new epoch, checking every SECONDS, until the run has all its epochs")
    s.add_argument("--note", default="")
    r = sub.add_parser("restore", help="zoo/state/NAME/last.pt -> OUT/last.pt, and the command to continue")
    r.add_argument("name")
    r.add_argument("out", type=Path)
    for p in (s, r):
        p.add_argument("--zoo", type=Path, default=ZOO_DIR, help=argparse.SUPPRESS)  # tests
    args = ap.parse_args(argv)
    try:
        if args.action == "restore":
            restore(args.name, args.out, args.zoo)
            return 0
        saved = None
        while True:
            if saved is None or _state(args.run)[2] != saved:  # a new epoch finished
                saved, epochs = save(args.name, args.run, args.zoo, args.note)
                if args.commit:
                    git_commit(args.name, args.zoo, saved, epochs)
            if args.watch is None or saved >= epochs:
                return 0
            time.sleep(args.watch)
    except UserError as e:
        print(f"zoo_checkpoint: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

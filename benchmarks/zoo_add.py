"""Commit a finished training to the model zoo (zoo/README.md; issue 36): copies RUN/model.pt to
zoo/NAME.pt and records in zoo/manifest.json how it was made (the run's training config and its
sha256, seed, epochs, precision, the data split's digest, this machine's CPU, the git commit,
package versions) and its fault-free accuracy on the test split (measured here with `rram eval`
on all test images). Then `git add zoo/ && git commit`: a finished model is never lost again. A
resume point kept while it trained (benchmarks/zoo_checkpoint.py) is dropped.

    PYTHONPATH=. python benchmarks/zoo_add.py NAME RUN_FOLDER --data ../shared/data/cifar10-jpeg [--note TEXT]
        [--checkpoint RUN/recalibrated.pt --bn-rate 0]   # a model with BN per fault rate (rram recalibrate)
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.fileio import atomic_write_bytes  # noqa: E402
from runtime.provenance import cpu  # noqa: E402
from toolchain.zoo import FORMAT, MANIFEST, STATE_DIR, VERSION, ZOO_DIR  # noqa: E402

PACKAGES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("run", type=Path, help="the `rram train --out` folder (model.pt, log.json)")
    ap.add_argument("--data", required=True, help="the CIFAR-10 root the accuracy is measured on")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="the file to commit (default: RUN/model.pt); e.g. `rram recalibrate`'s output, which "
                         "holds the BN statistics per chip fault rate of a drop-connect model")
    ap.add_argument("--bn-rate", default=None,
                    help="the BN statistics the fault-free accuracy is measured with (as rram eval --bn-rate; a "
                         "drop-connect model's own statistics were gathered under its masks: give 0)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    import torch

    from toolchain.checkpoints import load_checkpoint
    from toolchain.cli import run as rram
    from toolchain.data import load_split
    from toolchain.errors import RramError

    model_pt = args.checkpoint or args.run / "model.pt"
    ckpt = load_checkpoint(model_pt)
    rates = ", ".join(sorted(ckpt.bn_stats, key=float))
    if ckpt.bn_stats and args.bn_rate is None:  # else its training-time statistics, gathered under masks
        sys.exit(f"zoo_add: {model_pt} holds BN statistics per fault rate ({rates}): give --bn-rate (0 for the "
                 "fault-free accuracy)")
    if args.bn_rate is not None and not any(float(r) == float(args.bn_rate) for r in ckpt.bn_stats):
        sys.exit(f"zoo_add: {model_pt} has no BN statistics for rate {args.bn_rate} (it has: {rates or 'none'})")
    trained = load_checkpoint(args.run / "model.pt")  # what the training recorded
    train = trained.meta.get("config") or {}
    log = json.loads((args.run / "log.json").read_text())
    digest = hashlib.sha256(json.dumps(train, sort_keys=True).encode()).hexdigest()
    test = load_split(args.data, "test")
    data_sha = hashlib.sha256(test.images.tobytes() + test.labels.astype("int64").tobytes()).hexdigest()
    try:  # fault-free, all test images, before the zoo changes
        with contextlib.redirect_stdout(io.StringIO()) as out:
            failed = rram(["eval", str(model_pt), "--data", args.data, "--json",
                           *(["--bn-rate", args.bn_rate] if args.bn_rate is not None else [])])
    except (RramError, OSError) as e:
        sys.exit(f"zoo_add: rram eval {model_pt}: {e}; nothing added")
    if failed:
        sys.exit(f"zoo_add: rram eval {model_pt} failed ({failed}); nothing added")
    accuracy = json.loads(out.getvalue())["accuracy"]
    ZOO_DIR.mkdir(exist_ok=True)
    dest = ZOO_DIR / f"{args.name}.pt"
    atomic_write_bytes(dest, model_pt.read_bytes())  # a killed copy leaves no half model in the zoo
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    entry = {
        "file": dest.name, "sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
        "arch": ckpt.spec.name, "width": ckpt.spec.width, "shortcut": getattr(ckpt.spec, "shortcut", None),
        "drop_rate": trained.meta.get("drop_rate"), "epochs": len(log.get("epochs", [])), "seed": train.get("seed"),
        "precision": train.get("precision", "fp32"), "training": train, "training_sha256": digest,
        "data_sha256": data_sha, "hardware": f"{cpu()}, {torch.get_num_threads()} threads",
        "git_commit": commit, "packages": {p: metadata.version(p) for p in PACKAGES},
        "fault_free": {"accuracy": accuracy, "split": "test", "images": len(test), "bn_rate": args.bn_rate},
        "bn_rates": sorted(ckpt.bn_stats, key=float), "note": args.note,
    }
    path = ZOO_DIR / MANIFEST
    doc = json.loads(path.read_text()) if path.is_file() else {"format": FORMAT, "version": VERSION, "models": {}}
    doc["models"][args.name] = entry
    if doc.get("in_progress", {}).pop(args.name, None) is not None:  # its resume point is done with
        shutil.rmtree(ZOO_DIR / STATE_DIR / args.name, ignore_errors=True)
    atomic_write_bytes(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    print(f"zoo/{dest.name}: {entry['sha256'][:12]}, fault-free {100 * accuracy:.2f}% on {len(test)} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

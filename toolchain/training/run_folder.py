"""The run folder ``--out``: which run it holds (resume or refuse), and what each epoch writes.

    OUT/last.pt    own checkpoint format + meta["train_state"] (optimizer, schedule, epoch): resume
    OUT/model.pt   the same model without the optimizer state: what eval/recalibrate/export read
    OUT/log.json   {"config": {...}, "epochs": [{"epoch", "train_loss", "train_acc", "test_acc", ...}]}
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch.nn as nn

from runtime.fileio import atomic_write_json

from ..checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from ..dropconnect import plain_state_dict
from ..errors import UserError
from ..models import ModelSpec
from .config import ADDED_LATER, TrainConfig

LAST = "last.pt"
MODEL = "model.pt"
LOG = "log.json"


def previous_run(cfg: TrainConfig, out: Path, record: dict) -> Checkpoint | None:
    """The checkpoint to resume from, or None for a fresh start. Refuses an existing run unless
    resuming, and a run of other options unless --auto-resume (which deletes it)."""
    last = out / LAST
    if not last.exists():
        if cfg.resume and not cfg.auto_resume:
            raise UserError(f"nothing to resume: {out} does not exist" if not out.is_dir()
                            else f"nothing to resume: no {LAST} in {out}")
        return None
    if not (cfg.resume or cfg.auto_resume):
        raise UserError(f"{out} already holds a training run ({LAST}): pass --resume to continue "
                        f"it, or choose another --out")
    prev = load_checkpoint(last)
    prev_record = prev.meta.get("config", {})
    if prev.spec != cfg.spec:
        differs = f"{out} belongs to another model: {prev.spec.describe()}, not {cfg.spec.describe()}"
    else:
        recorded = {key: prev_record.get(key, ADDED_LATER.get(key)) for key in record}
        differs = next((f"{out} was trained with {key}={recorded[key]!r}, not {record[key]!r}"
                        for key in record  # every option that shapes the run (the model: above)
                        if key != "model" and recorded[key] != record[key]), None)
    if differs is None:
        return prev
    if not cfg.auto_resume:
        raise UserError(f"{differs}: resume with the same options")
    print(f"note: {differs}; starting afresh", file=sys.stderr)  # --auto-resume replaces the run
    for name in (LAST, MODEL, LOG):
        (out / name).unlink(missing_ok=True)
    return None


def complete_finished_run(out: Path, prev: Checkpoint, record: dict, world: int) -> None:
    """A finished run copied in with its last.pt alone (benchmarks/study_on_gpu.py ships one copy
    of the weights, not two) gets model.pt and log.json back: model.pt is last.pt's model without
    the resume state, exactly as ``save_epoch`` writes it."""
    meta = {k: v for k, v in prev.meta.items() if k != "train_state"}
    if not (out / MODEL).is_file():
        save_checkpoint(Checkpoint(prev.spec, prev.normalization, prev.state_dict, {}, meta), out / MODEL)
    if not (out / LOG).is_file():
        atomic_write_json(out / LOG, {"config": record, "world_size": world, "epochs": meta.get("history", [])},
                          indent=2)


def save_epoch(out: Path, model: nn.Module, spec: ModelSpec, norm, record: dict, history: list,
               epoch: int, opt, sched, cfg: TrainConfig, world: int) -> None:
    state = plain_state_dict(model)
    meta = {"config": record, "drop_rate": cfg.drop_rate, "epoch": epoch, "history": history,
            "trained_with": "rram train",
            # not in the record (it shapes no weight), but a resume should measure its epochs alike
            "eval_images": cfg.eval_images}
    full = dict(meta, train_state={"epoch": epoch, "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict()})
    # last.pt is the resume point and is written first; model.pt and log.json follow from it
    save_checkpoint(Checkpoint(spec, norm, state, {}, full), out / LAST)
    save_checkpoint(Checkpoint(spec, norm, state, {}, meta), out / MODEL)
    atomic_write_json(out / LOG, {"config": record, "world_size": world, "epochs": history}, indent=2)

"""Fault-aware training: SGD + momentum + weight decay, cosine schedule, drop-connect on every
Conv2d/Linear weight, batch augmentation on tensors, a checkpoint every epoch with resume, and
DistributedDataParallel when started by ``torchrun`` (gloo on CPU, nccl on GPU).

Output folder::

    OUT/last.pt    own checkpoint format + meta["train_state"] (optimizer, schedule, epoch): resume
    OUT/model.pt   the same model without the optimizer state: what eval/recalibrate/export read
    OUT/log.json   {"config": {...}, "epochs": [{"epoch", "train_loss", "train_acc", "test_acc", ...}]}

Every random draw (data order, augmentation, masks) comes from generators seeded from ``seed``,
the epoch and the process rank, so a run resumed after epoch k repeats epochs k+1.. exactly.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from runtime.fileio import atomic_write_json

from .checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from .data import CIFAR10_NORM, Normalization, Split, check_for_model, iterate_batches, load_split
from .dropconnect import add_dropconnect, check_rate, derive_seed, plain_state_dict, sa1_faults, sample_sa1_masks
from .errors import UserError
from .evaluate import accuracy
from .models import ModelSpec, build_model, pad_1x1_to_3x3

LAST = "last.pt"
MODEL = "model.pt"
LOG = "log.json"


@dataclass
class TrainConfig:
    spec: ModelSpec
    drop_rate: float
    epochs: int
    out: str
    data: str | None = None
    init: str | None = None
    init_normalization: Normalization | None = None  # for a foreign --init that records none
    auto_resume: bool = False  # resume a run of the same options, replace one of other options
    batch_size: int = 128
    lr: float | None = None  # default: 0.1 from scratch, 0.01 when fine-tuning (--init)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    images: int | None = None
    eval_images: int | None = None
    include_first: bool = True
    include_last: bool = True
    resume: bool = False
    device: str = "auto"
    precision: str = "fp32"  # "bf16": forward under bfloat16 autocast (AMX/AVX512-BF16 CPUs, GPUs)
    cache_dir: str | None = None
    use_cache: bool = True
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.01 if self.init else 0.1

    def record(self) -> dict:
        """What defines the run (a resume must match it)."""
        return {"model": self.spec.to_dict(), "drop_rate": self.drop_rate, "epochs": self.epochs,
                "init": self.init, "batch_size": self.batch_size, "lr": self.effective_lr(),
                "momentum": self.momentum, "weight_decay": self.weight_decay, "seed": self.seed,
                "images": self.images, "include_first": self.include_first,
                "include_last": self.include_last, "schedule": "cosine (per step)",
                "rescale": False, "precision": self.precision}


# Options added after runs were recorded: a record without the key was trained with this value.
# The pipeline leaves them out of its own step record at these values too (pipeline/build.py).
ADDED_LATER = {"precision": "fp32"}
PRECISIONS = ("fp32", "bf16")


def validate(cfg: TrainConfig) -> None:
    check_rate(cfg.drop_rate, "drop rate")
    if cfg.epochs < 1:
        raise UserError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 2:
        raise UserError(f"batch size must be at least 2 (BatchNorm), got {cfg.batch_size}")
    if cfg.effective_lr() <= 0 or not math.isfinite(cfg.effective_lr()):
        raise UserError(f"learning rate must be positive, got {cfg.effective_lr()}")
    for name, v in (("momentum", cfg.momentum), ("weight decay", cfg.weight_decay)):
        if not math.isfinite(v) or v < 0:
            raise UserError(f"{name} must be a finite number >= 0, got {v}")
    dev = resolve_device(cfg.device)
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.precision == "bf16" and not torch.amp.is_autocast_available(torch.device(dev).type):
        raise UserError(f"--precision bf16: torch has no autocast for the {dev} device here (use fp32)")


def bf16_is_slow_here(device_type: str) -> bool:
    """True on an x86 CPU with neither AMX nor AVX512-BF16: there bf16 autocast has no hardware
    and runs far slower than fp32 (measured on 2 AVX2 cores of an AMD EPYC, 2x-wide ResNet20 option B,
    batch 256, p = 0.3: 60 s per step in bf16 against 5.1 s in fp32; docs/training.md). False where this
    cannot be told (other CPUs, a torch without the probes), so nothing is claimed there."""
    if device_type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(p is None for p in probes):
        return False
    return not any(p() for p in probes)


def resolve_device(device: str) -> str:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; CUDA must be available."""
    name = str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or another torch device, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here")
    return name


# --------------------------------------------------------------------------- distributed helpers

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def setup_distributed(device: str) -> Dist:
    """Single process, or the torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK) -> process group."""
    device = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank, world, local, dev)


# --------------------------------------------------------------------------- the steps of train()

def random_subset(split: Split, n: int | None, seed: int) -> Split:
    """n images drawn without replacement (ImageFolder order is sorted by class, so the first n
    would be a single class)."""
    if n is None or n >= len(split):
        return split
    g = torch.Generator().manual_seed(derive_seed(seed, "subset", n))
    idx = np.sort(torch.randperm(len(split), generator=g)[:n].numpy())
    return Split(split.images[idx], split.labels[idx], split.classes)


def _widened(model, spec, width: float):
    """--width above the --init checkpoint's: the same function in k times the channels
    (toolchain.models.widen), so fine-tuning starts from the trained accuracy."""
    from .models.widen import WidenError, widen_into

    k = width / spec.width
    if abs(k - round(k)) > 1e-9:
        raise UserError(f"--width {width:g} is not a whole multiple of the --init checkpoint's width "
                        f"{spec.width:g}: function-preserving widening copies each channel a whole number of times")
    wide_spec = replace(spec, width=width)
    try:
        wide = widen_into(model, build_model(wide_spec), image_size=spec.image_size)
    except WidenError as e:
        raise UserError(f"cannot widen {spec.describe()} to width {width:g}: {e}") from None
    print(f"widened the --init checkpoint from width {spec.width:g} to {width:g} "
          f"(each channel copied {round(k)} times, same outputs)", flush=True)
    return wide, wide_spec


def _initial_model(cfg: TrainConfig):
    """(model, spec, normalization, init meta) from scratch or from --init."""
    if cfg.init:
        own = cfg.spec.is_factory  # a factory model takes no width/shortcut
        ckpt = load_checkpoint(cfg.init, model=cfg.spec.name, width=None,  # its own width: widened below
                               shortcut=None if own else cfg.spec.shortcut,
                               normalization=cfg.init_normalization)
        if not ckpt.width_recorded:  # a foreign file of unknown origin: --width describes it
            ckpt.spec = replace(ckpt.spec, width=cfg.spec.width)
        model = ckpt.build()
        spec = replace(ckpt.spec, image_size=cfg.spec.image_size)  # the size of the data it is tuned on
        if not own and cfg.spec.width > spec.width:
            model, spec = _widened(model, spec, cfg.spec.width)
        if cfg.spec.padded and not spec.padded:
            pad_1x1_to_3x3(model)  # function-preserving, so fine-tuning starts from the same outputs
            spec = replace(spec, padded=True)
        return model, spec, ckpt.normalization
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # model initialisation uses the global RNG
    return build_model(cfg.spec), cfg.spec, CIFAR10_NORM


def train(cfg: TrainConfig, *, step_callback: Callable[[int, int], None] | None = None) -> dict:
    """Run (or resume) a training; returns the log dict. ``step_callback(epoch, step)`` is called
    after every optimizer step (tests use it to interrupt a run)."""
    validate(cfg)
    dd = setup_distributed(cfg.device)
    if cfg.precision == "bf16" and bf16_is_slow_here(dd.device.type) and dd.main:
        # a warning, not a switch to fp32: the precision is part of the run (resume, records)
        print("warning: --precision bf16 on a CPU without AMX or AVX512-BF16: bf16 has no hardware here "
              "(measured 12x slower per step than fp32 on AVX2 cores; docs/training.md); for speed, train "
              "in fp32 in a fresh --out (in a pipeline config: precision = \"fp32\" under [train])",
              file=sys.stderr, flush=True)
    out = Path(cfg.out)
    model, spec, norm = _initial_model(cfg)
    cfg = replace(cfg, spec=spec)
    record = cfg.record()
    prev = _previous_run(cfg, out, record)
    history: list[dict] = []
    start_epoch = 0
    train_state = None
    if prev is not None:
        model.load_state_dict(prev.state_dict)
        norm = prev.normalization
        train_state = prev.meta.get("train_state")
        history = list(prev.meta.get("history", []))
        start_epoch = int(train_state["epoch"])
    if start_epoch >= cfg.epochs:  # finished: no data, no optimizer state needed (a copied-in run
        #                            may carry its last epoch without the optimizer's buffers)
        if cfg.progress and dd.rank == 0:
            print(f"nothing to do: the run in {out} finished all {cfg.epochs} epochs", file=sys.stderr)
        if dd.main:
            _complete_finished_run(out, prev, record, dd.world)
        if dd.world > 1:
            dist.destroy_process_group()
        return {"config": record, "world_size": dd.world, "epochs": history, "main": dd.main}

    train_split, test_split = _load_splits(cfg)
    local_bs, steps_per_epoch = _batches_per_rank(cfg, len(train_split), dd.world)
    model.to(dd.device)
    mask_gen = torch.Generator(device=dd.device)
    net = _wrap_model(model, cfg, dd, mask_gen)
    opt, sched = _optimizer(model, cfg, steps_per_epoch, train_state)
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
    sampler = torch.utils.data.distributed.DistributedSampler(
        range(len(train_split)), num_replicas=dd.world, rank=dd.rank, shuffle=True,
        seed=derive_seed(cfg.seed, "order") % (2**31), drop_last=True)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        idx = np.asarray(list(sampler))[: steps_per_epoch * local_bs]
        entry = _train_epoch(net, opt, sched, train_split, idx, norm, cfg, dd, epoch, local_bs,
                             steps_per_epoch, mask_gen, step_callback)
        if dd.main:
            entry["test_acc"] = _test_accuracy(model, test_split, norm, cfg, dd)
            entry["test_sa1"] = cfg.drop_rate
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            history.append(entry)
            _save_epoch(out, model, spec, norm, record, history, epoch + 1, opt, sched, cfg, dd.world)
            if cfg.progress:
                _print_epoch(entry, cfg.epochs)
        dd.barrier()
    if dd.world > 1:
        dist.destroy_process_group()
    return {"config": record, "world_size": dd.world, "epochs": history, "main": dd.main}


def _previous_run(cfg: TrainConfig, out: Path, record: dict) -> Checkpoint | None:
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


def _load_splits(cfg: TrainConfig) -> tuple[Split, Split]:
    """(train, test), each cut to --images / --eval-images by a seeded random subset."""
    def split(name: str, n: int | None) -> Split:
        return random_subset(load_split(cfg.data, name, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache,
                                        progress=cfg.progress), n, cfg.seed)

    train_split, test_split = split("train", cfg.images), split("test", cfg.eval_images)
    if len(train_split) == 0:
        raise UserError("the training split is empty")
    if len(test_split) == 0:
        raise UserError("the test split is empty")
    for s in (train_split, test_split):  # labels beyond the model's outputs: IndexError mid-epoch
        check_for_model(s, cfg.spec.num_classes, f"the model ({cfg.spec.describe()})", image_size=None)
    return train_split, test_split


def _batches_per_rank(cfg: TrainConfig, n_train: int, world: int) -> tuple[int, int]:
    """(batch size per process, optimizer steps per epoch)."""
    local_bs = max(2, cfg.batch_size // world)
    per_rank = n_train // world
    if per_rank < 2:
        raise UserError(f"{n_train} training images are too few for {world} processes")
    return local_bs, max(1, per_rank // local_bs)


def _wrap_model(model: nn.Module, cfg: TrainConfig, dd: Dist, mask_gen: torch.Generator) -> nn.Module:
    """Drop-connect on the weights (masks drawn from ``mask_gen``), then DDP when distributed."""
    if cfg.drop_rate > 0:
        add_dropconnect(model, cfg.drop_rate, mask_gen, include_first=cfg.include_first,
                        include_last=cfg.include_last)
    if dd.world > 1:
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.local_rank] if dd.device.type == "cuda" else None)
    return model


def _optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int, train_state: dict | None):
    """SGD (Nesterov) with a per-step cosine schedule, restored from ``train_state`` on resume."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.effective_lr(), momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    if train_state is not None:
        opt.load_state_dict(train_state["optimizer"])
        sched.load_state_dict(train_state["scheduler"])
    return opt, sched


def _train_epoch(net: nn.Module, opt, sched, split: Split, idx: np.ndarray, norm: Normalization,
                 cfg: TrainConfig, dd: Dist, epoch: int, local_bs: int, steps: int,
                 mask_gen: torch.Generator, step_callback) -> dict:
    """One pass over this process's share ``idx``; returns the loss/accuracy summed over processes.
    Augmentation and masks are reseeded from (seed, rank, epoch), which makes a resume exact."""
    aug_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "augment", dd.rank, epoch))
    mask_gen.manual_seed(derive_seed(cfg.seed, "mask", dd.rank, epoch))
    net.train()
    loss_sum = correct = seen = 0.0
    bar = tqdm(iterate_batches(split, local_bs, norm, augment_batches=True, generator=aug_gen,
                               device=dd.device, indices=idx),
               total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               leave=False, disable=None if (cfg.progress and dd.main) else True)
    for step, (x, y) in enumerate(bar):
        # bf16: matmuls/convolutions in bfloat16 (1.4-2.4x faster on AMX CPUs), weights, optimizer and
        # BN running statistics stay float32; the loss is taken in float32. fp32 sets up no
        # autocast at all (a device without autocast support still trains in fp32)
        with (torch.autocast(dd.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
              else contextlib.nullcontext()):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        n = y.shape[0]
        loss_sum += float(loss.detach()) * n
        correct += float((logits.detach().argmax(1) == y).sum())
        seen += n
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}%")
        if step_callback is not None:
            step_callback(epoch, step)
    bar.close()
    loss_sum, correct, seen = dd.sum([loss_sum, correct, seen])
    return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "lr": sched.get_last_lr()[0], "images": int(seen)}


def _test_accuracy(model: nn.Module, split: Split, norm: Normalization, cfg: TrainConfig, dd: Dist) -> float:
    """Test accuracy of one simulated chip at rate p (the same chip every epoch): the BN statistics
    gathered in training match such a chip (unscaled masks); the fault-free weights need BN
    re-aligned at 0 (rram recalibrate)."""
    chip = sample_sa1_masks(model, cfg.drop_rate,
                            torch.Generator().manual_seed(derive_seed(cfg.seed, "test-chip")))
    with sa1_faults(model, chip):
        return accuracy(model, split, norm, device=dd.device, progress=cfg.progress, desc="test")


def _print_epoch(entry: dict, epochs: int) -> None:
    print(f"epoch {entry['epoch']}/{epochs}: loss {entry['train_loss']:.4f} "
          f"train {100 * entry['train_acc']:.2f}% test {100 * entry['test_acc']:.2f}% "
          f"({entry['seconds']:.1f}s)", file=sys.stderr, flush=True)


def _complete_finished_run(out: Path, prev: Checkpoint, record: dict, world: int) -> None:
    """A finished run copied in with its last.pt alone (benchmarks/study_on_gpu.py ships one copy
    of the weights, not two) gets model.pt and log.json back: model.pt is last.pt's model without
    the resume state, exactly as ``_save_epoch`` writes it."""
    meta = {k: v for k, v in prev.meta.items() if k != "train_state"}
    if not (out / MODEL).is_file():
        save_checkpoint(Checkpoint(prev.spec, prev.normalization, prev.state_dict, {}, meta), out / MODEL)
    if not (out / LOG).is_file():
        atomic_write_json(out / LOG, {"config": record, "world_size": world, "epochs": meta.get("history", [])},
                          indent=2)


def _save_epoch(out: Path, model: nn.Module, spec: ModelSpec, norm, record: dict, history: list,
                epoch: int, opt, sched, cfg: TrainConfig, world: int) -> None:
    state = plain_state_dict(model)
    meta = {"config": record, "drop_rate": cfg.drop_rate, "epoch": epoch, "history": history,
            "trained_with": "rram train"}
    full = dict(meta, train_state={"epoch": epoch, "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict()})
    # last.pt is the resume point and is written first; model.pt and log.json follow from it
    save_checkpoint(Checkpoint(spec, norm, state, {}, full), out / LAST)
    save_checkpoint(Checkpoint(spec, norm, state, {}, meta), out / MODEL)
    atomic_write_json(out / LOG, {"config": record, "world_size": world, "epochs": history}, indent=2)

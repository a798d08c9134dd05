"""The training loop: ``train()`` calls one function per step (resume check, data, batch plan,
model wrapping, optimizer, epoch, test chip, save). SGD + momentum + weight decay, cosine schedule,
drop-connect on every Conv2d/Linear weight, batch augmentation on tensors, a checkpoint every epoch
with resume (``run_folder.py``), and DistributedDataParallel when started by ``torchrun``
(``distributed.py``).

Every random draw (data order, augmentation, masks) comes from generators seeded from ``seed``,
the epoch and the process rank, so a run resumed after epoch k repeats epochs k+1.. exactly.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.progress import Progress

from ..data import (
    Normalization,
    Split,
    check_for_model,
    iterate_batches,
    load_split,
    random_subset,
    without_validation,
)
from ..dropconnect import add_dropconnect, derive_seed, sa1_faults, sample_sa1_masks
from ..errors import UserError
from ..evaluate import accuracy
from ..variation import WeightNoise, programmed, varied_chip_weights
from .config import TrainConfig, validate
from .device import bf16_is_slow_here
from .distributed import Dist, setup_distributed
from .model_init import initial_model
from .run_folder import complete_finished_run, previous_run, save_epoch


def train(cfg: TrainConfig, *, step_callback: Callable[[int, int], None] | None = None) -> dict:
    """Run (or resume) a training; returns the log dict. ``step_callback(epoch, step)`` is called
    after every optimizer step (tests use it to interrupt a run)."""
    validate(cfg)
    dd = setup_distributed(cfg.device)
    if cfg.precision == "bf16" and bf16_is_slow_here(dd.device.type) and dd.main:
        # a warning, not a switch to fp32: the precision is part of the run (resume, records)
        print("warning: --train-precision bf16 on a CPU without AMX or AVX512-BF16: bf16 has no hardware here "
              "(measured 12x slower per step than fp32 on AVX2 cores; docs/training.md); for speed, train "
              "in fp32 in a fresh --out (in a pipeline config: precision = \"fp32\" under [train])",
              file=sys.stderr, flush=True)
    out = Path(cfg.out)
    model, spec, norm = initial_model(cfg)
    cfg = replace(cfg, spec=spec)
    record = cfg.record()
    prev = previous_run(cfg, out, record)
    history: list[dict] = []
    start_epoch = 0
    train_state = None
    if prev is not None:
        model.load_state_dict(prev.state_dict)
        norm = prev.normalization
        train_state = prev.meta.get("train_state")
        history = list(prev.meta.get("history", []))
        start_epoch = int(train_state["epoch"])
        recorded = prev.meta.get("eval_images")
        if cfg.eval_images is None and recorded is not None:
            # the resumed epochs are measured on as many images as the run's first ones were (it
            # shapes no weight, so it is not in the record that a resume must match)
            cfg = replace(cfg, eval_images=int(recorded))
    if start_epoch >= cfg.epochs:  # finished: no data, no optimizer state needed (a copied-in run
        #                            may carry its last epoch without the optimizer's buffers)
        if cfg.progress and dd.rank == 0:
            print(f"nothing to do: the run in {out} finished all {cfg.epochs} epochs", file=sys.stderr)
        if dd.main:
            complete_finished_run(out, prev, record, dd.world)
        dd.close()
        return {"config": record, "world_size": dd.world, "epochs": history, "main": dd.main}

    train_split, test_split = _load_splits(cfg)
    local_bs, steps_per_epoch = _batches_per_rank(cfg, len(train_split), dd.world)
    model.to(dd.device)
    mask_gen = torch.Generator(device=dd.device)
    noise_gen = torch.Generator(device=dd.device)  # --variation: reseeded every step
    net = _wrap_model(model, cfg, dd, mask_gen, noise_gen)
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
                             steps_per_epoch, (mask_gen, noise_gen), step_callback)
        if dd.main:
            entry[f"{cfg.eval_split}_acc"] = _test_accuracy(model, test_split, norm, cfg, dd)
            entry["test_sa1"] = cfg.drop_rate
            if cfg.variation > 0:  # the test chip's variation (absent without: older logs' entries)
                entry["test_variation"], entry["test_variation_model"] = cfg.variation, cfg.programming_model
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            history.append(entry)
            save_epoch(out, model, spec, norm, record, history, epoch + 1, opt, sched, cfg, dd.world)
            if cfg.progress:
                _print_epoch(entry, cfg.epochs)
        dd.barrier()
    dd.close()
    return {"config": record, "world_size": dd.world, "epochs": history, "main": dd.main}


def _load_splits(cfg: TrainConfig) -> tuple[Split, Split]:
    """(train, test), each cut to --train-images / --eval-images by a seeded random subset; with
    --hold-out-val, (the training split less its validation images, the validation images)."""
    def load(name: str) -> Split:
        return load_split(cfg.data, name, cache_dir=cfg.cache_dir, use_cache=cfg.use_cache, progress=cfg.progress)

    train_split = load("train")
    if cfg.hold_out_val:
        test_split = load("val")  # from the cache load() just filled
        train_split = without_validation(train_split)
    else:
        test_split = load("test")
    train_split = random_subset(train_split, cfg.images, cfg.seed)
    test_split = random_subset(test_split, cfg.eval_images, cfg.seed)
    if len(train_split) == 0:
        raise UserError("the training split is empty")
    if len(test_split) == 0:
        raise UserError(f"the {cfg.eval_split} split is empty")
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


def _wrap_model(model: nn.Module, cfg: TrainConfig, dd: Dist, mask_gen: torch.Generator,
                noise_gen: torch.Generator) -> nn.Module:
    """Drop-connect on the weights (masks drawn from ``mask_gen``; with --variation, the
    programming error from ``noise_gen`` too), then DDP when distributed."""
    noise = WeightNoise(cfg.variation, cfg.programming_model, noise_gen) if cfg.variation > 0 else None
    if cfg.drop_rate > 0 or noise is not None:
        add_dropconnect(model, cfg.drop_rate, mask_gen, include_first=cfg.include_first,
                        include_last=cfg.include_last, noise=noise)
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
                 gens: tuple[torch.Generator, torch.Generator], step_callback) -> dict:
    """One pass over this process's share ``idx``; returns the loss/accuracy summed over processes.
    Augmentation and masks are reseeded from (seed, rank, epoch), the weight noise (--variation)
    from (seed, rank, epoch, step), which makes a resume exact."""
    mask_gen, noise_gen = gens
    aug_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "augment", dd.rank, epoch))
    mask_gen.manual_seed(derive_seed(cfg.seed, "mask", dd.rank, epoch))
    net.train()
    loss_sum = correct = seen = 0.0
    # a bar on a terminal, a line every RRAM_PROGRESS_SECONDS in a log (runtime.progress)
    bar = Progress(steps, cfg.progress and dd.main, desc=f"train epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   leave=False)
    batches = iterate_batches(split, local_bs, norm, augment_batches=True, generator=aug_gen, device=dd.device,
                              indices=idx)
    for step, (x, y) in enumerate(batches):
        if cfg.variation > 0:
            noise_gen.manual_seed(derive_seed(cfg.seed, "weight-noise", dd.rank, epoch, step))
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
        bar.update(f"loss {loss_sum / seen:.3f}, train accuracy {100 * correct / seen:.1f}%")
        if step_callback is not None:
            step_callback(epoch, step)
    bar.close()
    loss_sum, correct, seen = dd.sum([loss_sum, correct, seen])
    return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "lr": sched.get_last_lr()[0], "images": int(seen)}


def _test_accuracy(model: nn.Module, split: Split, norm: Normalization, cfg: TrainConfig, dd: Dist) -> float:
    """Test (or, with --hold-out-val, validation) accuracy of one simulated chip at rate p (the same
    chip every epoch): the BN statistics gathered in training match such a chip (unscaled masks);
    the fault-free weights need BN re-aligned at 0 (rram recalibrate). With --variation the chip's
    weights are also programmed with it (the same draw every epoch, on every layer)."""
    chip = sample_sa1_masks(model, cfg.drop_rate,
                            torch.Generator().manual_seed(derive_seed(cfg.seed, "test-chip")))
    if cfg.variation > 0:
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "test-chip-variation"))
        with programmed(model, varied_chip_weights(model, chip, cfg.variation, cfg.programming_model, gen)):
            return accuracy(model, split, norm, device=dd.device, progress=cfg.progress, desc=cfg.eval_split)
    with sa1_faults(model, chip):
        return accuracy(model, split, norm, device=dd.device, progress=cfg.progress, desc=cfg.eval_split)


def test_measures(rate: float, variation: float = 0.0, model: str = "additive") -> str:
    """What the epoch line's test accuracy is: one simulated chip with SA1 faults at the
    drop-connect rate (the same chip every epoch), or the fault-free model at rate 0; with
    programming variation (--variation) on that chip."""
    text = (f"on one simulated faulty chip, {100 * rate:g}% of weights stuck at 0" if rate > 0
            else "fault-free")
    if variation > 0:
        text = (f"{text}, programming variation {variation:g} {model}" if rate > 0
                else f"on one simulated chip with programming variation {variation:g} {model}")
    return text


def _print_epoch(entry: dict, epochs: int) -> None:
    which = "val" if "val_acc" in entry else "test"
    print(f"epoch {entry['epoch']}/{epochs}: loss {entry['train_loss']:.4f} "
          f"train {100 * entry['train_acc']:.2f}% {which} {100 * entry[f'{which}_acc']:.2f}% "
          f"({test_measures(entry['test_sa1'], entry.get('test_variation', 0.0), entry.get('test_variation_model'))}) "
          f"({entry['seconds']:.1f}s)", file=sys.stderr, flush=True)

"""Fault-aware training (``rram train``): SGD + momentum + weight decay, cosine schedule,
drop-connect on every Conv2d/Linear weight, batch augmentation on tensors, a checkpoint every epoch
with resume, and DistributedDataParallel when started by ``torchrun`` (gloo on CPU, nccl on GPU).

Output folder::

    OUT/last.pt    own checkpoint format + meta["train_state"] (optimizer, schedule, epoch): resume
    OUT/model.pt   the same model without the optimizer state: what eval/recalibrate/export read
    OUT/log.json   {"config": {...}, "epochs": [{"epoch", "train_loss", "train_acc", "test_acc", ...}]}

Every random draw (data order, augmentation, masks) comes from generators seeded from ``seed``,
the epoch and the process rank, so a run resumed after epoch k repeats epochs k+1.. exactly.

Modules: ``config`` (``TrainConfig``, defaults, checks), ``device`` (device resolution, the bf16
probe), ``distributed`` (DDP), ``model_init`` (from scratch or --init, widening), ``run_folder``
(resume or refuse, what each epoch writes), ``loop`` (``train()`` and the epoch).
"""
from ..data import random_subset  # its home is toolchain.data (split.py); kept importable from here
from .config import ADDED_LATER, LR_FINE_TUNING, LR_FROM_SCRATCH, PRECISIONS, TrainConfig, default_lr, validate
from .device import bf16_is_slow_here, resolve_device
from .distributed import Dist, setup_distributed
from .loop import train
from .run_folder import LAST, LOG, MODEL

__all__ = [
    "ADDED_LATER", "LAST", "LOG", "LR_FINE_TUNING", "LR_FROM_SCRATCH", "MODEL", "PRECISIONS", "Dist",
    "TrainConfig", "bf16_is_slow_here", "default_lr", "random_subset", "resolve_device", "setup_distributed",
    "train", "validate",
]

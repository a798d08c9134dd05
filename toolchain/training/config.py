"""What defines a training run (``TrainConfig``), its defaults and its checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..data import Normalization
from ..dropconnect import check_rate
from ..errors import UserError
from ..models import ModelSpec
from .device import resolve_device

# The default peak learning rate (cosine schedule), from scratch and when fine-tuning (--init): what
# `rram train`, the Python API (which runs it) and `rram pipeline` ([train] lr) take when none is given.
LR_FROM_SCRATCH = 0.1
LR_FINE_TUNING = 0.01

# Options added after runs were recorded: a record without the key was trained with this value.
# The pipeline leaves them out of its own step record at these values too (pipeline/plan.py).
ADDED_LATER = {"precision": "fp32", "hold_out_val": False, "variation": 0.0, "programming_model": "additive"}
PRECISIONS = ("fp32", "bf16")


def default_lr(fine_tuning: bool) -> float:
    """The peak learning rate when none is given: ``LR_FINE_TUNING`` with --init, else ``LR_FROM_SCRATCH``."""
    return LR_FINE_TUNING if fine_tuning else LR_FROM_SCRATCH


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
    lr: float | None = None  # default: default_lr(fine-tuning, i.e. --init given)
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
    hold_out_val: bool = False  # train on the training split less its validation images, evaluate on those
    variation: float = 0.0  # programming variation added to each weight, a fresh draw every step (0: none)
    programming_model: str = "additive"  # its model (runtime.variation.PROGRAMMING_MODELS)
    cache_dir: str | None = None
    use_cache: bool = True
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return default_lr(bool(self.init))

    def record(self) -> dict:
        """What defines the run (a resume must match it)."""
        return {"model": self.spec.to_dict(), "drop_rate": self.drop_rate, "epochs": self.epochs,
                "init": self.init, "batch_size": self.batch_size, "lr": self.effective_lr(),
                "momentum": self.momentum, "weight_decay": self.weight_decay, "seed": self.seed,
                "images": self.images, "include_first": self.include_first,
                "include_last": self.include_last, "schedule": "cosine (per step)",
                "rescale": False, "precision": self.precision, "hold_out_val": self.hold_out_val,
                "variation": float(self.variation),
                # the model shapes nothing without variation: recorded as the default then
                "programming_model": self.programming_model if self.variation else ADDED_LATER["programming_model"]}

    @property
    def eval_split(self) -> str:
        """The split each epoch's accuracy is measured on: val when it is held out, else test."""
        return "val" if self.hold_out_val else "test"


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
    from runtime.errors import RuntimeInputError
    from runtime.variation import Nonideal

    try:  # the runtime's checks (negative, NaN, an unknown model): one line
        Nonideal(programming_sigma=cfg.variation, programming_model=cfg.programming_model)
    except RuntimeInputError as e:
        raise UserError(f"--variation: {e}") from None
    dev = resolve_device(cfg.device)
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.precision == "bf16" and not torch.amp.is_autocast_available(torch.device(dev).type):
        raise UserError(f"--train-precision bf16: torch has no autocast for the {dev} device here (use fp32)")

"""The model a run starts from: built from scratch (seeded), or loaded from --init, widened to a
larger --width and padded (1x1 -> 3x3), both function-preserving."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..checkpoints import load_checkpoint
from ..data import CIFAR10_NORM
from ..dropconnect import derive_seed
from ..errors import UserError
from ..models import build_model, pad_1x1_to_3x3
from .config import TrainConfig


def widened(model, spec, width: float):
    """--width above the --init checkpoint's: the same function in k times the channels
    (toolchain.models.widen), so fine-tuning starts from the trained accuracy."""
    from ..models.widen import WidenError, widen_into

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


def initial_model(cfg: TrainConfig):
    """(model, spec, normalization) from scratch or from --init."""
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
            model, spec = widened(model, spec, cfg.spec.width)
        if cfg.spec.padded and not spec.padded:
            pad_1x1_to_3x3(model)  # function-preserving, so fine-tuning starts from the same outputs
            spec = replace(spec, padded=True)
        return model, spec, ckpt.normalization
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # model initialisation uses the global RNG
    return build_model(cfg.spec), cfg.spec, CIFAR10_NORM

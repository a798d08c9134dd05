"""Model zoo: CIFAR-10 ResNet20 (shortcut A or B), MobileNetV2 (CIFAR variant), VGG13-BN, and
"bring your own model": ``package.module:factory``, any importable callable that returns an
``nn.Module`` (e.g. a function returning ``torchvision.models.resnet18(num_classes=10)``).

A model is described by a :class:`ModelSpec` (name and options); checkpoints store the spec so a
model can be rebuilt exactly (including the 1x1->3x3 padding). A factory model is rebuilt by
importing and calling its factory again, so its module must be importable wherever the
checkpoint is used; the factory's name comes from ``--model`` (or a pipeline config), never from
the checkpoint alone: a checkpoint records it for checking only (toolchain/checkpoints.py).
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..data import IMAGE_SIZE
from ..errors import UserError
from ..model_names import MODEL_NAMES
from .mobilenetv2 import mobilenetv2
from .pad import is_1x1, pad_1x1_to_3x3
from .resnet import resnet20
from .vgg import vgg13

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_factory(name: str) -> bool:
    """``package.module:factory`` (a user's model), not one of MODEL_NAMES."""
    return ":" in str(name)


def resolve_factory(name: str):
    """The callable ``package.module:factory`` names; a one-line error when the module does not
    import or has no such attribute (before any other work)."""
    module_name, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or any error the module raises while importing
        raise UserError(f"--model {name}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--model {name}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"--model {name}: {attr} in {module_name} is not callable")
    return obj


@dataclass(frozen=True)
class ModelSpec:
    name: str  # one of MODEL_NAMES, or "package.module:factory"
    width: float = 1.0  # built-in models only
    shortcut: str = "A"  # resnet20 only
    padded: bool = False  # 1x1 convs padded to 3x3
    num_classes: int = 10  # a factory model's: its output count, measured (probe_outputs)
    image_size: tuple[int, int] = IMAGE_SIZE  # (H, W) the model was trained for: what its data holds

    def __post_init__(self):
        if is_factory(self.name):
            if not _FACTORY.match(self.name):
                raise UserError(f"--model {self.name!r}: a model factory is written package.module:function")
            if self.width != 1.0 or self.shortcut != "A":
                raise UserError(f"--width and --shortcut are for the built-in models; {self.name} builds "
                                f"its own architecture")
        elif self.name not in MODEL_NAMES:
            raise UserError(f"unknown model {self.name!r}: choose one of {', '.join(MODEL_NAMES)}, "
                            f"or package.module:factory")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise UserError(f"width must be a positive number, got {self.width}")
        if self.shortcut not in ("A", "B"):
            raise UserError(f"shortcut must be A or B, got {self.shortcut!r}")
        if self.num_classes < 1:
            raise UserError(f"num_classes must be at least 1, got {self.num_classes}")
        size = tuple(self.image_size)
        if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
            raise UserError(f"image_size must be two positive integers (H, W), got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)

    @property
    def is_factory(self) -> bool:
        return is_factory(self.name)

    def to_dict(self) -> dict:
        d = asdict(self)
        # recorded in rram.model metadata: a 32x32 model's entry stays what it always was
        if self.image_size == IMAGE_SIZE:
            del d["image_size"]
        else:
            d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(name=str(d["name"]), width=float(d.get("width", 1.0)),
                   shortcut=str(d.get("shortcut", "A")), padded=bool(d.get("padded", False)),
                   num_classes=int(d.get("num_classes", 10)),
                   image_size=tuple(int(v) for v in d.get("image_size", IMAGE_SIZE)))

    def describe(self) -> str:
        size = "" if self.image_size == IMAGE_SIZE else f", {self.image_size[0]}x{self.image_size[1]}"
        if self.is_factory:
            return f"{self.name} ({self.num_classes} classes{size}{', 1x1 padded' if self.padded else ''})"
        extra = f", shortcut {self.shortcut}" if self.name == "resnet20" else ""
        return f"{self.name} (width {self.width:g}{extra}{size}{', 1x1 padded' if self.padded else ''})"


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.is_factory:
        model = call_factory(spec.name)
    elif spec.name == "resnet20":
        model = resnet20(spec.width, spec.shortcut, spec.num_classes)
    elif spec.name == "mobilenetv2":
        model = mobilenetv2(spec.width, spec.num_classes)
    else:
        model = vgg13(spec.width, spec.num_classes)
    if spec.padded:
        pad_1x1_to_3x3(model)
    return model


def call_factory(name: str) -> nn.Module:
    """Import ``package.module:factory``, call it with no arguments, check it gave an nn.Module."""
    factory = resolve_factory(name)
    try:
        model = factory()
    except Exception as e:
        raise UserError(f"--model {name}: the factory failed ({type(e).__name__}: {e})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {name}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def probe_outputs(model: nn.Module, image_size: tuple[int, int], what: str) -> int:
    """The number of outputs (classes) of ``model`` on a batch of 3 x H x W images; a one-line
    error when it does not take that size or does not give (N, classes) logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, *image_size))
    except Exception as e:
        raise UserError(f"{what} does not take 3x{image_size[0]}x{image_size[1]} images "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None
    finally:
        model.train(was_training)
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UserError(f"{what} must return (N, classes) logits, it returned {shape} for a batch of 2")
    return int(out.shape[1])


def model_for_data(spec: ModelSpec, image_size: tuple[int, int] | None) -> ModelSpec:
    """``spec`` for data of ``image_size`` (H, W; None: unknown, left to the loading): the size
    recorded, and a factory model's class count measured (its outputs); a model that cannot take
    the size is a one-line error, before any data is decoded. The built-in models at 32x32 are
    taken as they are."""
    from dataclasses import replace

    size = tuple(image_size) if image_size is not None else spec.image_size
    if not spec.is_factory and size == IMAGE_SIZE:
        return replace(spec, image_size=size)
    classes = probe_outputs(build_model(spec), size, f"the model ({spec.name})")
    if spec.is_factory:
        return replace(spec, image_size=size, num_classes=classes)
    return replace(spec, image_size=size)


__all__ = ["IMAGE_SIZE", "MODEL_NAMES", "ModelSpec", "build_model", "call_factory", "is_factory", "model_for_data",
           "probe_outputs", "pad_1x1_to_3x3", "is_1x1", "resolve_factory"]

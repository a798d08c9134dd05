"""Model zoo: CIFAR-10 ResNet20 (shortcut A or B), MobileNetV2 (CIFAR variant), VGG13-BN.

A model is described by a :class:`ModelSpec` (name and options); checkpoints store the spec so a
model can be rebuilt exactly (including the 1x1->3x3 padding).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch.nn as nn

from ..errors import UserError
from .mobilenetv2 import mobilenetv2
from .pad import is_1x1, pad_1x1_to_3x3
from .resnet import resnet20
from .vgg import vgg13

MODEL_NAMES = ("resnet20", "mobilenetv2", "vgg13")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    width: float = 1.0
    shortcut: str = "A"  # resnet20 only
    padded: bool = False  # 1x1 convs padded to 3x3
    num_classes: int = 10

    def __post_init__(self):
        if self.name not in MODEL_NAMES:
            raise UserError(f"unknown model {self.name!r}: choose one of {', '.join(MODEL_NAMES)}")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise UserError(f"width must be a positive number, got {self.width}")
        if self.shortcut not in ("A", "B"):
            raise UserError(f"shortcut must be A or B, got {self.shortcut!r}")
        if self.num_classes < 1:
            raise UserError(f"num_classes must be at least 1, got {self.num_classes}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(name=str(d["name"]), width=float(d.get("width", 1.0)),
                   shortcut=str(d.get("shortcut", "A")), padded=bool(d.get("padded", False)),
                   num_classes=int(d.get("num_classes", 10)))

    def describe(self) -> str:
        extra = f", shortcut {self.shortcut}" if self.name == "resnet20" else ""
        return f"{self.name} (width {self.width:g}{extra}{', 1x1 padded' if self.padded else ''})"


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.name == "resnet20":
        model = resnet20(spec.width, spec.shortcut, spec.num_classes)
    elif spec.name == "mobilenetv2":
        model = mobilenetv2(spec.width, spec.num_classes)
    else:
        model = vgg13(spec.width, spec.num_classes)
    if spec.padded:
        pad_1x1_to_3x3(model)
    return model


__all__ = ["MODEL_NAMES", "ModelSpec", "build_model", "pad_1x1_to_3x3", "is_1x1"]

"""VGG13 with batch norm for CIFAR-10: five conv stages, a single linear classifier on the 1x1 map."""
from __future__ import annotations

import torch.nn as nn

from .common import scaled

VGG13_CFG = [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        layers, in_ch = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = scaled(v, width)
                layers += [nn.Conv2d(in_ch, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                in_ch = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg13(width: float = 1.0, num_classes: int = 10) -> VGG:
    return VGG(VGG13_CFG, width, num_classes)

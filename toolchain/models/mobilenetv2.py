"""MobileNetV2 for 32x32 inputs (the common CIFAR variant): stride-1 stem, and the second stage
keeps stride 1 too, so the final feature map is 4x4 as in ImageNet's 7x7 for 224 inputs."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .common import scaled

# (expansion, out channels, blocks, stride of the first block)
CIFAR_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x):
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        stem = scaled(32, width, 8)
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, in_planes = [], stem
        for expansion, out, blocks, stride in CIFAR_CFG:
            out = scaled(out, width, 8)
            for b in range(blocks):
                layers.append(InvertedResidual(in_planes, out, expansion, stride if b == 0 else 1))
                in_planes = out
        self.layers = nn.Sequential(*layers)
        last = scaled(1280, max(1.0, width), 8)
        self.conv2 = nn.Conv2d(in_planes, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.linear = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        out = F.relu6(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu6(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def mobilenetv2(width: float = 1.0, num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(width, num_classes)

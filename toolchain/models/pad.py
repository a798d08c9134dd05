"""Function-preserving 1x1 -> 3x3 convolution padding (customisation 1 of the method).

Dropping a weight of a 1x1 kernel cuts a whole input->output connection (pruning); in a 3x3
kernel it removes one ninth of it. The new kernel holds the old weight at its centre and zeros
around it, and the padding grows by one on each side, so the output is unchanged before training.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _padded_conv(conv: nn.Conv2d) -> nn.Conv2d:
    if conv.padding_mode != "zeros":
        raise ValueError(f"cannot pad a 1x1 conv with padding_mode={conv.padding_mode!r}")
    if isinstance(conv.padding, str):
        raise ValueError(f"cannot pad a 1x1 conv with padding={conv.padding!r}")
    new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=conv.stride,
                    padding=(conv.padding[0] + 1, conv.padding[1] + 1), dilation=1,
                    groups=conv.groups, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :, 1, 1] = conv.weight[:, :, 0, 0]
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.train(conv.training)
    return new


def is_1x1(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)


def pad_1x1_to_3x3(model: nn.Module) -> nn.Module:
    """Replace every 1x1 Conv2d (any stride, any groups) in place; returns the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_1x1(child):
                setattr(parent, name, _padded_conv(child))
    return model

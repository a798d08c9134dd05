from __future__ import annotations


def scaled(channels: int, width: float, divisor: int = 1) -> int:
    """Channels after a width multiplier, rounded to a multiple of ``divisor`` (at least one)."""
    c = channels * width
    if divisor > 1:
        # torchvision's _make_divisible: never round down by more than 10%
        new = max(divisor, int(c + divisor / 2) // divisor * divisor)
        if new < 0.9 * c:
            new += divisor
        return new
    return max(1, int(round(c)))


def randomize_bn(model, seed: int = 0):
    """Seeded, non-trivial BN statistics and affine parameters, in place; returns the model in
    eval mode. Fresh BN layers are identities, which would hide BN-folding bugs and can collapse a
    random-init net to its last bias: the passes tests and benchmark check folding on these."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()

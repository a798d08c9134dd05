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

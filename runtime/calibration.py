"""Per-chip calibration of the digital periphery: which calibration images a chip sees.

After a chip is programmed, a deployment runs N calibration images through it and re-estimates
each channel's batch-norm statistics with the chip's own (faulty) weights; only the digital
per-channel scale and offset after each crossbar column change. The PyTorch reference
(`rram eval --sa1 P --calibrate N`) and the fault campaign take the same N training images,
chosen here from the seed alone, so that both calibrate every chip on the same data."""
from __future__ import annotations

import numpy as np

from .errors import RuntimeInputError

# Mixed into the seed so that the calibration draw is independent of the fault maps' streams.
_STREAM = 0xCA11B


def calibration_indices(total: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices into a split of ``total`` images, drawn from ``seed`` only (sorted)."""
    if not 1 <= int(n) <= int(total):
        raise RuntimeInputError(f"--calibrate {n}: choose between 1 and the {total} images of the training split")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM]))
    return np.sort(rng.choice(int(total), size=int(n), replace=False))

"""Which calibration images a chip sees (chosen from the seed alone) and the BN targets (the
recorded batch-norm statistics) the periphery is calibrated to."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RuntimeInputError

# Mixed into the seed so that the calibration draw is independent of the fault maps' streams.
_STREAM = 0xCA11B


def calibration_indices(total: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices into a split of ``total`` images, drawn from ``seed`` only (sorted)."""
    if not 1 <= int(n) <= int(total):
        raise RuntimeInputError(f"--calibrate {n}: choose between 1 and the {total} images of the training split")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM]))
    return np.sort(rng.choice(int(total), size=int(n), replace=False))


# --------------------------------------------------------------------------- the digital periphery

@dataclass(frozen=True)
class BNTarget:
    """What a folded BatchNormalization asked of its layer, per output channel (passes/fold_bn.py):
    after calibration the channel's output is |gamma| (z - m) / sqrt(v + eps s^2) + beta, with z the
    layer's crossbar output (folded weights, no bias), m and v its mean and variance on the chip."""
    gamma: np.ndarray
    beta: np.ndarray
    epsilon: float
    fold_scale: np.ndarray

    @classmethod
    def from_dict(cls, d: dict) -> BNTarget:
        return cls(np.asarray(d["gamma"], np.float64), np.asarray(d["beta"], np.float64),
                   float(d["epsilon"]), np.asarray(d["fold_scale"], np.float64))

    @property
    def variance_floor(self) -> np.ndarray:
        """eps s^2: BN's epsilon expressed in the folded layer's units."""
        return self.epsilon * self.fold_scale ** 2

    def affine(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, offset) that give the measured channel its target again."""
        scale = np.abs(self.gamma) / np.sqrt(np.asarray(var, np.float64) + self.variance_floor)
        return scale, self.beta - scale * np.asarray(mean, np.float64)


def targets_from_metadata(metadata: dict[str, str], where) -> dict[str, BNTarget]:
    """The BN targets an artifact records (``rram.bn_targets``, written by fold-bn), or a one-line
    error naming the commands that rebuild an artifact quantized before per-chip calibration."""
    import json

    from ..metadata import BN_TARGETS_KEY

    text = metadata.get(BN_TARGETS_KEY)
    if not text:
        raise RuntimeInputError(f"{where} records no BN targets ({BN_TARGETS_KEY}), so its periphery cannot be "
                                f"calibrated per chip: rebuild it with `rram passes IN --out OUT --passes standard` "
                                f"(fold-bn records them) and `rram quantize`")
    try:
        return {k: BNTarget.from_dict(v) for k, v in json.loads(text).items()}
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeInputError(f"{where}: unreadable {BN_TARGETS_KEY} ({e})") from None

"""Which calibration images a chip sees (chosen from the seed alone) and the targets the periphery
is calibrated to: the BN targets (the batch-norm statistics fold-bn recorded), or, for a model that
records none (BN folded by its exporter, or no BN at all), targets measured on the fault-free
deployed model (``BNTarget.measured``, ``calibration.measured``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import CALIBRATION_TARGETS
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

    @classmethod
    def measured(cls, mean: np.ndarray, var: np.ndarray) -> BNTarget:
        """The target of a layer without a recorded BN: its output's per-channel ``mean`` and
        (population) ``var`` on the fault-free deployed model. gamma = sqrt(var + floor) and beta
        = mean, so a fault-free chip is left as it is (scale 1, offset its bias) and a faulty one
        is brought back to the fault-free statistics; the floor (MEASURED_FLOOR of the layer's
        mean variance, as BN's epsilon) keeps a constant channel's scale finite and non-zero."""
        mean, var = np.asarray(mean, np.float64), np.maximum(np.asarray(var, np.float64), 0.0)
        floor = MEASURED_FLOOR * float(var.mean()) if var.size else 0.0
        floor = floor if floor > 0 else np.finfo(np.float32).tiny
        return cls(np.sqrt(var + floor), mean, 1.0, np.full(var.shape, np.sqrt(floor)))

    def affine(self, mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, offset) that give the measured channel its target again."""
        scale = np.abs(self.gamma) / np.sqrt(np.asarray(var, np.float64) + self.variance_floor)
        return scale, self.beta - scale * np.asarray(mean, np.float64)


MEASURED_FLOOR = 1e-5  # a measured target's variance floor, relative to the layer's mean variance

# --calibration-targets: the BN targets where the model records them, else measured ("auto"), or
# always one kind ("bn" refuses a model without them; "measured" ignores recorded ones)
TARGET_KINDS = CALIBRATION_TARGETS


def target_kind(metadata: dict[str, str], requested: str = "auto", where="the model") -> str:
    """Which targets calibration uses: "bn" (recorded by fold-bn) or "measured"."""
    from ..metadata import BN_TARGETS_KEY

    if requested not in TARGET_KINDS:
        raise RuntimeInputError(f"calibration targets must be one of {', '.join(TARGET_KINDS)}, got {requested!r}")
    if requested == "auto":
        kind = "bn" if metadata.get(BN_TARGETS_KEY) else "measured"
        return _measured_needs_rate_zero(metadata, where) if kind == "measured" else kind
    if requested == "measured":
        return _measured_needs_rate_zero(metadata, where)
    if requested == "bn" and not metadata.get(BN_TARGETS_KEY):
        raise RuntimeInputError(f"{where} records no BN targets ({BN_TARGETS_KEY}): calibrate it to targets "
                                f"measured on the fault-free model (--calibration-targets measured or auto), or "
                                f"rebuild it with `rram passes IN --out OUT --passes standard` (fold-bn records them)")
    return requested


def _measured_needs_rate_zero(metadata: dict[str, str], where) -> str:
    """Measured targets are what the model computes on a fault-free chip. A model whose BN
    statistics were re-aligned for a fault rate p > 0 (the paper's per-rate BN) is mis-normalised
    on a fault-free chip by design, so its fault-free statistics are the wrong targets: calibrating
    a faulty chip to them reproduces that mis-normalisation (measured: 13% at SA1 0.2 and 0.3 on the
    zoo's drop-connect ResNet20's rate-0.3 artifact, against 81% with its BN targets)."""
    from ..metadata import bn_rate_from_metadata

    rate = bn_rate_from_metadata(metadata, where)
    if rate:
        raise RuntimeInputError(f"{where} holds BN statistics re-aligned for SA1 rate {rate:g}, which a fault-free "
                                f"chip mis-normalises by design: targets measured on it are wrong; calibrate the "
                                f"rate-0 artifact (--bn-rate 0) to measured targets, or this one to its BN targets "
                                f"(--calibration-targets bn)")
    return "measured"


def targets_from_metadata(metadata: dict[str, str], where) -> dict[str, BNTarget]:
    """The BN targets an artifact records (``rram.bn_targets``, written by fold-bn), or a one-line
    error: a model without them is calibrated to measured targets (``target_kind``)."""
    import json

    from ..metadata import BN_TARGETS_KEY

    text = metadata.get(BN_TARGETS_KEY)
    if not text:
        target_kind(metadata, "bn", where)  # raises, naming the remedies
    try:
        return {k: BNTarget.from_dict(v) for k, v in json.loads(text).items()}
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeInputError(f"{where}: unreadable {BN_TARGETS_KEY} ({e})") from None

"""Device non-idealities beyond stuck cells (issue 37): plain settings with presets (``Nonideal``),
and the per-cell draws the runtime applies to a chip's cell levels.

- **Programming variation** (per chip, per cell, once): each cell that is not stuck misses its
  target conductance G = g_min + level/(L-1) (g_max - g_min) by a seeded random error, clipped to
  the device's range [g_min, g_max]:
  * ``additive``: G' = G + sigma (g_max - g_min) Z, Z ~ N(0, 1): sigma is a fraction of the range;
  * ``lognormal``: G' = G exp(sigma Z): sigma is the sd of ln G (a relative error);
  * ``wan2022``: G' = G + sigma s(G/g_max) g_max Z, s the conductance-dependent sd measured on the
    NeuRRAM chip's RRAM (Wan et al., "A compute-in-memory chip based on resistive random-access
    memory", Nature 608, 2022, Extended Data Fig. 3, t = 1 s after programming), in the 4th-order
    polynomial fit aihwkit ships (``aihwkit.inference.noise.reram.ReRamWan2022NoiseModel``:
    s(x) = 0.348 + 16.030 x - 43.853 x^2 + 45.393 x^3 - 16.815 x^4 uS at g_max = 40 uS, scaled
    with g_max as aihwkit does); sigma scales it (1 = as measured).
  The errors are drawn from the run's own seed, in a stream of their own
  (``programming_seed(run_seed)``), one standard normal per cell of the map (stuck cells too, so a
  cell's error does not depend on the others), so the stuck cells' draws are unchanged.
- **Read noise** (per inference batch): every cell's conductance read with a fresh additive error
  ``read_sigma (g_max - g_min) Z`` (not clipped: it is the read current that fluctuates), one
  draw per cell per batch of images from ``read_seed(run_seed, batch)``. Every image of a batch
  sees the same draw; each image's expected accuracy is the same as with a draw per image (its
  marginal noise is the same), only the chip's accuracy varies more between runs.
- **Converter resolution** (``dac_bits``, ``adc_bits``, ``adc_range``): applied to the campaign's
  graph, the same for every chip (``converters``: each layer split over its row tiles, each
  tile's partial sums converted per column, then added digitally; ranges calibrated once).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .crossbar import DeviceConfig
from .errors import RuntimeInputError

PROGRAMMING_MODELS = ("additive", "lognormal", "wan2022")
ADC_RANGES = ("calibrated-per-column", "full-scale")
MAX_BITS = 16
PROGRAMMING_STREAM = 0x9E0C4A  # spawn_key of the programming errors in a run's seed
READ_STREAM = 0x4EAD01         # spawn_key (with the batch index) of the read noise

# Wan et al., Nature 2022, t = 1 s: sd of the programmed conductance in uS as a polynomial in
# G/g_max, fitted at g_max = 40 uS (aihwkit ReRamWan2022NoiseModel, coefficients c0..c4)
WAN2022_COEFFS_US = (0.348, 16.030, -43.853, 45.393, -16.815)
WAN2022_GMAX_US = 40.0


def _check_level(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) or v < 0:
        raise RuntimeInputError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def _check_bits(name: str, v) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_BITS:
        raise RuntimeInputError(f"{name} must be an integer from 1 to {MAX_BITS} (or none: unbounded), got {v!r}")
    return int(v)


@dataclass(frozen=True)
class Nonideal:
    """A chip's non-idealities beside its stuck cells (module docstring: distributions, seeds)."""

    programming_sigma: float = 0.0
    programming_model: str = "additive"
    read_sigma: float = 0.0      # fraction of the conductance range, per cell, per batch
    dac_bits: int | None = None  # None: unbounded
    adc_bits: int | None = None  # None: unbounded
    adc_range: str = "calibrated-per-column"
    name: str = "custom"

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "programming_sigma", _check_level("programming variation", self.programming_sigma))
        set_(self, "read_sigma", _check_level("read noise", self.read_sigma))
        if self.programming_model not in PROGRAMMING_MODELS:
            raise RuntimeInputError(f"unknown programming variation model {self.programming_model!r}: choose "
                                    f"{', '.join(PROGRAMMING_MODELS)}")
        set_(self, "dac_bits", _check_bits("DAC bits", self.dac_bits))
        set_(self, "adc_bits", _check_bits("ADC bits", self.adc_bits))
        if self.adc_range not in ADC_RANGES:
            raise RuntimeInputError(f"unknown ADC range {self.adc_range!r}: choose {', '.join(ADC_RANGES)}")

    @property
    def ideal(self) -> bool:
        """No non-ideality at all: a chip computes exactly as with stuck cells alone."""
        return self.programming_sigma == 0 and self.read_sigma == 0 and self.dac_bits is None \
            and self.adc_bits is None

    @property
    def converters(self) -> bool:
        """DAC or ADC resolution: applied by a rewrite of the graph (``converters``)."""
        return self.dac_bits is not None or self.adc_bits is not None

    @property
    def varies(self) -> bool:
        return self.programming_sigma > 0

    def check_applies(self, precision: str) -> None:
        """One line for what cannot be applied (yet): converters and noise in int8."""
        if precision != "fp32" and self.converters:
            raise RuntimeInputError(f"--precision {precision} quantises activations its own way (8 bits, per "
                                    f"tensor): DAC/ADC resolution (--dac-bits, --adc-bits) needs --precision fp32")
        if precision != "fp32" and (self.programming_sigma > 0 or self.read_sigma > 0):
            raise RuntimeInputError(f"--precision {precision} computes with the crossbar's integer weights, which "
                                    f"cannot hold programming variation or read noise: use --precision fp32")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Nonideal:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise RuntimeInputError(f"unknown non-ideality fields: {', '.join(sorted(unknown))}")
        return cls(**d)

    def with_options(self, **overrides) -> Nonideal:
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given, name=self.name if not given else
                       ("custom" if self.name in ("custom", "ideal") else f"{self.name}+custom"))


NONIDEAL_PRESETS: dict[str, Nonideal] = {
    "ideal": Nonideal(name="ideal"),
    # NeuRRAM's RRAM as measured (Wan et al., Nature 2022) through aihwkit's fit, plus aihwkit's
    # suggested ~1% short-term read noise (its ReRamWan2022NoiseModel docstring: "about 1%",
    # forward.w_noise = 0.01, additive constant); converters unbounded
    "wan2022": Nonideal(programming_sigma=1.0, programming_model="wan2022", read_sigma=0.01, name="wan2022"),
}


def nonideal_preset(name: str) -> Nonideal:
    try:
        return NONIDEAL_PRESETS[name]
    except KeyError:
        raise RuntimeInputError(f"unknown non-ideality preset {name!r}: choose "
                                f"{', '.join(NONIDEAL_PRESETS)}") from None


# ------------------------------------------------------------------ seeds

def programming_seed(seed: np.random.SeedSequence) -> np.random.SeedSequence:
    """The programming errors' own stream of a run's seed (``faults.run_seed``)."""
    return np.random.SeedSequence(entropy=seed.entropy, spawn_key=(PROGRAMMING_STREAM,))


def read_seed(seed: np.random.SeedSequence, batch: int) -> np.random.SeedSequence:
    """The read noise of batch ``batch`` (0, 1, ... in evaluation order) of a run."""
    return np.random.SeedSequence(entropy=seed.entropy, spawn_key=(READ_STREAM, int(batch)))


# ------------------------------------------------------------------ per-cell draws (level units)

def wan2022_sigma(x: np.ndarray) -> np.ndarray:
    """The measured sd as a fraction of g_max at G/g_max = x (aihwkit's fit, clipped at 0)."""
    s = np.zeros_like(x)
    for i, c in enumerate(WAN2022_COEFFS_US):
        s += np.float32(c) * x ** i
    return np.maximum(s, 0) / np.float32(WAN2022_GMAX_US)


def programmed_levels(levels: np.ndarray, codes: np.ndarray, nonideal: Nonideal, device: DeviceConfig,
                      seed: np.random.SeedSequence) -> np.ndarray:
    """Flat cell levels (uint8, stuck cells already at their stuck level) -> the levels the cells
    really hold after programming (float32, in [0, L-1]; stuck cells unchanged)."""
    z = np.random.Generator(np.random.PCG64(programming_seed(seed))).standard_normal(levels.size, dtype=np.float32)
    top = np.float32(device.levels - 1)
    lv = levels.astype(np.float32)
    sigma = np.float32(nonideal.programming_sigma)
    if nonideal.programming_model == "additive":
        z *= sigma * top
        varied = np.add(z, lv, out=z)
    else:
        g_min, g_max = np.float32(device.g_min), np.float32(device.g_max)
        g = g_min + lv / top * (g_max - g_min)
        if nonideal.programming_model == "lognormal":
            g = g * np.exp(sigma * z)
        else:  # wan2022
            g = g + sigma * wan2022_sigma(g / g_max) * g_max * z
        varied = (g - g_min) / (g_max - g_min) * top
    varied = np.clip(varied, 0, top, out=varied)
    stuck = codes != 0
    varied[stuck] = lv[stuck]
    return varied


def read_noise(n_cells: int, nonideal: Nonideal, device: DeviceConfig, seed: np.random.SeedSequence,
               batch: int) -> np.ndarray:
    """The read error of every cell for batch ``batch``, in levels (float32, not clipped)."""
    rng = np.random.Generator(np.random.PCG64(read_seed(seed, batch)))
    return rng.standard_normal(n_cells, dtype=np.float32) * np.float32(nonideal.read_sigma * (device.levels - 1))


def decode_float(levels: np.ndarray, device: DeviceConfig) -> np.ndarray:
    """``crossbar.decode`` for real-valued levels (planes, slices, R, C) -> (R, C) float32: what the
    varied cells sum to in integer-weight units (float32 holds every integer weight exactly)."""
    values = levels[:, 0].astype(np.float32)
    for k in range(1, device.cells_per_weight):  # (np.tensordot over a short axis is 10x slower)
        values += np.float32(2.0 ** (device.bits_per_cell * k)) * levels[:, k]
    if device.encoding == "differential":
        return values[0] - values[1]
    return values[0] - device.offset

"""The ``rram.*`` ONNX metadata contract and the input normalisation, defined once.

``rram export`` writes these ``metadata_props``; the passes read and rewrite the BN-rate keys, the
quantizer adds ``rram.device``, the runtime reads the normalisation and the BN rate. Every module
takes the key names from here (docs/architecture.md).

- ``rram.model`` JSON ModelSpec (its ``"padded"``: trained with 1x1 kernels padded to 3x3, which
  the passes' ``standard`` reads: passes/catalog.pads_1x1); ``rram.normalization`` JSON {"mean":
  [3], "std": [3]} (of images in [0, 1]; ``rram passes --mean/--std`` records it in a model from
  elsewhere);
  ``rram.drop_rate`` training drop-connect rate; ``rram.input_layout`` a description;
  ``rram.source`` the file name of the checkpoint it came from (its name only, not its folder: the
  model's bytes and sha256 are the same wherever an identical build ran; `rram export --json`
  prints the full path); ``rram.checkpoint_sha256`` the sha256 of that checkpoint file (its
  provenance: results files record it, ``runtime/provenance.py``).
- ``rram.bn_stats_rates`` JSON list of rate strings whose BN statistics the model carries as extra
  initializers ``NAME@rate=r`` (``RATE_MARKER``); ``rram.bn_rate_default`` the rate baked in at
  export; ``rram.bn_rate`` the rate whose statistics the BN nodes (or the folded weights) hold.
- ``rram.passes`` comma-separated passes run so far; ``rram.device`` JSON DeviceConfig of the
  crossbar the model is quantised for.
- ``rram.normalization_embedded`` the same JSON as ``rram.normalization``, after the
  embed-normalization pass put it into the graph (the model then takes images in [0, 1]).
- ``rram.bn_targets`` JSON {layer output tensor: {"gamma": [C], "beta": [C], "epsilon": e,
  "fold_scale": [C]}}: what each BN that fold-bn folded asked of its layer, for per-chip
  calibration of the digital periphery (runtime/calibration/).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .errors import RuntimeInputError

MODEL_KEY = "rram.model"
NORMALIZATION_KEY = "rram.normalization"
DROP_RATE_KEY = "rram.drop_rate"
BN_RATE_KEY = "rram.bn_rate"
BN_RATE_DEFAULT_KEY = "rram.bn_rate_default"
BN_STATS_RATES_KEY = "rram.bn_stats_rates"
INPUT_LAYOUT_KEY = "rram.input_layout"
SOURCE_KEY = "rram.source"
PASSES_KEY = "rram.passes"
DEVICE_KEY = "rram.device"
BN_TARGETS_KEY = "rram.bn_targets"
NORMALIZATION_EMBEDDED_KEY = "rram.normalization_embedded"
CHECKPOINT_SHA256_KEY = "rram.checkpoint_sha256"
# Keys that say where a model came from and change no number: results files fingerprint an artifact
# without them (runtime/artifact/deployed.content_sha256), so that two builds which differ only here (an
# older `rram export` recorded no checkpoint sha256, or the checkpoint's full path) are seen as one.
PROVENANCE_ONLY_KEYS = (SOURCE_KEY, CHECKPOINT_SHA256_KEY)

RATE_MARKER = "@rate="  # per-rate BN statistics initializer: f"{name}{RATE_MARKER}{rate}"


def rate_initializer_name(name: str, rate: str) -> str:
    return f"{name}{RATE_MARKER}{rate}"


def read_metadata(model) -> dict[str, str]:
    """An ONNX ModelProto's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalisation of RGB images in [0, 1]: ``(x - mean) / std``."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):  # one check for checkpoints, --mean/--std and metadata alike
        values = tuple(self.mean) + tuple(self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in values) \
                or min(self.std) <= 0:
            raise ValueError("mean and std must be three finite numbers each, std > 0")

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]))

    def to_metadata(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], where) -> Normalization | None:
        """The normalisation ``rram export`` records (``rram.normalization``), or None."""
        text = metadata.get(NORMALIZATION_KEY)
        if text is None:
            return None
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError):
            raise RuntimeInputError(f"{where}: unreadable {NORMALIZATION_KEY} {text!r}") from None


def normalize_images(images: np.ndarray, normalization: Normalization | None) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW, once, as one contiguous array."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise RuntimeInputError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    if normalization is not None:
        mean = np.asarray(normalization.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(normalization.std, np.float32).reshape(1, 3, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def bn_rate_from_metadata(metadata: dict[str, str], where) -> float | None:
    """The BN rate a model's statistics are for (``rram.bn_rate``), or None."""
    text = metadata.get(BN_RATE_KEY)
    try:
        return None if text is None else float(json.loads(text))
    except (ValueError, TypeError):
        raise RuntimeInputError(f"{where}: unreadable {BN_RATE_KEY} {text!r}") from None

"""A measured chip's calibration file (``rram calibrate``): written, and read with every number
checked."""
from __future__ import annotations

import numpy as np

from ..errors import RuntimeInputError

# --------------------------------------------------------------------------- a measured chip's file

CHIP_FORMAT = "rram-chip-calibration"
CHIP_VERSION = 1


def chip_calibration_doc(affines: dict[str, tuple[np.ndarray, np.ndarray]], *, model_sha256: str,
                         fault_map_sha256: str, calibrate: int, calibrate_sha256: str,
                         precision: str = "fp32") -> dict:
    """What a deployment programs into one chip's periphery: per calibrated layer (its output
    tensor) and output channel, the digital scale and offset applied to the column's output;
    ``precision``: the numerics the chip was measured in (int8: the deployed int8 graph)."""
    return {"format": CHIP_FORMAT, "version": CHIP_VERSION, "model_sha256": model_sha256,
            "fault_map_sha256": fault_map_sha256, "calibrate": int(calibrate),
            "calibrate_sha256": calibrate_sha256, "precision": precision,
            "layers": [{"output": out, "scale": np.asarray(a, np.float64).tolist(),
                        "offset": np.asarray(b, np.float64).tolist()} for out, (a, b) in affines.items()]}


def read_chip_calibration(path, *, model_sha256: str,
                          fault_map_sha256: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The affines of a chip-calibration file, refused (one line) when it belongs to another
    artifact or another chip."""
    from ..fileio import read_json_document

    doc = read_json_document(path, CHIP_FORMAT, "chip calibration file")
    if doc.get("version") != CHIP_VERSION:
        raise RuntimeInputError(f"{path}: chip calibration version {doc.get('version')!r}, "
                                f"this tool reads {CHIP_VERSION}")
    if doc.get("model_sha256") != model_sha256:
        raise RuntimeInputError(f"{path} was calibrated for another artifact (model sha256 "
                                f"{str(doc.get('model_sha256'))[:12]}, this one {model_sha256[:12]})")
    if doc.get("fault_map_sha256") != fault_map_sha256:
        raise RuntimeInputError(f"{path} was calibrated for another chip (fault map sha256 "
                                f"{str(doc.get('fault_map_sha256'))[:12]}, this one {fault_map_sha256[:12]})")
    calibrate = doc.get("calibrate")
    if not (isinstance(calibrate, int) and not isinstance(calibrate, bool) and calibrate >= 1):
        raise RuntimeInputError(f"{path}: 'calibrate' (the number of calibration images) must be a positive "
                                f"integer, got {calibrate!r}")
    from .. import PRECISIONS

    if doc.get("precision", "fp32") not in PRECISIONS:
        raise RuntimeInputError(f"{path}: 'precision' must be one of {', '.join(PRECISIONS)}, "
                                f"got {doc.get('precision')!r}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise RuntimeInputError(f"{path}: malformed chip calibration file ('layers' must be a non-empty list)")
    affines = {}
    for i, e in enumerate(layers):
        if not isinstance(e, dict) or not isinstance(e.get("output"), str) or not e["output"]:
            raise RuntimeInputError(f"{path}: malformed chip calibration file (layer {i} has no 'output' name)")
        out = e["output"]
        if out in affines:
            raise RuntimeInputError(f"{path}: layer {out!r} is calibrated twice")
        scale, offset = (_channel_values(path, out, e.get(key), key) for key in ("scale", "offset"))
        if scale.shape != offset.shape:
            raise RuntimeInputError(f"{path}: layer {out!r} has {scale.size} scales but {offset.size} offsets")
        bad = ~((scale != 0) & (np.abs(scale) <= MAX_CHIP_SCALE))
        if bad.any():
            c = int(np.flatnonzero(bad)[0])
            raise RuntimeInputError(f"{path}: layer {out!r} channel {c} has scale {scale[c]!r}: a digital scale "
                                    f"must be non-zero with |scale| <= {MAX_CHIP_SCALE:g}")
        affines[out] = (scale, offset)
    return affines


MAX_CHIP_SCALE = 1e6  # |digital scale| of a chip-calibration file: a channel's gain, never near this


def _channel_values(path, layer: str, values, key: str) -> np.ndarray:
    """A chip-calibration file's per-channel ``scale`` or ``offset``: a non-empty list of finite
    numbers (not strings, booleans or nested lists), else a one-line error."""
    ok = isinstance(values, list) and values and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok:
        raise RuntimeInputError(f"{path}: layer {layer!r} {key!r} must be a non-empty list of numbers, one per "
                                f"channel")
    try:
        a = np.asarray(values, np.float64)
    except OverflowError:  # an integer beyond any float
        a = np.asarray([float(v) if abs(v) < 1e308 else np.inf for v in values], np.float64)
    if not np.isfinite(a).all():
        c = int(np.flatnonzero(~np.isfinite(a))[0])
        raise RuntimeInputError(f"{path}: layer {layer!r} channel {c} has {key} {values[c]!r}: not a finite number")
    return a

"""One measured chip (a tested chip's fault-map file): its accuracy (``rram validate
--fault-map``) and its periphery calibration (``rram calibrate``)."""
from __future__ import annotations

import os

import numpy as np

from ..artifact import Artifact
from ..chips import MeasuredChip
from ..engine import Engine, check_normalization, engine_factory
from ..fileio import file_sha256
from ..provenance import of_artifact
from ..results import FORMAT, VERSION, images_digest
from .plan import calibrate_config, normalization_config


def validate_fault_map(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                       fault_map: str | os.PathLike, *, stats_rate: str | float = "auto",
                       engine_kw: dict | None = None, info: dict | None = None,
                       calibrate: np.ndarray | None = None, chip_calibration: str | os.PathLike | None = None,
                       place: bool = False, placement: str | os.PathLike | None = None,
                       calibration_targets: str = "auto") -> dict:
    """Accuracy of the deployed model on one tested chip (a measured fault-map file); with
    ``calibrate``, after calibrating the chip's periphery on those training images; with
    ``chip_calibration``, with the periphery parameters `rram calibrate` wrote for this chip;
    ``place``: placed with its own faults first; ``placement``: as a placement file places it;
    ``calibration_targets``: as ``Engine``'s."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    measured = MeasuredChip(fault_map, artifact, stats_rate, place=place, placement=placement)
    name, chip = measured.model, measured.sample()
    periphery = None
    if chip_calibration is not None:
        from ..calibration import read_chip_calibration

        periphery = read_chip_calibration(chip_calibration, model_sha256=artifact.models[name].sha256,
                                          fault_map_sha256=file_sha256(fault_map))
    engine_kw = {**(engine_kw or {}), "calibration_targets": calibration_targets}
    engine = engine_factory(artifact, images, labels, {**engine_kw, "calibrate": calibrate})(name)
    chip_engine = engine if periphery is None else engine_factory(
        artifact, images, labels, {**(engine_kw or {}), "periphery": periphery})(name)
    return {"format": FORMAT + "-chip", "version": VERSION,
            "config": {"artifact": str(artifact.path), "model": name,
                       "model_sha256": artifact.models[name].sha256,
                       "device": artifact.first.cmap.device.to_dict(), "fault_map": str(fault_map),
                       "fault_map_sha256": file_sha256(fault_map), "images": int(len(labels)),
                       "images_sha256": images_digest(images, labels),
                       "precision": (engine_kw or {}).get("precision", "fp32"),
                       **calibrate_config(calibrate, artifact, calibration_targets), **normalization_config(artifact),
                       **({} if chip_calibration is None else {"chip_calibration": file_sha256(chip_calibration)}),
                       **({} if placement is None else {"placement_sha256": file_sha256(placement)}),
                       **({"place": chip.info} if chip.info else {})},
            "clean": engine.clean_accuracy(),
            "chip": {"accuracy": chip_engine.chip_accuracy(chip), "stuck_fraction": chip.stuck_fraction,
                     "sa1_fraction": chip.sa1_fraction, "sa0_fraction": chip.sa0_fraction},
            "info": {**(info or {}), "provenance": of_artifact(artifact)}}


def calibrate_fault_map(artifact: Artifact | str | os.PathLike, fault_map: str | os.PathLike,
                        calibrate: np.ndarray, *, stats_rate: str | float = "auto",
                        engine_kw: dict | None = None, placement: str | os.PathLike | None = None,
                        calibration_targets: str = "auto") -> dict:
    """The periphery parameters of one measured chip (``rram calibrate``): its faulty weights (as
    ``placement`` places them, when given: calibration runs after placement), the calibration
    images, and the resulting per-layer, per-channel digital scale and offset (to the targets
    ``calibration_targets`` chooses, as ``Engine``'s: the file records "measured" ones)."""
    from ..calibration import chip_calibration_doc

    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    measured = MeasuredChip(fault_map, artifact, stats_rate, placement=placement)
    name, chip = measured.model, measured.sample()
    model = artifact.models[name]
    check_normalization(artifact)
    # the engine evaluates nothing here, it only measures the chip: one image, or one batch of a
    # model that fixes its batch size
    n = model.fixed_batch(calibrate.shape) or 1
    images, labels = np.resize(calibrate, (n, *calibrate.shape[1:])), np.zeros(n, np.int64)
    engine = Engine(model, images, labels, **{**(engine_kw or {}), "calibrate": calibrate,
                                                      "calibration_targets": calibration_targets})
    affines = engine.calibrator.measure(engine.weights(chip))  # fp32: float weights; int8: crossbar integers
    doc = chip_calibration_doc(affines, model_sha256=model.sha256, fault_map_sha256=file_sha256(fault_map),
                               calibrate=len(calibrate), precision=engine.precision,
                               calibrate_sha256=images_digest(calibrate, np.zeros(0, np.int64)))
    if engine.targets_kind == "measured":  # absent: the BN targets fold-bn recorded
        doc["targets"] = "measured"
    return {**doc, **normalization_config(artifact)}

"""One measured chip (a tested chip's fault-map file): its accuracy (``rram validate
--fault-map``) and its periphery calibration (``rram calibrate``)."""
from __future__ import annotations

import os

import numpy as np

from ..artifact import Artifact
from ..chips import MeasuredChip
from ..engine import Engine, check_normalization, engine_factory
from ..errors import RuntimeInputError
from ..fileio import file_sha256
from ..provenance import of_artifact
from ..results import FORMAT, VERSION, images_digest
from .plan import calibrate_config, check_seed, normalization_config


def validate_fault_map(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                       fault_map: str | os.PathLike, *, stats_rate: str | float = "auto",
                       engine_kw: dict | None = None, info: dict | None = None,
                       calibrate: np.ndarray | None = None, chip_calibration: str | os.PathLike | None = None,
                       place: bool = False, placement: str | os.PathLike | None = None,
                       calibration_targets: str = "auto", nonideal=None, seed: int = 0) -> dict:
    """Accuracy of the deployed model on one tested chip (a measured fault-map file); with
    ``calibrate``, after calibrating the chip's periphery on those training images; with
    ``chip_calibration``, with the periphery parameters `rram calibrate` wrote for this chip;
    ``place``: placed with its own faults first; ``placement``: as a placement file places it;
    ``calibration_targets``: as ``Engine``'s. ``nonideal`` (``variation.Nonideal``): the chip
    evaluated behind its DAC/ADC resolution (ranges from ``engine_kw["calibration"]``, as a
    campaign's) and with programming variation and read noise drawn from
    ``faults.measured_seed(seed)`` (``measured_nonideal`` says what it refuses)."""
    precision = (engine_kw or {}).get("precision", "fp32")
    nonideal, seed = measured_nonideal(nonideal, precision, chip_calibration), check_seed(seed)
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    measured = MeasuredChip(fault_map, artifact, stats_rate, place=place, placement=placement, nonideal=nonideal,
                            seed=seed)
    name, chip = measured.model, measured.sample()
    periphery = None
    if chip_calibration is not None:
        from ..calibration import read_chip_calibration

        periphery = read_chip_calibration(chip_calibration, model_sha256=artifact.models[name].sha256,
                                          fault_map_sha256=file_sha256(fault_map))
    engine_kw = {**(engine_kw or {}), "calibration_targets": calibration_targets}
    if nonideal is not None and nonideal.converters:  # the campaign's converter graph (runtime/converters.py)
        engine_kw["converters"] = nonideal
    engine = engine_factory(artifact, images, labels, {**engine_kw, "calibrate": calibrate})(name)
    chip_engine = engine if periphery is None else engine_factory(
        artifact, images, labels, {**(engine_kw or {}), "periphery": periphery})(name)
    return {"format": FORMAT + "-chip", "version": VERSION,
            "config": {"artifact": str(artifact.path), "model": name,
                       "model_sha256": artifact.models[name].sha256,
                       "device": artifact.first.cmap.device.to_dict(), "fault_map": str(fault_map),
                       "fault_map_sha256": file_sha256(fault_map), "images": int(len(labels)),
                       "images_sha256": images_digest(images, labels),
                       "precision": precision, **nonideal_config(nonideal, seed, engine_kw.get("calibration")),
                       **calibrate_config(calibrate, artifact, calibration_targets), **normalization_config(artifact),
                       **({} if chip_calibration is None else {"chip_calibration": file_sha256(chip_calibration)}),
                       **({} if placement is None else {"placement_sha256": file_sha256(placement)}),
                       **({"place": chip.info} if chip.info else {})},
            "clean": engine.clean_accuracy(),
            "chip": {"accuracy": chip_engine.chip_accuracy(chip), "stuck_fraction": chip.stuck_fraction,
                     "sa1_fraction": chip.sa1_fraction, "sa0_fraction": chip.sa0_fraction},
            "info": {**(info or {}), "provenance": of_artifact(artifact)}}


# --chip-calibration FILE with a simulated non-ideality: one line (docs/runtime.md, Device non-idealities)
CHIP_CALIBRATION_NONIDEAL = (
    "--chip-calibration FILE is the periphery rram calibrate measured on the real chip, its programming errors "
    "and read noise in it and no converters before it: simulated non-idealities on top would evaluate a chip "
    "that does not exist (drop one of them, or calibrate the simulated chip with --calibrate N)")


def measured_nonideal(nonideal, precision: str, chip_calibration=None):
    """The non-idealities a measured chip is evaluated with (None: none, as before them), or a
    one-line ``RuntimeInputError``: what no chip of that precision can hold
    (``Nonideal.check_applies``), or any of them with a chip calibration file."""
    if nonideal is None:
        return None
    nonideal.check_applies(precision)
    if nonideal.ideal:  # no non-ideality: today's chip, its results file unchanged
        return None
    if chip_calibration is not None:
        raise RuntimeInputError(CHIP_CALIBRATION_NONIDEAL)
    return nonideal


def nonideal_config(nonideal, seed: int, calibration: np.ndarray | None) -> dict:
    """What the chip's results record of its non-idealities (nothing without one): ``nonideal``
    as a campaign's config holds it, the ``seed`` of the draws when there are draws, and the
    converters' range images (``calibration_sha256``, as a campaign's)."""
    if nonideal is None:
        return {}
    out = {"nonideal": nonideal.to_dict()}
    if nonideal.programming_sigma > 0 or nonideal.read_sigma > 0:
        out["seed"] = seed
    if nonideal.converters and calibration is not None:
        out["calibration_sha256"] = images_digest(calibration, np.zeros(0, np.int64))
    return out


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

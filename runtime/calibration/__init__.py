"""Per-chip calibration of the digital periphery: which calibration images a chip sees.

After a chip is programmed, a deployment runs N calibration images through it and re-estimates
each channel's batch-norm statistics with the chip's own (faulty) weights; only the digital
per-channel scale and offset after each crossbar column change. The PyTorch reference
(`rram eval --sa1 P --calibrate N`) and the fault campaign take the same N training images,
chosen here from the seed alone, so that both calibrate every chip on the same data.

Modules: ``targets`` (the images and the BN targets), ``measured`` (targets measured on the
fault-free model, for a model that records no BN target), ``graphs`` (the statistics graphs),
``stream`` (one batch or streamed), ``periphery`` (``ChipCalibrator``), ``chip_file`` (a measured
chip's calibration file)."""
from .chip_file import CHIP_FORMAT, CHIP_VERSION, MAX_CHIP_SCALE, chip_calibration_doc, read_chip_calibration
from .graphs import measure, pruned, stats_model, streamed_stats_model
from .measured import calibrated_layers, measured_targets
from .periphery import ChipCalibrator
from .stream import CALIBRATION_BATCH, CalibrationImages, Statistics, calibration_images
from .targets import TARGET_KINDS, BNTarget, calibration_indices, target_kind, targets_from_metadata

__all__ = [
    "BNTarget", "CALIBRATION_BATCH", "CHIP_FORMAT", "CHIP_VERSION", "CalibrationImages", "ChipCalibrator",
    "MAX_CHIP_SCALE", "Statistics", "TARGET_KINDS", "calibrated_layers", "calibration_images", "calibration_indices",
    "chip_calibration_doc", "measure", "measured_targets", "pruned", "read_chip_calibration", "stats_model",
    "streamed_stats_model", "target_kind", "targets_from_metadata",
]

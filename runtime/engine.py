"""The fault-injection engine: one deployed model evaluated on fixed images under any number of
simulated chips, one onnxruntime session per chip with that chip's weights (fp32: float weights
folded by ``artifact.deployed``; int8: crossbar integers in the graph ``int8`` prepares)."""
from __future__ import annotations

import time

import numpy as np

from . import PRECISIONS
from .artifact.deployed import DeployedModel, append_initializers
from .artifact.layout import MODEL_NAME
from .calibration import (
    CALIBRATION_BATCH,
    BNTarget,
    CalibrationImages,
    ChipCalibrator,
    calibrated_layers,
    measured_targets,
    target_kind,
    targets_from_metadata,
)
from .errors import RuntimeInputError
from .faults import Chip, faulty_levels
from .int8 import prepare_int8, quantize_input
from .int8.calibrate import Int8ChipCalibrator
from .metadata import NORMALIZATION_EMBEDDED_KEY, NORMALIZATION_KEY, normalize_images
from .session import check_threads, default_providers, default_threads, make_session


class Engine:
    """Evaluates one prepared model on fixed images under any number of chips."""

    def __init__(self, model: DeployedModel, images: np.ndarray, labels: np.ndarray, *,
                 batch_size: int = 128, threads: int | None = None, providers: list[str] | None = None,
                 normalized: np.ndarray | None = None, precision: str = "fp32",
                 calibration: np.ndarray | None = None, calibrate: np.ndarray | None = None,
                 periphery: dict | None = None, calibrate_batch: int = CALIBRATION_BATCH,
                 calibration_targets: str = "auto", converters=None):
        """``calibration``: uint8 NHWC training images, for ``precision="int8"`` only (activation
        ranges). ``calibrate``: uint8 NHWC training images on which every chip's periphery is
        calibrated (per-chip BN re-estimation, runtime/calibration/; with int8 measured and applied
        in the int8 graph, runtime/int8/calibrate.py) before it is evaluated.
        ``periphery``: instead, one chip's digital (scale, offset) per layer, as `rram calibrate`
        wrote them; used for every chip evaluated (a measured chip's file). ``calibrate_batch``: the
        most calibration images measured as one batch; more are streamed in batches of that size
        (of the model's own where it fixes one), in memory that does not grow with their number.
        ``calibration_targets``: what each calibrated layer is brought back to: "bn" (the BN targets
        fold-bn recorded), "measured" (the fault-free deployed model's statistics on the
        calibration images, every mapped Conv/Gemm layer), "auto" (bn where recorded).
        ``converters``: a ``variation.Nonideal`` whose DAC/ADC resolution every chip is computed
        with (fp32; its ranges from ``calibration``, runtime/converters.py); with ``calibrate``
        each chip is calibrated and evaluated behind them (its periphery after the ADCs)."""
        if len(images) != len(labels) or len(labels) == 0:
            raise RuntimeInputError(f"{len(images)} images but {len(labels)} labels")
        self.model = model
        self.x = normalized if normalized is not None else normalize_images(images, model.normalization)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        fixed = model.fixed_batch(images.shape)
        if fixed is not None:  # the model takes exactly this many images per call
            if len(labels) % fixed:
                raise RuntimeInputError(f"{model.folder}: the model takes batches of exactly {fixed} images; "
                                        f"{len(labels)} images are not a multiple of {fixed} (choose --images)")
            self.batch_size = fixed
        check_threads(threads)
        self.threads = threads or default_threads()
        self.providers = providers or default_providers()
        if precision not in PRECISIONS:
            raise RuntimeInputError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
        self.precision = precision
        self.feed_name, self.feed = model.input_name, self.x
        self.fp32_base = model.base_bytes
        if converters is not None and not (converters.dac_bits is not None or converters.adc_bits is not None):
            converters = None
        if converters is not None and (precision != "fp32" or periphery is not None):
            raise RuntimeInputError("DAC/ADC resolution applies to fp32 chips (not with --precision int8 or a "
                                    "chip calibration file)")
        if precision == "int8":
            calib = normalize_images(calibration, model.normalization) if calibration is not None else None
            self.int8 = prepare_int8(model, calib, calibration_batch=fixed or 100, fixed_batch=fixed is not None)
            self.feed_name, self.feed = self.int8.input_name, quantize_input(self.x, self.int8)
        self.calibrator, self.periphery = None, periphery
        if calibrate is not None or periphery is not None:
            # the calibration images stay uint8, normalised (and quantised) one batch at a time:
            # more than CALIBRATION_BATCH of them are streamed (runtime/calibration.Statistics),
            # in batches of the model's own size where it fixes one
            fixed_calibrate = fixed if fixed is not None else (model.input_dims[0] if model.input_dims else None)
            norm = model.normalization

            def session(data):
                return make_session(data, providers=self.providers, threads=self.threads, shared_arena=True)

            self.targets_kind = target_kind(model.metadata, calibration_targets, model.folder / MODEL_NAME)
            layers = calibrated_layers(model.base_model(), model.weight_names)
            if calibrate is None:  # a chip's file gives the periphery: the targets only name its layers
                unknown = [out for out in periphery if out not in layers]
                if unknown:
                    raise RuntimeInputError(f"the chip's calibration names {unknown[0]!r}, not a mapped Conv or "
                                            f"Gemm output of {model.folder / MODEL_NAME}")
                targets = {out: BNTarget.measured(np.zeros(len(a)), np.ones(len(a)))
                           for out, (a, _) in periphery.items()}
            elif self.targets_kind == "bn":
                targets = targets_from_metadata(model.metadata, model.folder / MODEL_NAME)
            else:  # measured once, on the fault-free fp32 deployed model (calibration.measured)
                targets = measured_targets(
                    model.model_bytes_with(), layers,
                    CalibrationImages(model.input_name, calibrate, lambda x: normalize_images(x, norm)),
                    session, fixed=fixed_calibrate)

            if precision == "fp32":
                calib = None if calibrate is None else CalibrationImages(
                    model.input_name, calibrate, lambda x: normalize_images(x, norm))

                def fp32_calibrator(rewrite=None):
                    return ChipCalibrator(
                        model.base_model(), model.weight_names, [lay.weight_shape for lay in model.cmap.layers],
                        targets, calib, session, batch=calibrate_batch, fixed=fixed_calibrate, rewrite=rewrite)
                rewrite = None
                if converters is not None:  # ranges from the ideal chip as deployed: calibrated too
                    ideal = fp32_calibrator(lambda m: m)
                    w = model.clean_weights()
                    names, arrays = ideal.evaluated(w, ideal.measure(w))
                    rewrite = self._converters(converters, calibration, (ideal.eval_model, names, arrays))
                self.calibrator = fp32_calibrator(rewrite)
            else:  # measured and applied in the int8 graph as deployed (runtime/int8/calibrate.py)
                int8 = self.int8
                calib = None if calibrate is None else CalibrationImages(
                    int8.input_name, calibrate, lambda x: quantize_input(normalize_images(x, norm), int8))
                shapes = [tuple(lay.weight_shape[:1]) + (lay.weight_shape[1] + self.int8.padded_layers.get(i, 0),)
                          + tuple(lay.weight_shape[2:]) for i, lay in enumerate(model.cmap.layers)]
                self.calibrator = Int8ChipCalibrator(
                    self.int8, model.base_model(), model.weight_names, shapes,
                    [lay.scales for lay in model.cmap.layers], targets, calib, session, batch=calibrate_batch,
                    fixed=fixed_calibrate)
        if converters is not None and self.calibrator is None:
            self._converters(converters, calibration, None)

    def _converters(self, converters, calibration: np.ndarray | None, reference):
        """DAC/ADC resolution (runtime/converters.py): the ranges measured once on ``calibration``
        with the ideal chip (``reference``: as per-chip calibration deploys it), the prepared
        model rewritten behind the converters; returns the rewrite (for the calibration graphs)."""
        from .converters import converter_rewrite

        calib = normalize_images(calibration, self.model.normalization) if calibration is not None else None
        rewrite = converter_rewrite(self.model, converters, calib, lambda data: make_session(
            data, providers=self.providers, threads=self.threads, shared_arena=True), reference)
        self.fp32_base = rewrite().SerializeToString()
        return rewrite

    def weights(self, chip: Chip | None = None) -> list[np.ndarray]:
        """What the session needs per chip: float weights (fp32) or crossbar integers (int8)."""
        if self.precision == "fp32":
            return self.model.chip_weights(chip) if chip is not None else self.model.clean_weights()
        if chip is not None and chip.noisy:  # (the campaign's plan refuses it first)
            raise RuntimeInputError("int8 weights are the crossbar's integers: programming variation and read "
                                    "noise need --precision fp32")
        m = self.model
        levels = faulty_levels(m.cmap, chip.codes) if chip is not None else [lay.levels for lay in m.cmap.layers]
        return self.int8.layer_weights([lay.integer_weight(lv, m.cmap.device)
                                        for lay, lv in zip(m.cmap.layers, levels)])

    def session(self, weights: list[np.ndarray] | None = None, affines=None):
        """A session with these per-layer weights (see ``weights``; fault-free when None);
        ``affines``: the chip's periphery already measured (read noise: one per chip)."""
        if self.calibrator is not None:  # the chip's periphery, calibrated or from a file, then the chip
            weights = weights if weights is not None else self.weights()
            if affines is None:
                affines = self.periphery if self.periphery is not None else self.calibrator.measure(weights)
            names, arrays = self.calibrator.evaluated(weights, affines)
            data = append_initializers(self.calibrator.eval_base, names, arrays)
        elif self.precision == "fp32" and self.fp32_base is self.model.base_bytes:
            data = self.model.model_bytes_with(weights)
        elif self.precision == "fp32":  # behind the converters (runtime/converters.py)
            weights = weights if weights is not None else self.model.clean_weights()
            data = append_initializers(self.fp32_base, self.model.weight_names,
                                       [np.asarray(w, dtype=np.float32) for w in weights])
        else:
            data = append_initializers(self.int8.model, self.int8.weight_names,
                                       weights if weights is not None else self.weights())
        return make_session(data, providers=self.providers, threads=self.threads, shared_arena=True)

    def accuracy_of(self, sess, subset: np.ndarray | None = None) -> float:
        """Top-1 accuracy on all images, or on the images at the (sorted) indices ``subset``."""
        if subset is None:
            correct = 0
            for start in range(0, len(self.labels), self.batch_size):
                logits = sess.run(None, {self.feed_name: self.feed[start:start + self.batch_size]})[0]
                correct += int(np.count_nonzero(logits.argmax(1) == self.labels[start:start + self.batch_size]))
            return correct / len(self.labels)
        correct = 0
        for start in range(0, len(subset), self.batch_size):
            idx = subset[start:start + self.batch_size]  # gathered per batch: no copy of the whole subset
            logits = sess.run(None, {self.feed_name: self.feed[idx]})[0]
            correct += int(np.count_nonzero(logits.argmax(1) == self.labels[idx]))
        return correct / len(subset)

    def clean_accuracy(self) -> float:
        return self.accuracy_of(self.session())

    def chip_accuracy(self, chip: Chip) -> float:
        if chip.read_noise:
            return self.read_noise_accuracy(chip)
        return self.accuracy_of(self.session(self.weights(chip)))

    def read_noise_accuracy(self, chip: Chip, subset: np.ndarray | None = None) -> float:
        """Accuracy with read noise: batch b (in evaluation order) computed with the chip's levels
        read with batch b's noise (``DeployedModel.read_weights``), one session per batch. With
        per-chip calibration the periphery is measured once, on the programmed chip without read
        noise, and kept for every batch."""
        return self._read_noise_accuracy(chip, subset)[0]

    def _read_noise_accuracy(self, chip: Chip, subset: np.ndarray | None) -> tuple[float, float]:
        """(accuracy, seconds preparing the chip once: its programmed levels and calibration)."""
        t0 = time.perf_counter()
        m = self.model
        levels = m.chip_levels(chip)
        affines = None
        if self.calibrator is not None:
            affines = self.periphery if self.periphery is not None else self.calibrator.measure(m.weights_of(levels))
        prepared = time.perf_counter() - t0
        total = len(self.labels) if subset is None else len(subset)
        correct = 0
        for b, start in enumerate(range(0, total, self.batch_size)):
            idx = slice(start, start + self.batch_size) if subset is None else subset[start:start + self.batch_size]
            sess = self.session(m.read_weights(levels, chip, b), affines=affines)
            logits = sess.run(None, {self.feed_name: self.feed[idx]})[0]
            correct += int(np.count_nonzero(logits.argmax(1) == self.labels[idx]))
        return correct / total, prepared

    def timed_chip_accuracy(self, chip: Chip, subset: np.ndarray) -> tuple[float, float, float]:
        """The chip's accuracy on the images ``subset``, the seconds spent preparing the chip
        (weights, calibration, session) and those spent evaluating the images (--images auto).
        With read noise the chip is prepared once (its programmed levels, calibration) and each
        batch gets its read weights and a session: that cost grows with the images (one per
        ``batch_size``), so it counts as evaluation, the rest as preparation."""
        t0 = time.perf_counter()
        if chip.read_noise:
            acc, prepared = self._read_noise_accuracy(chip, subset)
            return acc, prepared, time.perf_counter() - t0 - prepared
        sess = self.session(self.weights(chip))
        t1 = time.perf_counter()
        acc = self.accuracy_of(sess, subset)
        return acc, t1 - t0, time.perf_counter() - t1


def check_normalization(artifact) -> None:
    """The models' recorded input normalisation, one for all (what every engine needs)."""
    if artifact.first.normalization is None and NORMALIZATION_EMBEDDED_KEY not in artifact.first.metadata:
        # Guessing (e.g. CIFAR statistics, or none) silently gives a wrong accuracy. A model whose
        # normalisation is in the graph (embed-normalization) takes the images in [0, 1].
        raise RuntimeInputError(f"{artifact.path}: model.onnx records no input normalisation "
                                f"(metadata {NORMALIZATION_KEY}): give --mean R,G,B --std R,G,B (of images in "
                                f"[0, 1]), or record them with `rram passes IN OUT --mean .. --std ..`")
    norms = {m.normalization for m in artifact.models.values()}
    if len(norms) > 1:
        raise RuntimeInputError(f"{artifact.path}: the models use different input normalisations")


def engine_factory(artifact, images: np.ndarray, labels: np.ndarray, engine_kw: dict):
    """``get(model name) -> Engine`` over one artifact (``artifact.Artifact``), each engine built
    once, on demand, the images normalised once for all: what every executor of campaign tasks
    (``executors``, ``ray_executor``) hands the per-chip functions."""
    cache: dict[str, Engine] = {}
    check_normalization(artifact)
    x = normalize_images(images, artifact.first.normalization)

    def get(name: str) -> Engine:
        if name not in cache:
            cache[name] = Engine(artifact.models[name], images, labels, normalized=x, **engine_kw)
        return cache[name]
    return get

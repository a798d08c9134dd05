"""Calibration images in batches: one batch up to ``CALIBRATION_BATCH`` images, streamed beyond
(one pass per layer level, per-image statistics merged across batches with Chan's formula)."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import RuntimeInputError
from .graphs import measure, pruned, stats_model, streamed_stats_model
from .targets import BNTarget

CALIBRATION_BATCH = 2048


class CalibrationImages:
    """The calibration images and how a batch of them becomes the statistics graph's input: kept
    as given (uint8 images) and prepared (normalised, quantised) one batch at a time."""

    def __init__(self, name: str, images, prepare=None):
        self.name, self.images = name, images
        self.prepare = prepare if prepare is not None else (lambda x: x)

    def __len__(self) -> int:
        return len(self.images)

    def feed(self, start: int = 0, stop: int | None = None, size: int | None = None) -> dict[str, np.ndarray]:
        """{input: the prepared images [start, stop)}, padded to ``size`` images (repeating the
        first) for a model that fixes its batch size."""
        x = self.prepare(self.images[start:stop])
        if size is not None and len(x) < size:
            x = np.concatenate([x, np.repeat(x[:1], size - len(x), axis=0)])
        return {self.name: x}


def calibration_images(calibration) -> CalibrationImages | None:
    """A calibrator's ``calibration`` argument: None, ``CalibrationImages``, or a feed
    {input name: prepared images} (one input)."""
    if calibration is None or isinstance(calibration, CalibrationImages):
        return calibration
    if len(calibration) != 1:
        raise RuntimeInputError(f"calibration: one image input expected, got {sorted(calibration)}")
    (name, x), = calibration.items()
    return CalibrationImages(name, x)


class _Moments:
    """Per-channel mean and population variance over images merged batch by batch (Chan et al.'s
    parallel formula, float64), from each image's own mean and variance over its positions (every
    image has as many positions)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, means: np.ndarray, variances: np.ndarray | None) -> None:
        means = means.reshape(len(means), -1).astype(np.float64)
        k = len(means)
        bmean = means.mean(0)
        bm2 = ((means - bmean) ** 2).sum(0)
        if variances is not None:
            bm2 = bm2 + variances.reshape(k, -1).astype(np.float64).sum(0)
        n = self.n + k
        delta = bmean - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + bm2 + delta ** 2 * (self.n * k / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.mean, np.float64), np.asarray(self.m2 / self.n, np.float64)


class Statistics:
    """Every target layer's per-channel mean and variance on the calibration images for one
    chip's weights, each layer measured with the earlier ones calibrated (``stats_model``).

    Up to ``batch`` images (or exactly the model's fixed batch size) run as one batch through the
    in-graph statistics of ``stats_model``. More are streamed: one pass over the images per level
    of ``streamed_stats_model``, in batches of ``batch`` images (a model that fixes its batch
    size: batches of that size, the last one padded and the padding left out of the statistics).
    Pass k measures the layers of level k, each image on its own, merged across batches
    (``_Moments``), with the layers below normalised by their statistics over all the images
    from the earlier passes: what the one batch computes, to float rounding, in memory that does
    not grow with the number of images; the cost is one (partial) forward pass per level."""

    def __init__(self, model: onnx.ModelProto, targets: dict[str, BNTarget], weight_inputs: list,
                 calibration, session, *, weight_ranks: dict[str, int] | None = None,
                 batch: int = CALIBRATION_BATCH, fixed: int | None = None, rewrite=None):
        """``weight_inputs``: the chip's weights, value infos appended to the graph's inputs;
        ``fixed``: the batch size the model fixes, if any; ``rewrite``: applied to every statistics
        graph once built (graph -> graph: DAC/ADC resolution, runtime/converters.py)."""
        self.calibration = calibration_images(calibration)
        self.session = session
        self.batch, self.fixed = (int(fixed), int(fixed)) if fixed else (int(batch), None)
        if self.batch < 1:
            raise RuntimeInputError(f"calibration: batch size {batch} must be positive")
        if self.calibration is not None and len(self.calibration):
            self.calibration.feed(0, 1)  # images the model cannot take are refused now, not at the first chip
        self._model, self._targets, self._weight_inputs, self._ranks = model, targets, weight_inputs, weight_ranks
        self._rewrite = rewrite if rewrite is not None else (lambda m: m)
        smodel, self.order = stats_model(model, targets, weight_ranks=weight_ranks)
        smodel.graph.input.extend(weight_inputs)
        smodel = self._rewrite(smodel)
        self.stats_bytes = smodel.SerializeToString()
        self._one, self._levels = None, None

    @property
    def streamed(self) -> bool:
        """Whether the images are streamed in batches rather than run as one."""
        n = len(self.calibration) if self.calibration is not None else 0
        return n != self.batch if self.fixed else n > self.batch

    def __call__(self, weights: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{layer: (mean, var)} per channel, float64, for a chip with these weights ({input: array})."""
        if self.calibration is None:
            raise RuntimeInputError("calibration: no calibration images to measure the chip with")
        if not self.streamed:
            if self._one is None:
                self._one = self.session(self.stats_bytes)
            return measure(self._one, {**self.calibration.feed(), **weights}, self.order)
        return self.stream(weights)

    def stream(self, weights: dict[str, np.ndarray], normalisers: dict | None = None
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The streamed measurement, whatever the number of images. ``normalisers``: {layer:
        (mean, var)} to normalise the layers with instead of the statistics the earlier passes
        measured (a check: given the one batch's own, it must reproduce the one batch's numbers)."""
        if self.calibration is None:
            raise RuntimeInputError("calibration: no calibration images to measure the chip with")
        if self._levels is None:
            self._levels = self._level_sessions()
        n, size = len(self.calibration), self.fixed
        stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for sess, layers, inputs in self._levels:
            known = {}
            for layer in stats:
                mean, var = (normalisers or stats)[layer]
                shape = [-1] + [1] * (len(self._shape[layer]) - 1)
                known[f"{layer}.rram_fmean"] = mean.astype(np.float32).reshape(shape)
                known[f"{layer}.rram_fvar"] = var.astype(np.float32).reshape(shape)
            constant = {k: v for k, v in {**weights, **known}.items() if k in inputs}
            wanted = [n_ for layer in layers for n_ in self._outputs[layer]]
            moments = {layer: _Moments() for layer in layers}
            for start in range(0, n, self.batch):
                stop = min(start + self.batch, n)
                outs = dict(zip(wanted, sess.run(wanted, {**self.calibration.feed(start, stop, size), **constant})))
                for layer in layers:
                    names = self._outputs[layer]
                    moments[layer].add(outs[names[0]][:stop - start],
                                       outs[names[1]][:stop - start] if len(names) > 1 else None)
            stats.update((layer, moments[layer].result()) for layer in layers)
        return {layer: stats[layer] for layer in self.order}

    def _level_sessions(self) -> list:
        """(session, layers, input names) per level: the streamed graph cut to that level's outputs."""
        smodel, order, levels = streamed_stats_model(self._model, self._targets, weight_ranks=self._ranks)
        assert order == self.order
        smodel.graph.input.extend(self._weight_inputs)
        smodel = self._rewrite(smodel)
        names = {o.name for o in smodel.graph.output}
        self._outputs = {layer: [x for x in (f"{layer}.rram_imean", f"{layer}.rram_ivar") if x in names]
                         for layer in order}
        self._shape = {i.name[:-len(".rram_fmean")]: [d.dim_value for d in i.type.tensor_type.shape.dim]
                       for i in smodel.graph.input if i.name.endswith(".rram_fmean")}
        out = []
        for level in range(max(levels.values()) + 1):
            layers = [layer for layer in order if levels[layer] == level]
            part = pruned(smodel, [x for layer in layers for x in self._outputs[layer]])
            out.append((self.session(part.SerializeToString()), layers, {i.name for i in part.graph.input}))
        return out

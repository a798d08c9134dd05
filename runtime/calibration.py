"""Per-chip calibration of the digital periphery: which calibration images a chip sees.

After a chip is programmed, a deployment runs N calibration images through it and re-estimates
each channel's batch-norm statistics with the chip's own (faulty) weights; only the digital
per-channel scale and offset after each crossbar column change. The PyTorch reference
(`rram eval --sa1 P --calibrate N`) and the fault campaign take the same N training images,
chosen here from the seed alone, so that both calibrate every chip on the same data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .errors import RuntimeInputError

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

    from .metadata import BN_TARGETS_KEY

    text = metadata.get(BN_TARGETS_KEY)
    if not text:
        raise RuntimeInputError(f"{where} records no BN targets ({BN_TARGETS_KEY}), so its periphery cannot be "
                                f"calibrated per chip: rebuild it with `rram passes IN OUT --passes standard` "
                                f"(fold-bn records them) and `rram quantize`")
    try:
        return {k: BNTarget.from_dict(v) for k, v in json.loads(text).items()}
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeInputError(f"{where}: unreadable {BN_TARGETS_KEY} ({e})") from None


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def stats_model(model: onnx.ModelProto, targets: dict[str, BNTarget], *,
                weight_ranks: dict[str, int] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` that measures, in one forward pass of a calibration batch, every target
    layer's per-channel output mean and variance, with each layer already normalised to its target
    by the batch's own statistics (train-mode BN, in the graph): later layers are measured with the
    earlier ones calibrated, as layer-by-layer calibration in network order would, in one run.
    Returns the model and the target layers (output tensor names) in network order; its outputs
    are the model's own, then ``<layer>.rram_mean`` and ``<layer>.rram_var`` for each layer."""
    h = onnx.helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    opset = _opset(m)
    inits = {t.name: t for t in g.initializer}
    nodes, layers = [], []
    for node in g.node:
        out = node.output[0] if node.output else ""
        if out not in targets or node.op_type not in ("Conv", "Gemm"):
            nodes.append(node)
            continue
        t = targets[out]
        w = inits.get(node.input[1])
        if node.op_type == "Gemm":
            rank = 2
        else:
            rank = len(w.dims) if w is not None else (weight_ranks or {}).get(node.input[1])
        if rank is None:
            raise RuntimeInputError(f"calibration: the rank of {node.input[1]!r} is unknown")
        axes = [0] + list(range(2, rank)) if node.op_type == "Conv" else [0]
        shape = [-1] + [1] * (rank - 2) if node.op_type == "Conv" else [-1]
        raw = f"{out}.rram_raw"
        node.output[0] = raw
        del node.input[2:]  # the bias becomes the calibrated offset
        nodes.append(node)

        def const(name, values, shape=shape, out=out):
            g.initializer.append(onnx.numpy_helper.from_array(
                np.asarray(values, np.float32).reshape(shape), f"{out}.rram_{name}"))
            return f"{out}.rram_{name}"

        def reduce_mean(x, y, axes=axes):
            if opset >= 18:
                g.initializer.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), f"{y}.axes"))
                return h.make_node("ReduceMean", [x, f"{y}.axes"], [y], keepdims=1)
            return h.make_node("ReduceMean", [x], [y], axes=axes, keepdims=1)

        mean, var = f"{out}.rram_mean", f"{out}.rram_var"
        p = f"{out}.rram"
        nodes += [reduce_mean(raw, mean),
                  h.make_node("Sub", [raw, mean], [f"{p}_centred"]),
                  h.make_node("Mul", [f"{p}_centred", f"{p}_centred"], [f"{p}_squared"]),
                  reduce_mean(f"{p}_squared", var),
                  h.make_node("Add", [var, const("floor", t.variance_floor)], [f"{p}_var_floor"]),
                  h.make_node("Sqrt", [f"{p}_var_floor"], [f"{p}_std"]),
                  h.make_node("Div", [f"{p}_centred", f"{p}_std"], [f"{p}_normalised"]),
                  h.make_node("Mul", [f"{p}_normalised", const("gain", np.abs(t.gamma))], [f"{p}_scaled"]),
                  h.make_node("Add", [f"{p}_scaled", const("beta", t.beta)], [out])]
        g.output.append(h.make_tensor_value_info(mean, onnx.TensorProto.FLOAT, None))
        g.output.append(h.make_tensor_value_info(var, onnx.TensorProto.FLOAT, None))
        layers.append(out)
    del g.node[:]
    g.node.extend(nodes)
    return m, layers


def _reduce_mean(g: onnx.GraphProto, opset: int, x: str, y: str, axes: list[int]) -> onnx.NodeProto:
    if opset >= 18:
        g.initializer.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), f"{y}.axes"))
        return onnx.helper.make_node("ReduceMean", [x, f"{y}.axes"], [y], keepdims=1)
    return onnx.helper.make_node("ReduceMean", [x], [y], axes=axes, keepdims=1)


def streamed_stats_model(model: onnx.ModelProto, targets: dict[str, BNTarget], *,
                         weight_ranks: dict[str, int] | None = None
                         ) -> tuple[onnx.ModelProto, list[str], dict[str, int]]:
    """``stats_model`` for calibration images streamed in batches. Nothing in it mixes the images
    of a batch: each target layer is normalised to its target with statistics over *all* the
    calibration images, fed as inputs ``<layer>.rram_fmean`` and ``<layer>.rram_fvar`` (per
    channel, in the broadcast shape), and it outputs each image's own per-channel mean and
    (population) variance, ``<layer>.rram_imean`` and ``<layer>.rram_ivar`` (a Gemm: its output
    and no variance, one value per image and channel). Returns the model, the target layers in
    network order and each layer's level: 0 for a layer that no other target layer feeds, else 1
    + the highest level among the target layers it reads from (``StreamedStatistics`` measures
    one level per pass over the images, with the lower levels' statistics then known)."""
    h = onnx.helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    opset = _opset(m)
    inits = {t.name: t for t in g.initializer}
    depth: dict[str, int] = {}  # tensor -> the highest level of the target layers it depends on
    nodes, layers, levels = [], [], {}
    for node in g.node:
        out = node.output[0] if node.output else ""
        d = max((depth.get(i, -1) for i in node.input), default=-1)
        if out not in targets or node.op_type not in ("Conv", "Gemm"):
            for o in node.output:
                depth[o] = d
            nodes.append(node)
            continue
        levels[out] = depth[out] = d + 1
        t = targets[out]
        w = inits.get(node.input[1])
        if node.op_type == "Gemm":
            rank = 2
        else:
            rank = len(w.dims) if w is not None else (weight_ranks or {}).get(node.input[1])
        if rank is None:
            raise RuntimeInputError(f"calibration: the rank of {node.input[1]!r} is unknown")
        spatial = list(range(2, rank)) if node.op_type == "Conv" else []
        shape = [-1] + [1] * (rank - 2) if node.op_type == "Conv" else [-1]
        raw = f"{out}.rram_raw"
        node.output[0] = raw
        del node.input[2:]  # the bias becomes the calibrated offset
        nodes.append(node)

        def const(name, values, shape=shape, out=out):
            g.initializer.append(onnx.numpy_helper.from_array(
                np.asarray(values, np.float32).reshape(shape), f"{out}.rram_{name}"))
            return f"{out}.rram_{name}"

        p = f"{out}.rram"
        imean, ivar, fmean, fvar = (f"{p}_{k}" for k in ("imean", "ivar", "fmean", "fvar"))
        if spatial:
            nodes += [_reduce_mean(g, opset, raw, imean, spatial),
                      h.make_node("Sub", [raw, imean], [f"{p}_icentred"]),
                      h.make_node("Mul", [f"{p}_icentred", f"{p}_icentred"], [f"{p}_isquared"]),
                      _reduce_mean(g, opset, f"{p}_isquared", ivar, spatial)]
            g.output.append(h.make_tensor_value_info(ivar, onnx.TensorProto.FLOAT, None))
        else:
            nodes.append(h.make_node("Identity", [raw], [imean]))
        g.output.append(h.make_tensor_value_info(imean, onnx.TensorProto.FLOAT, None))
        channels = len(t.gamma)
        for name in (fmean, fvar):
            g.input.append(h.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                    [channels] + [1] * (len(shape) - 1)))
        nodes += [h.make_node("Sub", [raw, fmean], [f"{p}_centred"]),
                  h.make_node("Add", [fvar, const("floor", t.variance_floor)], [f"{p}_var_floor"]),
                  h.make_node("Sqrt", [f"{p}_var_floor"], [f"{p}_std"]),
                  h.make_node("Div", [f"{p}_centred", f"{p}_std"], [f"{p}_normalised"]),
                  h.make_node("Mul", [f"{p}_normalised", const("gain", np.abs(t.gamma))], [f"{p}_scaled"]),
                  h.make_node("Add", [f"{p}_scaled", const("beta", t.beta)], [out])]
        layers.append(out)
    del g.node[:]
    g.node.extend(nodes)
    return m, layers, levels


def pruned(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` computing only ``outputs``: the nodes, inputs and initializers they
    need (onnxruntime runs a whole graph whatever outputs are asked for)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    need, kept = set(outputs), []
    for node in reversed(list(g.node)):
        if any(o in need for o in node.output):
            kept.append(node)
            need.update(i for i in node.input if i)
            for a in node.attribute:  # a subgraph's outer-scope reads
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    need.update(i for n in sub.node for i in n.input)
    del g.node[:]
    g.node.extend(reversed(kept))
    for field in (g.input, g.initializer):
        keep = [x for x in field if x.name in need]
        del field[:]
        field.extend(keep)
    outs = {o.name: o for o in g.output}
    del g.output[:]
    g.output.extend(outs[o] for o in outputs)
    return m


def measure(session, feed: dict, layers: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (mean, var)} per channel from one run of a ``stats_model`` session on the batch."""
    wanted = [n for layer in layers for n in (f"{layer}.rram_mean", f"{layer}.rram_var")]
    outs = dict(zip(wanted, session.run(wanted, feed)))
    return {layer: (outs[f"{layer}.rram_mean"].reshape(-1).astype(np.float64),
                    outs[f"{layer}.rram_var"].reshape(-1).astype(np.float64)) for layer in layers}


# Up to this many calibration images run as one batch through ``stats_model`` (the in-graph
# statistics, as always: a result unchanged from one-batch calibration); beyond it they are
# streamed in batches of this size (``StreamedStatistics``), so that memory does not grow with
# N. One batch of ResNet20 at 32x32 takes about 0.42 GB per 1,000 images: 2,048 keeps that
# under 1 GB, and every documented and committed run (256 and 1,024 images) one batch.
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
                 batch: int = CALIBRATION_BATCH, fixed: int | None = None):
        """``weight_inputs``: the chip's weights, value infos appended to the graph's inputs;
        ``fixed``: the batch size the model fixes, if any."""
        self.calibration = calibration_images(calibration)
        self.session = session
        self.batch, self.fixed = (int(fixed), int(fixed)) if fixed else (int(batch), None)
        if self.batch < 1:
            raise RuntimeInputError(f"calibration: batch size {batch} must be positive")
        if self.calibration is not None and len(self.calibration):
            self.calibration.feed(0, 1)  # images the model cannot take are refused now, not at the first chip
        self._model, self._targets, self._weight_inputs, self._ranks = model, targets, weight_inputs, weight_ranks
        smodel, self.order = stats_model(model, targets, weight_ranks=weight_ranks)
        smodel.graph.input.extend(weight_inputs)
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


def _channel_axis(node: onnx.NodeProto) -> int:
    """The weight axis of the output channels: 0 for Conv and Gemm(transB=1), 1 for Gemm(transB=0)."""
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return 1 if node.op_type == "Gemm" and not trans_b else 0


class ChipCalibrator:
    """Per-chip calibration for a deployed float model whose mapped weights are appended per chip
    (``base``: the model without those initializers, as the runtime engine keeps it).

    For each chip: one run of the ``stats_model`` on the calibration batch with the chip's weights
    measures every calibrated layer (more images than a batch: streamed, ``Statistics``); the
    digital (scale, offset) of each channel follow from its BN target; the evaluated model takes
    scale * weight as the layer's weight (the scale multiplies the column's output, so the product
    is the same) and the offset as its bias."""

    def __init__(self, base: onnx.ModelProto, weight_names: list[str], weight_shapes: list[tuple],
                 targets: dict[str, BNTarget], calibration, session, *, batch: int = CALIBRATION_BATCH,
                 fixed: int | None = None):
        """``calibration``: the calibration images (``CalibrationImages``: uint8 images and their
        normalisation, prepared batch by batch; or a feed {input name: normalised images}), None
        when the chip's parameters come from a file (``measure`` then refuses);
        ``session(model_bytes) -> onnxruntime session``; ``batch``: the most images measured
        as one batch (more are streamed, ``Statistics``); ``fixed``: the batch size the model
        fixes, if any."""
        self.weight_names = list(weight_names)
        self.session = session
        by_weight = {}
        for node in base.graph.node:
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.output[0] in targets \
                    and node.input[1] in self.weight_names:
                by_weight[node.input[1]] = node
        if not by_weight:
            raise RuntimeInputError("calibration: no mapped layer has a BN target")
        self.layers = [(i, by_weight[w].output[0], _channel_axis(by_weight[w]))
                       for i, w in enumerate(self.weight_names) if w in by_weight]
        self.targets = {out: targets[out] for _, out, _ in self.layers}
        ranks = dict(zip(self.weight_names, (len(s) for s in weight_shapes)))
        # the chip's weights are inputs of the statistics graph: one session serves every chip
        inputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))
                  for name, shape in zip(self.weight_names, weight_shapes)]
        self.stats = Statistics(base, self.targets, inputs, calibration, session, weight_ranks=ranks,
                                batch=batch, fixed=fixed)
        self.calibration, self.order = self.stats.calibration, self.stats.order
        self.stats_bytes = self.stats.stats_bytes
        # the evaluated model: each calibrated layer reads its bias from a per-chip offset
        emodel = onnx.ModelProto()
        emodel.CopyFrom(base)
        for node in emodel.graph.node:
            if node.op_type in ("Conv", "Gemm") and node.output and node.output[0] in self.targets:
                del node.input[2:]
                node.input.append(f"{node.output[0]}.rram_offset")
        used = {i for n in emodel.graph.node for i in n.input}
        kept = [t for t in emodel.graph.initializer if t.name in used]
        del emodel.graph.initializer[:]
        emodel.graph.initializer.extend(kept)
        self.eval_base = emodel.SerializeToString()

    def measure(self, weights: list[np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{layer output: (scale, offset)} for a chip computing with these float weights."""
        stats = self.stats({n: np.asarray(w, np.float32) for n, w in zip(self.weight_names, weights)})
        return {out: self.targets[out].affine(*stats[out]) for out in self.order}

    def evaluated(self, weights: list[np.ndarray], affines: dict) -> tuple[list[str], list[np.ndarray]]:
        """(initializer names, arrays) to append to ``eval_base``: weights with the digital scale
        folded in, and the offsets."""
        weights = [np.asarray(w, np.float32) for w in weights]
        names, arrays = list(self.weight_names), list(weights)
        for i, out, axis in self.layers:
            if out not in affines:
                raise RuntimeInputError(f"the chip's calibration has no entry for layer {out!r}")
            scale, offset = affines[out]
            if scale.shape != (weights[i].shape[axis],) or offset.shape != scale.shape:
                raise RuntimeInputError(f"the chip's calibration of layer {out!r} has {scale.size} channels, "
                                        f"the layer {weights[i].shape[axis]}")
            shape = [1] * weights[i].ndim
            shape[axis] = -1
            arrays[i] = (weights[i] * scale.reshape(shape)).astype(np.float32)
            names.append(f"{out}.rram_offset")
            arrays.append(np.asarray(offset, np.float32))
        return names, arrays


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
    from .fileio import read_json_document

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
    from . import PRECISIONS

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

"""The statistics graphs: one forward pass measuring every calibrated layer's per-channel batch
statistics (``stats_model``), the streamed variant that normalises with statistics over all the
images (``streamed_stats_model``), a graph cut to some outputs (``pruned``), and ``measure``."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import RuntimeInputError
from .targets import BNTarget


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _take_layer(g: onnx.GraphProto, node: onnx.NodeProto, inits: dict,
                weight_ranks: dict[str, int] | None) -> tuple[str, str, int]:
    """A target Conv/Gemm ``node`` made into the raw pre-normalisation output ``<out>.rram_raw``
    (its bias dropped: the bias becomes the calibrated offset): (out, raw, the weight's rank)."""
    out = node.output[0]
    if node.op_type == "Gemm":
        rank = 2
    else:
        w = inits.get(node.input[1])
        rank = len(w.dims) if w is not None else (weight_ranks or {}).get(node.input[1])
    if rank is None:
        raise RuntimeInputError(f"calibration: the rank of {node.input[1]!r} is unknown")
    raw = f"{out}.rram_raw"
    node.output[0] = raw
    del node.input[2:]
    return out, raw, rank


def _channel_shape(op_type: str, rank: int) -> list[int]:
    """The broadcast shape of one value per channel of a Conv (N, C, ...) or Gemm (N, C) output."""
    return [-1] + [1] * (rank - 2) if op_type == "Conv" else [-1]


def _to_target(g: onnx.GraphProto, t: BNTarget, out: str, shape: list[int], var: str) -> list[onnx.NodeProto]:
    """``<out>.rram_centred`` (the raw output less its mean) normalised with variance ``var`` and
    scaled to the target's |gamma| and beta, into ``out``: the BN the periphery re-creates."""
    h, p = onnx.helper, f"{out}.rram"

    def const(name, values):
        g.initializer.append(onnx.numpy_helper.from_array(
            np.asarray(values, np.float32).reshape(shape), f"{out}.rram_{name}"))
        return f"{out}.rram_{name}"

    return [h.make_node("Add", [var, const("floor", t.variance_floor)], [f"{p}_var_floor"]),
            h.make_node("Sqrt", [f"{p}_var_floor"], [f"{p}_std"]),
            h.make_node("Div", [f"{p}_centred", f"{p}_std"], [f"{p}_normalised"]),
            h.make_node("Mul", [f"{p}_normalised", const("gain", np.abs(t.gamma))], [f"{p}_scaled"]),
            h.make_node("Add", [f"{p}_scaled", const("beta", t.beta)], [out])]


def _centred_moments(g: onnx.GraphProto, opset: int, raw: str, mean: str, var: str, axes: list[int],
                     p: str, tag: str = "") -> list[onnx.NodeProto]:
    """``mean`` and (population) ``var`` of ``raw`` over ``axes``, through ``<p>_<tag>centred``."""
    h = onnx.helper
    return [_reduce_mean(g, opset, raw, mean, axes),
            h.make_node("Sub", [raw, mean], [f"{p}_{tag}centred"]),
            h.make_node("Mul", [f"{p}_{tag}centred", f"{p}_{tag}centred"], [f"{p}_{tag}squared"]),
            _reduce_mean(g, opset, f"{p}_{tag}squared", var, axes)]


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
        if (node.output[0] if node.output else "") not in targets or node.op_type not in ("Conv", "Gemm"):
            nodes.append(node)
            continue
        out, raw, rank = _take_layer(g, node, inits, weight_ranks)
        nodes.append(node)
        axes = [0] + list(range(2, rank)) if node.op_type == "Conv" else [0]
        mean, var = f"{out}.rram_mean", f"{out}.rram_var"
        nodes += _centred_moments(g, opset, raw, mean, var, axes, f"{out}.rram")
        nodes += _to_target(g, targets[out], out, _channel_shape(node.op_type, rank), var)
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
        out, raw, rank = _take_layer(g, node, inits, weight_ranks)
        nodes.append(node)
        shape = _channel_shape(node.op_type, rank)
        p = f"{out}.rram"
        imean, ivar, fmean, fvar = (f"{p}_{k}" for k in ("imean", "ivar", "fmean", "fvar"))
        if node.op_type == "Conv" and rank > 2:
            nodes += _centred_moments(g, opset, raw, imean, ivar, list(range(2, rank)), p, tag="i")
            g.output.append(h.make_tensor_value_info(ivar, onnx.TensorProto.FLOAT, None))
        else:
            nodes.append(h.make_node("Identity", [raw], [imean]))
        g.output.append(h.make_tensor_value_info(imean, onnx.TensorProto.FLOAT, None))
        for name in (fmean, fvar):
            g.input.append(h.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                    [len(targets[out].gamma)] + [1] * (len(shape) - 1)))
        nodes.append(h.make_node("Sub", [raw, fmean], [f"{p}_centred"]))
        nodes += _to_target(g, targets[out], out, shape, fvar)
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

"""Cleanup passes: ``fold-constants`` (onnx-graphsurgeon's, evaluated with onnxruntime),
``eliminate-identity`` and ``eliminate-dead``."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph import PassContext, describe
from .model_io import one_line
from .registry import PassResult, register


def _castlike_to_cast(graph: gs.Graph, ctx: PassContext) -> None:
    """CastLike(a, t) reads only t's element type; as Cast(a, to=type) it no longer depends on t and
    can fold when a is constant. (The dynamo exporter without its optimizer emits CastLike(c, x),
    e.g. for zero conv biases, which would otherwise keep those biases computed.)"""
    for node in graph.nodes:
        if node.op != "CastLike" or len(node.inputs) != 2:
            continue
        target = node.inputs[1]
        dtype = target.dtype
        if dtype is None:
            continue
        try:
            to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        except (TypeError, KeyError):
            to = dtype if isinstance(dtype, int) else None
        if not to:
            continue
        node.op = "Cast"
        node.attrs = {"to": int(to), **({"saturate": node.attrs["saturate"]}
                                        if "saturate" in node.attrs else {})}
        del node.inputs[1]
        ctx.count("castlike_to_cast")


@register("fold-constants", "evaluate subgraphs whose inputs are all constants (onnxruntime)")
def fold_constants(graph: gs.Graph, ctx: PassContext) -> PassResult:
    before = len(graph.nodes)
    _castlike_to_cast(graph, ctx)
    # One onnxruntime session for the whole foldable subgraph; only if that fails (an op
    # onnxruntime cannot run), partition so the rest still folds, and say so.
    import onnxruntime as ort
    # gs's sessions log graph-optimizer chatter at warning level; silence it while folding
    # (2 = onnxruntime's default severity, restored afterwards).
    ort.set_default_logger_severity(3)
    try:
        graph.fold_constants(fold_shapes=True, partitioning=None, error_ok=False)
    except Exception as e:
        ctx.warn(f"onnxruntime could not fold all constants at once ({one_line(e)}); "
                 f"folding what it can part by part")
        graph.fold_constants(fold_shapes=True, partitioning="recursive", error_ok=True)
    finally:
        ort.set_default_logger_severity(2)
    graph.cleanup()
    ctx.count("removed_nodes", before - len(graph.nodes))
    return PassResult(graph, bool(ctx.counts.get("removed_nodes") or ctx.counts.get("castlike_to_cast")))


@register("eliminate-identity", "remove Identity nodes (graph input/output names kept)")
def eliminate_identity(graph: gs.Graph, ctx: PassContext) -> PassResult:
    out_ids = {id(t) for t in graph.outputs}
    in_ids = {id(t) for t in graph.inputs}
    for node in list(graph.nodes):
        if node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if id(dst) in out_ids and (isinstance(src, gs.Constant) or id(src) in in_ids
                                   or id(src) in out_ids or len(src.outputs) != 1):
            # The output name is the model's interface: the source tensor can take it over only
            # when it is an internal, computed tensor used by nothing else.
            ctx.warn(f"{describe(node)} kept: it renames {src.name!r} to graph output {dst.name!r}")
            continue
        for consumer in list(dst.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is dst:
                    consumer.inputs[i] = src
        node.inputs.clear()
        node.outputs.clear()
        if id(dst) in out_ids:
            src.name = dst.name
            src.dtype, src.shape = dst.dtype or src.dtype, dst.shape or src.shape
            graph.outputs[graph.outputs.index(dst)] = src
            out_ids = {id(t) for t in graph.outputs}
        ctx.count("removed")
    return PassResult(graph, ctx.counts.get("removed", 0) > 0)


@register("eliminate-dead", "remove nodes and constants that do not contribute to the outputs")
def eliminate_dead(graph: gs.Graph, ctx: PassContext) -> PassResult:
    before, tensors = len(graph.nodes), len(graph.tensors())
    graph.cleanup(remove_unused_node_outputs=False, remove_unused_graph_inputs=False)
    ctx.count("removed", before - len(graph.nodes))
    return PassResult(graph, len(graph.nodes) != before or len(graph.tensors()) != tensors)

"""Cleanup passes: ``fold-constants`` (onnx-graphsurgeon's, evaluated with onnxruntime),
``eliminate-identity`` and ``eliminate-dead``."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .graph import PassContext, describe
from .registry import register


@register("fold-constants", "evaluate subgraphs whose inputs are all constants (onnxruntime)")
def fold_constants(graph: gs.Graph, ctx: PassContext) -> None:
    before = len(graph.nodes)
    # error_ok=False: a folding failure must be reported, not silently leave a half-folded graph.
    try:
        graph.fold_constants(fold_shapes=True, partitioning="basic", error_ok=False)
    except Exception as e:
        msg = str(e).strip().splitlines()
        ctx.warn(f"onnxruntime could not fold constants ({msg[0] if msg else type(e).__name__}); "
                 f"graph left unfolded")
        return
    graph.cleanup()
    ctx.count("removed_nodes", before - len(graph.nodes))


@register("eliminate-identity", "remove Identity nodes (graph input/output names kept)")
def eliminate_identity(graph: gs.Graph, ctx: PassContext) -> None:
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


@register("eliminate-dead", "remove nodes and constants that do not contribute to the outputs")
def eliminate_dead(graph: gs.Graph, ctx: PassContext) -> None:
    before = len(graph.nodes)
    graph.cleanup(remove_unused_node_outputs=False, remove_unused_graph_inputs=False)
    ctx.count("removed", before - len(graph.nodes))

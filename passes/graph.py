"""Helpers shared by the passes: the pass context, deterministic names, constant replacement and
fast shape inference (on a weightless skeleton, so a 100 MB model infers in milliseconds)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from .model_io import one_line

log = logging.getLogger("passes")
log.addHandler(logging.NullHandler())  # callers (the CLI) print ctx.warnings themselves

# Constants with more elements than this become typed graph inputs in the shape-inference skeleton;
# small ones (shape tensors, axes) keep their values because data-dependent inference needs them.
_SKELETON_MAX_ELEMENTS = 64


@dataclass
class PassContext:
    """What a pass may read (options) and write (warnings, counters, metadata)."""
    options: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    summaries: list = field(default_factory=list)  # from the ``summary`` pass
    counts: dict = field(default_factory=dict)  # the running pass's counters of this run only
    current: str = ""  # name of the running pass
    # The model's metadata (``rram.*`` keys), the very dict the pipeline writes into the output:
    # a pass that changes what the model expects (embed-normalization) or records what a later
    # stage needs (fold-bn: the BN targets) updates it here.
    metadata: dict = field(default_factory=dict)
    # {graph input name: f(original feed) -> the rewritten model's feed}, for a pass that changes
    # what an input means (embed-normalization: normalised images -> images in [0, 1]). The
    # verifier applies them (composed in order) to the feeds of the rewritten model only.
    input_transforms: dict = field(default_factory=dict)

    def transform_input(self, name: str, fn) -> None:
        """Declare that input ``name`` of the rewritten model takes ``fn(x)`` where the original
        took ``x`` (composed after any transform an earlier pass declared)."""
        before = self.input_transforms.get(name)
        self.input_transforms[name] = fn if before is None else (lambda x, f=before: fn(f(x)))

    def map_feeds(self, feeds: dict) -> dict:
        """The original model's feeds as the rewritten model takes them."""
        return {k: (self.input_transforms[k](v) if k in self.input_transforms else v)
                for k, v in feeds.items()}

    def warn(self, msg: str) -> None:
        text = f"{self.current}: {msg}" if self.current else msg
        self.warnings.append(text)
        log.warning(text)

    def count(self, key: str, n: int = 1) -> None:
        k = f"{self.current}.{key}" if self.current else key
        self.stats[k] = self.stats.get(k, 0) + n
        self.counts[key] = self.counts.get(key, 0) + n


def describe(node: gs.Node) -> str:
    return f"{node.op} {node.name!r}" if node.name else f"unnamed {node.op}"


class Namer:
    """Unique tensor names derived from a base name; deterministic (no counters shared across runs)."""

    def __init__(self, graph: gs.Graph):
        self.taken = set(graph.tensors().keys())

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def resolve_constant(t) -> gs.Constant | None:
    """The Constant behind ``t``, looking through Identity nodes (the TorchScript exporter shares
    equal initializers through Identity), or None when ``t`` is computed."""
    for _ in range(1000):
        if isinstance(t, gs.Constant):
            return t
        if t is None or len(t.inputs) != 1 or t.inputs[0].op != "Identity" or not t.inputs[0].inputs:
            return None
        t = t.inputs[0].inputs[0]
    return None


def set_input_constant(node: gs.Node, index: int, values: np.ndarray, namer: Namer, suffix: str) -> None:
    """Give ``node.inputs[index]`` new constant values without touching other users of the old tensor."""
    old = node.inputs[index]
    if isinstance(old, gs.Constant) and len(old.outputs) == 1:
        old.values = values
    else:
        src = resolve_constant(old)
        base = src.name if src is not None and src.name else (old.name or node.name or node.op)
        node.inputs[index] = gs.Constant(namer(f"{base}_{suffix}"), values)


def skeleton(graph: gs.Graph) -> onnx.ModelProto:
    """The graph as an ONNX model whose large constants are typed graph inputs instead of data:
    cheap to shape-infer and to check, whatever the model's size."""
    big = []
    inits = []
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and not isinstance(t._values, gs.ir.tensor.SparseValues):
            if int(np.prod(t.shape, dtype=np.int64)) > _SKELETON_MAX_ELEMENTS:
                big.append(OnnxExporter.export_value_info_proto(
                    gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape)), do_type_check=False))
            else:
                inits.append(OnnxExporter.export_tensor_proto(t))
    g = onnx.helper.make_graph(
        [OnnxExporter.export_node(n) for n in graph.nodes], graph.name or "g",
        [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs] + big,
        [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs],
        initializer=inits)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in sorted(
        {**{"": graph.opset}, **{o.domain: o.version for o in (graph.import_domains or [])}}.items())]
    skel = onnx.helper.make_model(g, opset_imports=opsets,
                                  functions=[OnnxExporter.export_function(f) for f in graph.functions])
    if graph.ir_version:
        skel.ir_version = max(graph.ir_version, 4)
    return skel


def infer_shapes(graph: gs.Graph, ctx: PassContext | None = None) -> None:
    """ONNX shape inference; writes dtype/shape back into the graph's Variables."""
    skel = skeleton(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(skel, strict_mode=False, data_prop=True)
    except Exception as e:  # inference is advisory; passes that need a rank check it themselves
        if ctx is not None:
            ctx.warn(f"shape inference failed: {one_line(e)}")
        return
    tensors = graph.tensors()
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = tensors.get(vi.name)
        if not isinstance(t, gs.Variable) or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if tt.elem_type:
            t.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if tt.HasField("shape"):
            t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                       for d in tt.shape.dim]

"""The pass pipeline: resolve names, select BN statistics, run passes on an onnx-graphsurgeon graph
(each pass's ``requires`` checked before it; cleanup, toposort, shape inference and its ``ensures``
after it), verify numerically, export deterministically."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from runtime import metadata as md

from . import bn_rates, catalog, model_io
from .errors import PassError
from .graph import PassContext, infer_shapes
from .pad_1x1 import padding_cost
from .registry import PassResult
from .summary import summarize_graph
from .verify import DEFAULT_TOLERANCE, Verifier, random_feeds

VERIFY_MODES = ("each", "end", "off")


@dataclass
class Result:
    model: onnx.ModelProto
    passes: list
    before: dict
    after: dict
    warnings: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    summaries: list = field(default_factory=list)
    pass_seconds: dict = field(default_factory=dict)
    verify_seconds: float = 0.0
    export_seconds: float = 0.0
    verification: dict | None = None
    bn_rate: str | None = None
    written: list = field(default_factory=list)
    modified: dict = field(default_factory=dict)  # {pass name: whether it changed the graph}
    padding: dict = field(default_factory=dict)  # padding_cost, with "applied" and "why"

    @property
    def seconds(self) -> float:
        return sum(self.pass_seconds.values())


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _export(graph: gs.Graph, template: onnx.ModelProto, meta: dict,
            extra: list[onnx.TensorProto]) -> onnx.ModelProto:
    """The graph as a ModelProto with the input's header and ``meta`` as metadata.

    Like ``gs.export_onnx``, but each weight is copied once into the proto (gs copies it through
    make_tensor, make_graph and make_model: seconds on a model of several hundred MB)."""
    m = onnx.ModelProto()
    # The input's opsets, with the default domain's version as the graph now has it (upgrade-opset).
    m.opset_import.extend(template.opset_import)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = graph.opset
    m.ir_version = output_ir_version(template.ir_version, m.opset_import)
    m.producer_name, m.producer_version = template.producer_name, template.producer_version
    m.domain, m.model_version, m.doc_string = template.domain, template.model_version, template.doc_string
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    g = m.graph
    g.name = graph.name or template.graph.name
    if graph.doc_string:
        g.doc_string = graph.doc_string
    g.node.extend(OnnxExporter.export_node(n) for n in graph.nodes)
    g.input.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs)
    g.output.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs)
    tensors = graph.tensors()
    for t in tensors.values():
        if not isinstance(t, gs.Constant):
            continue
        if isinstance(t._values, SparseValues):
            g.sparse_initializer.add().CopyFrom(t._values.tensor)
        elif isinstance(t._values, LazyValues) or t.export_dtype != t.dtype:
            p = g.initializer.add()
            p.CopyFrom(OnnxExporter.export_tensor_proto(t))
            p.name = t.name
        else:
            arr = np.asarray(t.values)
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            p = g.initializer.add()
            p.name = t.name
            p.data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
            p.dims.extend(arr.shape)
            p.raw_data = arr.tobytes()
    io = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    g.value_info.extend(OnnxExporter.export_value_info_proto(t, do_type_check=False)
                        for t in tensors.values()
                        if isinstance(t, gs.Variable) and t.name not in io
                        and (t.dtype is not None or t.shape is not None))
    g.initializer.extend(extra)
    m.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    return m


def output_ir_version(ir_version: int, opset_import) -> int:
    """The IR version of a rewritten model: the input's, raised where the output needs more.
    IR 3 demands that every initializer also be a graph input; the passes (onnx-graphsurgeon)
    keep weights as initializers only, which IR 4 allows, so an IR 3 input leaves as IR 4 or
    higher (whatever its opsets need); the model computes the same either way."""
    return max(int(ir_version), 4, onnx.helper.find_min_ir_version_for(list(opset_import), True))


def _graph_of(model: onnx.ModelProto) -> gs.Graph:
    try:
        graph = gs.import_onnx(model)
        graph.toposort()
    except Exception as e:
        raise PassError(f"onnx-graphsurgeon cannot import the model: {model_io.one_line(e)}") from None
    return graph


def _unmet(conditions, graph, ctx) -> tuple | None:
    for cond in conditions:
        why = cond.violation(graph, ctx)
        if why is not None:
            return cond, why
    return None


def _apply(graph, passes, ctx, on_each=None, timings=None, modified=None) -> gs.Graph:
    """Run ``passes`` in order; returns the graph (a pass may return a new one)."""
    for p in passes:
        ctx.current = p.name
        if (bad := _unmet(p.requires, graph, ctx)) is not None:
            raise PassError(f"pass {p.name!r} requires {bad[0].name}: {bad[1]}")
        ctx.counts = {}
        t0 = time.perf_counter()
        try:
            out = p.fn(graph, ctx)
        except PassError:
            raise
        except Exception as e:  # a bug in a pass must not be reported as a valid model
            raise PassError(f"pass {p.name!r} failed: {type(e).__name__}: {e}") from e
        if out is None:  # an older pass: rewrote the graph in place, maybe changed it
            out = PassResult(graph, True)
        elif not isinstance(out, PassResult) or not isinstance(out.graph, gs.Graph):
            raise PassError(f"pass {p.name!r} returned {type(out).__name__}, not a PassResult with a graph")
        graph = out.graph
        graph.cleanup().toposort()
        infer_shapes(graph, ctx)
        if timings is not None:
            timings[p.name] = timings.get(p.name, 0.0) + time.perf_counter() - t0
        if (bad := _unmet(p.ensures, graph, ctx)) is not None:
            raise PassError(f"pass {p.name!r} broke its guarantee {bad[0].name}: {bad[1]} (a bug in the pass)")
        if modified is not None:
            modified[p.name] = modified.get(p.name, False) or bool(out.modified)
        if on_each is not None:
            on_each(p.name, graph)
    ctx.current = ""
    return graph


PARAMETER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")


def _check_finite_parameters(model: onnx.ModelProto) -> None:
    """NaN/Inf in a weight or BN parameter makes every output NaN, and NaN == NaN would pass the
    verification: refuse such a model up front (other constants, e.g. -inf masks, may be real)."""
    from onnx import numpy_helper

    params = {i for n in model.graph.node if n.op_type in PARAMETER_OPS for i in n.input[1:]}
    for t in model.graph.initializer:
        floating = t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                   onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
        if t.name in params and floating \
                and not np.all(np.isfinite(numpy_helper.to_array(t).astype(np.float32, copy=False))):
            raise PassError(f"initializer {t.name!r} holds NaN or Inf values")


def run(model, names, *, verify: str = "end", tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
        batch: int = 2, input_shapes: dict | None = None, inputs: list[dict] | None = None,
        bn_rate: str | None = None, normalization: md.Normalization | None = None,
        pad_1x1: bool | None = None) -> Result:
    """Run the named passes on ``model`` (a path or an ``onnx.ModelProto``, never modified) and
    return a :class:`Result` whose ``.model`` is the rewritten model.

    ``verify``: compare with onnxruntime after each pass, once at the end, or not at all;
    ``inputs``: extra feed dicts (e.g. real images) verified besides the seeded random ones, or a
    function ``f(reference_model) -> list of feed dicts``;
    ``bn_rate``: which per-rate BN statistics to use (models from ``rram export``);
    ``normalization``: the input normalisation to record (``rram.normalization``) in a model that
    records none (an ONNX model exported elsewhere; the embed-normalization pass can then embed it);
    ``pad_1x1``: whether ``standard`` pads 1x1 convolutions to 3x3 (None: only where the model
    records that it was trained padded: ``rram.model``'s "padded"; an explicit pad-1x1-to-3x3
    in the list always runs). ``Result.padding`` reports what padding costs, applied or not."""
    if verify not in VERIFY_MODES:
        raise PassError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    if not (tolerance >= 0):
        raise PassError(f"tolerance must be a non-negative number, got {tolerance}")
    if isinstance(model, (str, os.PathLike)):
        model = model_io.load(model)
    else:
        model_io.check(model, "the input model")

    work = _copy(model)
    meta = {p.key: p.value for p in work.metadata_props}
    if normalization is not None:
        record_normalization(meta, normalization)
    passes = catalog.resolve(names)
    available = bn_rates.rates(meta)
    extra = bn_rates.split_rate_initializers(work)
    ctx = PassContext(options={"bn_rate": bn_rate}, metadata=meta)
    chosen = None
    if bn_rate is not None:
        chosen = bn_rates.match(str(bn_rate), available)
    elif available and (needs := [p for p in passes if bn_rates.SELECTED in p.requires]):
        # A pass requires one rate's statistics (fold-bn): the default one, said in a warning.
        chosen = meta.get(md.BN_RATE_DEFAULT_KEY)
        if chosen is None:
            raise PassError(f"the model holds BN statistics for rates {', '.join(available)} but no "
                            f"{md.BN_RATE_DEFAULT_KEY}; choose one with --bn-rate")
        ctx.warn(f"{needs[0].name} folds the default BN statistics (rate {chosen}); "
                 f"choose another rate with --bn-rate")
    if chosen is not None:
        n = bn_rates.apply_rate(work, chosen, extra, meta.get(md.BN_RATE_DEFAULT_KEY))
        ctx.stats["bn_rate.bn_nodes"] = n
        extra = []  # the model is now specialised to one rate
        for k in (md.BN_STATS_RATES_KEY, md.BN_RATE_DEFAULT_KEY):
            meta.pop(k, None)
        meta[md.BN_RATE_KEY] = chosen
    _check_finite_parameters(work)
    # The reference for verification: the input with the chosen rate's statistics, not rewritten.
    reference = work

    verifier = None
    verify_seconds = 0.0
    if verify != "off":
        t0 = time.perf_counter()
        feed_sets = [random_feeds(reference, seed=seed, batch=batch, input_shapes=input_shapes)]
        if callable(inputs):
            inputs = inputs(reference)
        feed_sets += list(inputs or [])
        verifier = Verifier(reference, feed_sets, tolerance)
        verify_seconds += time.perf_counter() - t0

    graph = _graph_of(work)
    infer_shapes(graph, ctx)
    before = summarize_graph(graph)
    # `standard` pads 1x1 kernels where it helps (catalog.pads_1x1); the cost is reported either way
    padding = padding_cost(graph)
    wanted = catalog.pads_1x1(meta, pad_1x1)
    passes = catalog.resolve(names, pad=wanted or not padding["convs_1x1"])
    # What the list asks of its input and no pass of it ensures: its provider goes first
    # (`standard` on an older opset: upgrade-opset).
    passes = catalog.establish(names, passes, graph, ctx)
    names_run = [p.name for p in passes]
    meta[md.PASSES_KEY] = ",".join(filter(None, [meta.get(md.PASSES_KEY, ""), *names_run]))
    meta_before = dict(meta)  # a replay of the passes starts from the metadata they saw
    timings: dict[str, float] = {}
    modified: dict[str, bool] = {}
    checks: list[dict] = []

    def check_now(label, g, c=ctx):
        nonlocal verify_seconds
        t0 = time.perf_counter()
        res = verifier.check(_export(g, work, c.metadata, extra), label, c.map_feeds)
        verify_seconds += time.perf_counter() - t0
        checks.append(res)
        if res["max_rel_diff"] > tolerance:
            where = (f"random inputs (seed {seed})" if res["input_set"] == 0
                     else f"given input set {res['input_set']}")
            raise PassError(
                f"verification failed after {label}: output {res['output']!r} differs from the "
                f"original by {res['max_rel_diff']:.3g} (max |diff| / max |output|), tolerance "
                f"{tolerance:g}, on {where}")
        return res

    each = (lambda name, g: check_now(f"pass {name!r}", g)) if verify == "each" else None
    graph = _apply(graph, passes, ctx, on_each=each, timings=timings, modified=modified)
    # Export, then the full onnx.checker on what will be written (IR rules included): a model
    # that fails it is an error, never written.
    t0 = time.perf_counter()
    out = _export(graph, work, meta, extra)
    model_io.check(out, f"the model after passes {','.join(names_run)}", full=True)
    export_seconds = time.perf_counter() - t0
    verification = checks[-1] if checks else None
    if verify == "end":
        t0 = time.perf_counter()
        res = verifier.check(out, "passes", ctx.map_feeds)
        verify_seconds += time.perf_counter() - t0
        if res["max_rel_diff"] > tolerance:
            # Name the culprit: replay the passes, verifying after each one.
            g2 = _graph_of(work)
            infer_shapes(g2)
            c2 = PassContext(options=dict(ctx.options), metadata=dict(meta_before))
            _apply(g2, passes, c2, on_each=lambda name, g: check_now(f"pass {name!r}", g, c2))
            raise PassError(f"verification failed after passes {','.join(names_run)}: output "
                            f"{res['output']!r} differs by {res['max_rel_diff']:.3g}, tolerance "
                            f"{tolerance:g} (no single pass exceeds it)")
        verification = res
    padding["applied"] = bool(padding["convs_1x1"]) and catalog.PAD in names_run
    padding["why"] = ("requested" if pad_1x1 else "not requested") if pad_1x1 is not None else \
        ("trained padded (rram.model)" if wanted else "not trained padded (rram.model)")
    return Result(model=out, passes=names_run, before=before, after=summarize_graph(graph), padding=padding,
                  warnings=ctx.warnings, stats=ctx.stats, summaries=ctx.summaries,
                  pass_seconds=timings, verify_seconds=verify_seconds, export_seconds=export_seconds,
                  verification=verification, bn_rate=chosen, modified=modified)


def record_normalization(meta: dict, norm: md.Normalization) -> None:
    """``norm`` as the model's ``rram.normalization``: refused where the model records another or
    embeds one in its graph (the same as recorded changes nothing)."""
    if md.NORMALIZATION_EMBEDDED_KEY in meta:
        raise PassError(f"the model embeds its input normalisation in the graph ({md.NORMALIZATION_EMBEDDED_KEY}): "
                        f"it takes images in [0, 1]; drop --mean/--std")
    recorded = md.Normalization.from_metadata(meta, "the model")
    if recorded is not None and recorded != norm:
        raise PassError(f"the model records its own input normalisation {recorded.to_dict()} "
                        f"({md.NORMALIZATION_KEY}); --mean/--std give {norm.to_dict()}")
    meta[md.NORMALIZATION_KEY] = norm.to_metadata()


def run_file(src, dst, names, **kwargs) -> Result:
    """``run`` on a file, writing the result atomically to ``dst`` (never to ``src``)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise PassError(f"output {dst} is the input file; the input is never overwritten")
    data = dst.with_name(dst.name + ".data")
    if data.exists() and src.is_file():
        # A large output writes OUT.onnx.data: it must not be the input or its external data.
        own = [src] + model_io.external_files(src)
        if any(p.exists() and os.path.samefile(data, p) for p in own):
            raise PassError(f"output data file {data} belongs to the input {src}; choose another output name")
    res = run(src, names, **kwargs)
    res.written = model_io.save(res.model, dst)
    return res

"""Per-rate BatchNormalization statistics inside one ONNX file (the convention ``rram export``
writes; see docs/passes.md):

* metadata ``rram.bn_stats_rates``: JSON list of rate strings, e.g. ``["0.0", "0.1"]``;
* metadata ``rram.bn_rate_default``: the rate whose statistics the BN nodes use;
* for each rate r and each BN node with mean/var initializers M and V, the unused initializers
  ``M@rate=r`` and ``V@rate=r``.

Selecting a rate writes that rate's statistics into M and V, drops every ``@rate=`` initializer,
and records ``rram.bn_rate`` in the metadata."""
from __future__ import annotations

import json

import onnx

from runtime import metadata as md

from .errors import PassError
from .registry import Condition


def rates(meta: dict) -> list[str]:
    if md.BN_STATS_RATES_KEY not in meta:
        return []
    try:
        value = json.loads(meta[md.BN_STATS_RATES_KEY])
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise PassError(f"metadata {md.BN_STATS_RATES_KEY} must be a JSON list of rate strings, "
                        f"got {meta[md.BN_STATS_RATES_KEY]!r}")
    return value


def _unselected(graph, ctx) -> str | None:
    left = rates(ctx.metadata)
    return (f"the model holds BN statistics for rates {', '.join(left)}; choose one with --bn-rate"
            if left else None)


# fold-bn requires it; the pipeline establishes it before the passes (--bn-rate, else the default).
SELECTED = Condition("the BN statistics of one rate selected", _unselected)


def match(requested: str, available: list[str]) -> str:
    """The stored rate string equal to ``requested`` (as text or as a number)."""
    if requested in available:
        return requested
    try:
        want = float(requested)
    except ValueError:
        raise PassError(f"BN rate {requested!r} is not a number") from None
    for r in available:
        try:
            if float(r) == want:
                return r
        except ValueError:
            continue
    if not available:
        raise PassError(f"--bn-rate {requested}: the model holds no per-rate BN statistics "
                        f"(no {md.BN_STATS_RATES_KEY} metadata)")
    raise PassError(f"--bn-rate {requested}: the model has BN statistics for rates "
                    f"{', '.join(available)} only")


def split_rate_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Remove and return the ``@rate=`` initializers (kept aside so graph cleanup cannot drop them)."""
    keep, extra = [], []
    for t in model.graph.initializer:
        (extra if md.RATE_MARKER in t.name else keep).append(t)
    if extra:
        kept = [onnx.TensorProto() for _ in keep]
        for k, t in zip(kept, keep):
            k.CopyFrom(t)
        moved = [onnx.TensorProto() for _ in extra]
        for m, t in zip(moved, extra):
            m.CopyFrom(t)
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        return moved
    return []


def apply_rate(model: onnx.ModelProto, rate: str, extra: list[onnx.TensorProto], default: str | None) -> int:
    """Make every BN node of ``model`` read ``rate``'s mean/var (in place). Returns the number of BN
    nodes updated.

    An initializer used by that BN alone gets the new values under its own name. Otherwise (the
    TorchScript exporter shares equal initializers and feeds BN through Identity nodes; any input
    may be shared) the BN input is pointed at a new initializer ``<name>_rate<r>``, so no other
    consumer changes."""
    by_name = {t.name: t for t in extra}
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    graph_inputs = {i.name for i in model.graph.input}
    taken = set(inits) | {o for n in model.graph.node for o in n.output} | graph_inputs
    updated = 0
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 5:
            continue
        for slot in (3, 4):
            stat = node.input[slot]
            src = by_name.get(md.rate_initializer_name(stat, rate))
            if src is None:
                if rate == default:
                    continue  # the baked statistics are the default rate's
                raise PassError(f"BatchNormalization {node.name!r} has no statistics for rate "
                                f"{rate} (initializer {stat}{md.RATE_MARKER}{rate} missing)")
            dst = inits.get(stat)
            if dst is not None and uses.get(stat, 0) == 1 and stat not in graph_inputs:
                if list(src.dims) != list(dst.dims) or src.data_type != dst.data_type:
                    raise PassError(f"initializer {src.name!r} has shape {list(src.dims)}, "
                                    f"{stat!r} has {list(dst.dims)}")
                dst.CopyFrom(src)
                dst.name = stat
            else:
                name, i = f"{stat}_rate{rate}", 1
                while name in taken:
                    name, i = f"{stat}_rate{rate}_{i}", i + 1
                taken.add(name)
                t = model.graph.initializer.add()
                t.CopyFrom(src)
                t.name = name
                node.input[slot] = name
        updated += 1
    return updated

"""``summary``: per-op node counts and weight counts. The pipeline records one before and one after
every run; the ``summary`` pass records one more at its place in the pass list."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from .graph import PassContext
from .registry import PassResult, register


def summarize_graph(graph: gs.Graph) -> dict:
    ops = Counter(n.op for n in graph.nodes)
    consts = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    return {"nodes": len(graph.nodes), "ops": dict(sorted(ops.items())),
            "weights": int(sum(int(np.prod(t.shape, dtype=np.int64)) for t in consts)),
            "initializers": len(consts)}


def format_summary(before: dict, after: dict) -> str:
    ops = sorted(set(before["ops"]) | set(after["ops"]))
    w = max([len(o) for o in ops] + [12])
    lines = [f"{'op':<{w}} {'before':>8} {'after':>8}"]
    for o in ops:
        b, a = before["ops"].get(o, 0), after["ops"].get(o, 0)
        lines.append(f"{o:<{w}} {b:>8} {a:>8}")
    lines.append(f"{'nodes':<{w}} {before['nodes']:>8} {after['nodes']:>8}")
    lines.append(f"{'weights':<{w}} {before['weights']:>8} {after['weights']:>8}")
    return "\n".join(lines)


@register("summary", "record per-op counts and weight counts at this point (changes nothing)")
def summary(graph: gs.Graph, ctx: PassContext) -> PassResult:
    ctx.summaries.append(summarize_graph(graph))
    return PassResult(graph, False)

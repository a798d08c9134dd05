"""``pad-1x1-to-3x3``: every 2-D Conv with a 1x1 kernel becomes a 3x3 Conv with zero border weights
and one more pixel of padding on each side, so every kernel maps onto the crossbar the same way.

Exact: the 3x3 window centred where the 1x1 kernel sat sees the same pixel times the same weight,
and the extra padding keeps the output size ``floor((H + 2p - 1) / s) + 1`` for every stride."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph import Namer, PassContext, describe, resolve_constant, set_input_constant
from .registry import Condition, PassResult, register


def _skip_reason(node: gs.Node) -> str | None:
    """Why this 1x1 Conv cannot be padded (None: it can)."""
    w = resolve_constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return "its weight is not a constant"
    dil = node.attrs.get("dilations", [1, 1])
    if list(dil) != [1, 1]:
        return f"dilations {list(dil)} (only dilation 1 is handled)"
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return f"auto_pad {auto_pad!r}"
    pads = node.attrs.get("pads", [0, 0, 0, 0])
    if auto_pad != "NOTSET" and any(pads):
        return "auto_pad together with explicit pads"
    if len(pads) != 4:
        return f"pads {list(pads)}"
    return None


def is_1x1_conv(node: gs.Node) -> bool:
    if node.op != "Conv" or len(node.inputs) < 2:
        return False
    ks = node.attrs.get("kernel_shape")
    w = node.inputs[1]
    shape = list(ks) if ks is not None else (list(w.shape[2:]) if w.shape is not None else None)
    if shape is None and resolve_constant(w) is not None:
        shape = list(resolve_constant(w).shape[2:])
    return shape == [1, 1]


PAPER_CELLS_PER_WEIGHT = 2  # the paper preset: a differential pair of one-slice cells per weight


def padding_cost(graph: gs.Graph) -> dict:
    """What padding the 1x1 convolutions to 3x3 costs on the crossbar: the 1x1 convolutions,
    and the weights of every mappable layer (Conv, Gemm, MatMul with a constant weight) before and
    after padding, with the cells they take on the paper preset (2 per weight; other presets
    scale with their cells per weight)."""
    mapped = ones = convs = 0
    seen = set()
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        w = resolve_constant(node.inputs[1])
        if w is None or w.name in seen:
            continue
        seen.add(w.name)
        size = int(np.prod(w.shape, dtype=np.int64))
        mapped += size
        if is_1x1_conv(node):
            ones += size
            convs += 1
    padded = mapped + 8 * ones
    return {"convs_1x1": convs, "weights": mapped, "weights_padded": padded,
            "cells": PAPER_CELLS_PER_WEIGHT * mapped, "cells_padded": PAPER_CELLS_PER_WEIGHT * padded}


def _unreported_1x1(graph: gs.Graph, ctx: PassContext) -> str | None:
    left = sum(1 for n in graph.nodes if is_1x1_conv(n))
    skipped = ctx.counts.get("skipped", 0)
    return f"{left} 1x1 Conv left, {skipped} reported skipped" if left > skipped else None


NO_1X1_CONV = Condition("no 1x1 Conv left but the ones reported skipped", _unreported_1x1)


@register("pad-1x1-to-3x3", "1x1 Conv -> 3x3 Conv with zero border weights and pads +1 (exact)",
          ensures=(NO_1X1_CONV,))
def pad_1x1_to_3x3(graph: gs.Graph, ctx: PassContext) -> PassResult:
    namer = Namer(graph)
    padded: dict[str, gs.Constant] = {}  # shared 1x1 weights get one padded copy
    for node in graph.nodes:
        if not is_1x1_conv(node):
            continue
        reason = _skip_reason(node)
        if reason is not None:
            ctx.warn(f"{describe(node)} left as 1x1: {reason}")
            ctx.count("skipped")
            continue
        w = resolve_constant(node.inputs[1])
        if w.name in padded:
            node.inputs[1] = padded[w.name]
        else:
            v = w.values
            if v.ndim != 4:
                ctx.warn(f"{describe(node)} left as 1x1: weight has {v.ndim} dimensions")
                ctx.count("skipped")
                continue
            new = np.zeros(v.shape[:2] + (3, 3), dtype=v.dtype)
            new[:, :, 1, 1] = v[:, :, 0, 0]
            old_name = w.name
            set_input_constant(node, 1, new, namer, "3x3")
            padded[old_name] = node.inputs[1]
        # Any auto_pad on a 1x1 kernel means zero padding; make it explicit.
        pads = [int(p) + 1 for p in node.attrs.get("pads", [0, 0, 0, 0])]
        node.attrs.pop("auto_pad", None)
        node.attrs["pads"] = pads
        node.attrs["kernel_shape"] = [3, 3]
        node.attrs["dilations"] = [1, 1]
        ctx.count("padded")
    return PassResult(graph, ctx.counts.get("padded", 0) > 0)

"""``fold-bn``: an inference-mode BatchNormalization whose input is the output of a Conv (any
groups, with or without bias), a Gemm, or a MatMul (+ constant Add) used only by it is folded into
that node's weights and bias. Anything else stays, with a warning naming it.

BN(y) = s * (y - mean) + beta with s = gamma / sqrt(var + eps); arithmetic in float64, stored in the
weight's dtype. Per-rate statistics are selected before this pass runs (see pipeline).

Each BN folded into a Conv or Gemm leaves its per-channel *target* in the model's metadata
(``BN_TARGETS_KEY``: gamma, beta, epsilon and the fold scale s, keyed by the output tensor the
layer now writes): per-chip calibration re-estimates the mean and variance of that layer's
output on a faulty chip and sets the digital scale and offset so that the channel meets the
target again (runtime/calibration.py)."""
from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs

from runtime.metadata import BN_TARGETS_KEY

from .bn_rates import SELECTED
from .errors import PassError
from .graph import Namer, PassContext, describe, resolve_constant, set_input_constant
from .registry import Condition, PassResult, register


def bn_target(bn: gs.Node, s: np.ndarray) -> dict:
    """What per-chip calibration needs of a folded BN: y = |gamma| (z - m) / sqrt(v + eps s^2) + beta
    for the folded layer's output z with per-chip mean m and variance v."""
    gamma, beta = (np.asarray(resolve_constant(p).values, np.float64) for p in (bn.inputs[1], bn.inputs[2]))
    return {"gamma": gamma.tolist(), "beta": beta.tolist(), "epsilon": float(bn.attrs.get("epsilon", 1e-5)),
            "fold_scale": np.asarray(s, np.float64).tolist()}


def _bn_params(bn: gs.Node, opset: int, out_names: set):
    """(s, t) with BN(y) = s*y + t per channel, or a reason string when BN is not foldable."""
    if len(bn.inputs) != 5:
        return "it does not have 5 inputs"
    if int(bn.attrs.get("training_mode", 0)) != 0 or int(bn.attrs.get("is_test", 1)) == 0:
        return "it is in training mode"
    if opset < 9 and int(bn.attrs.get("spatial", 1)) != 1:
        return "spatial=0 (per-element statistics)"
    for extra in bn.outputs[1:]:
        if extra.outputs or extra.name in out_names:
            return "its training-mode outputs (running mean/var) are used"
    params = [resolve_constant(p) for p in bn.inputs[1:]]
    if any(p is None for p in params):
        return "its scale/bias/mean/var are not constants"
    gamma, beta, mean, var = (np.asarray(p.values, dtype=np.float64) for p in params)
    c = gamma.shape
    if len(c) != 1 or any(x.shape != c for x in (beta, mean, var)):
        return "its parameters are not 1-D vectors of one length"
    eps = float(bn.attrs.get("epsilon", 1e-5))
    if np.any(var + eps <= 0):
        raise PassError(f"BatchNormalization {bn.name!r} has a negative variance "
                        f"({float(var.min()):g}): corrupt statistics")
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def _fold_conv(conv, s, t, namer):
    w = resolve_constant(conv.inputs[1])
    if w is None:
        return "the Conv weight is not a constant"
    wv = w.values
    if wv.ndim < 3 or wv.shape[0] != s.shape[0]:
        return f"the Conv has {wv.shape[0]} output channels, BN has {s.shape[0]}"
    b = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2].name else None
    if b is not None and resolve_constant(b) is None:
        return "the Conv bias is not a constant"
    bv = np.zeros(s.shape, np.float64) if b is None else np.asarray(resolve_constant(b).values, np.float64)
    if bv.shape != s.shape:
        return f"the Conv bias has shape {bv.shape}"
    new_w = (wv.astype(np.float64) * s.reshape((-1,) + (1,) * (wv.ndim - 1))).astype(wv.dtype)
    new_b = (bv * s + t).astype(wv.dtype)
    set_input_constant(conv, 1, new_w, namer, "bnfold")
    _set_bias(conv, b is None, new_b, f"{w.name}_bias", namer)
    return None


def _set_bias(node, absent: bool, value, name_hint: str, namer) -> None:
    """Input 2 (Conv bias, Gemm C): a fresh constant where there was none, else rewritten."""
    if absent:
        while len(node.inputs) < 2:
            node.inputs.append(gs.Variable.empty())
        if len(node.inputs) == 2:
            node.inputs.append(gs.Constant(namer(name_hint), value))
        else:
            node.inputs[2] = gs.Constant(namer(name_hint), value)
    else:
        set_input_constant(node, 2, value, namer, "bnfold")


def _fold_gemm(gemm, s, t, namer):
    b = resolve_constant(gemm.inputs[1])
    if b is None or b.values.ndim != 2:
        return "the Gemm B input is not a constant matrix"
    bv = b.values
    trans_b = int(gemm.attrs.get("transB", 0))
    n = bv.shape[0] if trans_b else bv.shape[1]
    if n != s.shape[0]:
        return f"the Gemm has {n} output features, BN has {s.shape[0]}"
    c = gemm.inputs[2] if len(gemm.inputs) > 2 and gemm.inputs[2].name else None
    if c is not None:
        c = resolve_constant(c)
        if c is None:
            return "the Gemm C input is not a constant"
    beta = float(gemm.attrs.get("beta", 1.0))
    cv = np.zeros(s.shape, np.float64) if c is None else beta * np.asarray(c.values, np.float64)
    try:
        new_c = cv * s + t  # broadcasts C against the feature axis
    except ValueError:
        return f"the Gemm C input of shape {cv.shape} does not broadcast to {s.shape[0]} features"
    if new_c.ndim > 2:
        return f"the Gemm C input of shape {cv.shape} is not broadcastable to the output"
    scale = s[:, None] if trans_b else s[None, :]
    set_input_constant(gemm, 1, (bv.astype(np.float64) * scale).astype(bv.dtype), namer, "bnfold")
    _set_bias(gemm, c is None, new_c.astype(bv.dtype), f"{b.name}_bias", namer)
    gemm.attrs["beta"] = 1.0
    return None


def _matmul_weight(mm, s):
    if mm.op != "MatMul":
        return None, f"its input comes from {describe(mm)}"
    w = resolve_constant(mm.inputs[1])
    if w is None or w.values.ndim != 2:
        return None, "the MatMul weight is not a constant matrix"
    if w.values.shape[1] != s.shape[0]:
        return None, f"the MatMul has {w.values.shape[1]} output features, BN has {s.shape[0]}"
    return w, None


def _fold_matmul(bn, x, mm, s, t, namer):
    """MatMul -> BN becomes MatMul (scaled weight) -> Add; BN acts on the output features only
    when its input is 2-D (features on axis 1 = the MatMul's last axis)."""
    if x.shape is None or len(x.shape) != 2:
        return "its input is not known to be 2-D, so BN's channel axis is not the feature axis"
    w, why = _matmul_weight(mm, s)
    if why:
        return why
    wv = w.values
    set_input_constant(mm, 1, (wv.astype(np.float64) * s[None, :]).astype(wv.dtype), namer, "bnfold")
    # Reuse the BN node as the Add so the output tensor (maybe a graph output) keeps its producer.
    bias = gs.Constant(namer(f"{w.name}_bias"), t.astype(wv.dtype))
    bn.op = "Add"
    bn.attrs.clear()
    bn.inputs = [x, bias]
    return "converted"


def _fold_matmul_add(x, add, s, t, namer):
    consts = [i for i in add.inputs if resolve_constant(i) is not None]
    vars_ = [i for i in add.inputs if resolve_constant(i) is None]
    if len(add.inputs) != 2 or len(consts) != 1 or len(vars_) != 1:
        return f"its input comes from {describe(add)} of two computed tensors"
    y = vars_[0]
    if len(y.inputs) != 1 or len(y.outputs) != 1:
        return f"its input comes from {describe(add)} whose other input is shared or not a MatMul"
    mm = y.inputs[0]
    w, why = _matmul_weight(mm, s)
    if why:
        return f"its input comes from {describe(add)}, and {why.replace('its input comes from ', '')}"
    if x.shape is None or len(x.shape) != 2:
        return "its input is not known to be 2-D, so BN's channel axis is not the feature axis"
    c = consts[0]
    cv = np.asarray(resolve_constant(c).values, np.float64)
    try:
        new_c = cv * s + t
    except ValueError:
        return f"the Add constant of shape {cv.shape} does not broadcast to {s.shape[0]} features"
    if new_c.ndim > 2:
        return f"the Add constant of shape {cv.shape} has more than 2 dimensions"
    wv = w.values
    set_input_constant(mm, 1, (wv.astype(np.float64) * s[None, :]).astype(wv.dtype), namer, "bnfold")
    set_input_constant(add, add.inputs.index(c), new_c.astype(resolve_constant(c).values.dtype), namer, "bnfold")
    return None


def _unreported_bn(graph: gs.Graph, ctx: PassContext) -> str | None:
    left = sum(1 for n in graph.nodes if n.op == "BatchNormalization")
    kept = ctx.counts.get("kept", 0)
    return f"{left} BatchNormalization left, {kept} reported kept" if left > kept else None


NO_BN = Condition("no BatchNormalization left but the ones reported kept", _unreported_bn)


@register("fold-bn", "fold inference-mode BatchNormalization into the preceding Conv/Gemm/MatMul(+Add)",
          requires=(SELECTED,), ensures=(NO_BN,))
def fold_bn(graph: gs.Graph, ctx: PassContext) -> PassResult:
    targets = {}  # BN targets of this run, merged into what an earlier run of the passes recorded
    namer = Namer(graph)
    out_names = {t.name for t in graph.outputs}
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization":
            continue
        params = _bn_params(bn, graph.opset, out_names)
        x = bn.inputs[0] if bn.inputs else None
        if isinstance(params, str):
            why = params
        elif isinstance(x, gs.Constant) or x is None or len(x.inputs) != 1:
            why = "its input is not the output of a node (run fold-constants for constant inputs)"
        elif len(x.outputs) != 1 or x.name in out_names:
            why = f"its input {x.name!r} is also used elsewhere"
        else:
            s, t = params
            prod = x.inputs[0]
            if prod.op == "Conv":
                why = _fold_conv(prod, s, t, namer)
            elif prod.op == "Gemm":
                why = _fold_gemm(prod, s, t, namer)
            elif prod.op == "Add":
                why = _fold_matmul_add(x, prod, s, t, namer)
            elif prod.op == "MatMul":
                why = _fold_matmul(bn, x, prod, s, t, namer)
                if why == "converted":
                    ctx.count("folded")
                    continue
            else:
                why = f"its input comes from {describe(prod)}"
            if why is None:
                if prod.op in ("Conv", "Gemm"):  # the layers a crossbar maps (MatMul forms: not yet)
                    targets[bn.outputs[0].name] = bn_target(bn, s)
                # The producer takes over BN's output tensor (name kept, maybe a graph output).
                prod.outputs = [bn.outputs[0]]
                bn.outputs.clear()
                bn.inputs.clear()
                ctx.count("folded")
                continue
        ctx.warn(f"{describe(bn)} not folded: {why}")
        ctx.count("kept")
    if targets:
        merged = {**json.loads(ctx.metadata.get(BN_TARGETS_KEY, "{}")), **targets}
        ctx.metadata[BN_TARGETS_KEY] = json.dumps(merged, sort_keys=True, separators=(",", ":"))
    return PassResult(graph, ctx.counts.get("folded", 0) > 0)

"""``embed-normalization``: put the input normalisation that ``rram export`` records as metadata
(``rram.normalization``: per-channel mean and std) into the graph as its first nodes,
``Div(Sub(x, mean), std)``, so the model takes images in [0, 1] and a compiler (OpenVINO, TVM,
onnxruntime) needs no metadata to feed it.

Sub then Div, not one folded Mul+Add: the same float32 operations in the same order as the
toolchain's own ``normalize_images`` ((x - mean) / std), so the rewritten model sees bit for bit the
tensor the original saw. The metadata then records the normalisation as embedded: the pass removes
``rram.normalization`` (whose presence means "normalise the input before feeding it") and writes
the same JSON under ``rram.normalization_embedded``, so nothing normalises twice.

Verification: the original runs on normalised inputs x, the rewritten model on x * std + mean (the
[0, 1] images those came from); the pass declares that mapping in the PassContext and the verifier
applies it to the rewritten model's feeds.
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx_graphsurgeon as gs

from runtime.metadata import (
    INPUT_LAYOUT_KEY as LAYOUT_KEY,
    NORMALIZATION_EMBEDDED_KEY as EMBEDDED_KEY,
    NORMALIZATION_KEY,
)

from .errors import PassError
from .graph import Namer, PassContext
from .registry import Condition, PassResult, register

LAYOUT_EMBEDDED = "NCHW float32 images in [0, 1]; normalisation embedded in the graph (rram.normalization_embedded)"


def _read(text: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = json.loads(text)
        mean = [float(v) for v in d["mean"]]
        std = [float(v) for v in d["std"]]
    except (ValueError, KeyError, TypeError):
        raise PassError(f"embed-normalization: unreadable {NORMALIZATION_KEY} {text!r}") from None
    if len(mean) != len(std) or not mean or not all(math.isfinite(v) for v in mean + std) \
            or not all(s > 0 for s in std):
        raise PassError(f"embed-normalization: {NORMALIZATION_KEY} needs as many finite means as "
                        f"stds, every std > 0, got {text!r}")
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _not_embedded(graph: gs.Graph, ctx: PassContext) -> str | None:
    meta = ctx.metadata
    if EMBEDDED_KEY not in meta or NORMALIZATION_KEY in meta:
        return f"metadata {EMBEDDED_KEY} missing or {NORMALIZATION_KEY} still there"
    return None


EMBEDDED = Condition("the input normalisation embedded in the graph", _not_embedded)


@register("embed-normalization", "the input normalisation (rram.normalization metadata) as the graph's "
          "first nodes: the model takes images in [0, 1] (exact)", ensures=(EMBEDDED,))
def embed_normalization(graph: gs.Graph, ctx: PassContext) -> PassResult:
    meta = ctx.metadata
    if EMBEDDED_KEY in meta and NORMALIZATION_KEY not in meta:
        ctx.warn(f"the normalisation is already embedded ({EMBEDDED_KEY}); nothing to do")
        ctx.count("kept")
        return PassResult(graph, False)
    if NORMALIZATION_KEY not in meta:
        raise PassError(f"embed-normalization: the model records no input normalisation (metadata "
                        f"{NORMALIZATION_KEY}, written by rram export); nothing to embed")
    mean, std = _read(meta[NORMALIZATION_KEY])
    if len(graph.inputs) != 1:
        raise PassError(f"embed-normalization: the model has {len(graph.inputs)} graph inputs; "
                        f"the normalisation belongs to a single image input")
    x = graph.inputs[0]
    shape = list(x.shape) if x.shape is not None else None
    if x.dtype is None or np.dtype(x.dtype) != np.float32:
        raise PassError(f"embed-normalization: input {x.name!r} is {x.dtype}, not float32 images")
    if shape is None or len(shape) != 4 or shape[1] != len(mean):
        raise PassError(f"embed-normalization: input {x.name!r} has shape {shape}, not NCHW with "
                        f"{len(mean)} channels as {NORMALIZATION_KEY} describes")
    if x in graph.outputs:
        raise PassError(f"embed-normalization: input {x.name!r} is also a graph output")

    namer = Namer(graph)
    c = (1, len(mean), 1, 1)
    mean_c = gs.Constant(namer(f"{x.name}__mean"), mean.reshape(c))
    std_c = gs.Constant(namer(f"{x.name}__std"), std.reshape(c))
    centred = gs.Variable(namer(f"{x.name}__centred"), dtype=np.float32, shape=shape)
    normed = gs.Variable(namer(f"{x.name}__normalized"), dtype=np.float32, shape=shape)
    users = list(x.outputs)
    for node in users:  # every consumer of the input now reads the normalised tensor
        for i, t in enumerate(list(node.inputs)):
            if t is x:
                node.inputs[i] = normed
    graph.nodes.insert(0, gs.Node("Div", namer(f"{x.name}__normalize_div"), inputs=[centred, std_c],
                                  outputs=[normed]))
    graph.nodes.insert(0, gs.Node("Sub", namer(f"{x.name}__normalize_sub"), inputs=[x, mean_c],
                                  outputs=[centred]))

    meta[EMBEDDED_KEY] = meta.pop(NORMALIZATION_KEY)
    meta[LAYOUT_KEY] = LAYOUT_EMBEDDED
    # The original took normalised x; the rewritten model takes the image x * std + mean.
    m, s = mean.reshape(c), std.reshape(c)
    ctx.transform_input(x.name, lambda v: (np.asarray(v, np.float32) * s + m).astype(np.float32))
    ctx.count("embedded")
    return PassResult(graph, True)

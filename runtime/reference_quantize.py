"""A minimal reference quantizer: float ONNX model -> artifact folder (model.onnx QDQ +
conductance map), following the artifact contract of ``rram quantize`` (``passes``). Used by the
runtime's tests and benchmark so they do not depend on the quantizer branch; it maps every
Conv/Gemm/MatMul whose weight is an initializer and nothing else (no BN handling: export the
model in eval mode so BN is folded into the convolutions).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .artifact import CrossbarMap, MappedLayer, file_sha256, save_map
from .crossbar import (DeviceConfig, column_scales, decode, encode, quantize_matrix, tile_grid,
                       weight_to_matrix)

MODEL_NAME = "model.onnx"


def quantize_onnx(model: onnx.ModelProto, out: str | os.PathLike, device: DeviceConfig, *,
                  normalization: dict | None = None, bn_rate: float | None = None) -> Path:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if device.qmax > 127 and opset < 21:  # int16 DequantizeLinear needs opset 21
        from onnx import version_converter

        model = version_converter.convert_version(model, 21)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    layers, new_nodes, wide = [], [], False
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        wname = node.input[1]
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        transpose = node.op_type == "Gemm" and bool(attrs.get("transB", 0))
        groups = int(attrs.get("group", 1))
        matrix = weight_to_matrix(w, transpose=transpose)
        scales = column_scales(matrix, device)
        q = quantize_matrix(matrix, scales, device)
        levels = encode(q, device)
        layer = MappedLayer(f"{wname}.q", node.name, node.op_type, tuple(w.shape), transpose, groups,
                            levels, scales, tile_grid(*matrix.shape, device))
        qw = layer.integer_weight(device=device)
        assert np.array_equal(decode(levels, device), q)
        dtype = np.int8 if np.abs(qw).max(initial=0) <= 127 else np.int16
        wide |= dtype == np.int16
        axis = 1 if (w.ndim == 2 and not transpose) else 0
        graph.initializer.remove(inits[wname])
        graph.initializer.extend([numpy_helper.from_array(qw.astype(dtype), layer.name),
                                  numpy_helper.from_array(scales, f"{wname}.scale")])
        new_nodes.append(helper.make_node("DequantizeLinear", [layer.name, f"{wname}.scale"], [wname],
                                          name=f"{wname}.dq", axis=axis))
        new_nodes.append(node)
        layers.append(layer)
    del graph.node[:]
    graph.node.extend(new_nodes)
    opset = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    opset.version = max(opset.version, 21 if wide else 13)
    meta = {"rram.device": json.dumps(device.to_dict())}
    if normalization is not None:
        meta["rram.normalization"] = json.dumps(normalization)
    if bn_rate is not None:
        meta["rram.bn_rate"] = json.dumps(bn_rate)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / MODEL_NAME)
    save_map(CrossbarMap(device, layers, file_sha256(out / MODEL_NAME)), out)
    return out


def export_torch(module, sample, path: str | os.PathLike) -> onnx.ModelProto:
    """Float ONNX from a torch module in eval mode (legacy exporter: folds BN into convs)."""
    import warnings

    import torch

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and folding notices
        torch.onnx.export(module, sample, str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
                          opset_version=17)
    return onnx.load(str(path))

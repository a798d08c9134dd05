"""Crossbar quantizer: map a model's weights onto RRAM crossbar cells and emit the deployable
artifact (QDQ ``model.onnx`` + conductance map ``crossbars.json``/``crossbars.npz`` + ``report.json``).

The mapping itself (matrix layout, bit slicing, encodings, tiles) lives in ``runtime.crossbar``, so
that the runtime decodes exactly what is written here. This module finds the mappable layers,
quantises their weights, rewrites the graph in the QDQ convention; ``runtime.artifact`` writes the folder.

Graph rewrite: a mapped float initializer ``W`` is replaced by an integer initializer ``W__q``
(int8 when |q| <= 127, int16 otherwise, int32 beyond 15 bits) and a per-column float32 scale
``W__scale``; a ``DequantizeLinear`` node computes a tensor named ``W`` again, so every consumer is
untouched. (K, N) weights of MatMul and Gemm(transB=0) are stored transposed, (N, K), and a
``Transpose`` node restores them (see ``quantize_model``: it keeps onnxruntime from running them
with int8 activations). Per-axis DequantizeLinear needs opset 13, int16 needs opset 21: the model's opset is
raised with ``onnx.version_converter`` when it is below that (int32 is the fallback when the
converter cannot reach 21).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import onnx
from onnx import numpy_helper

from ..artifact import CrossbarMap, MappedLayer, check_output_folder, write_artifact
from ..crossbar import (
    DeviceConfig,
    column_scales,
    dequantize_matrix,
    encode,
    matrix_to_weight,
    quantize_matrix,
    tile_grid,
    weight_to_matrix,
)
from ..errors import QuantizeError, one_line
from ..metadata import DEVICE_KEY, read_metadata
from .layers import LayerSelection, constants, find_layers, load_model, opset_of
from .report import sqnr_db


def _storage_dtype(device: DeviceConfig) -> tuple[type, int, int]:
    """(numpy dtype, ONNX elem type, minimum opset) that hold every |q| <= qmax exactly."""
    if device.qmax <= 127:
        return np.int8, onnx.TensorProto.INT8, 13
    if device.qmax <= 32767:
        return np.int16, onnx.TensorProto.INT16, 21
    return np.int32, onnx.TensorProto.INT32, 13


def _raise_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``onnx.version_converter`` on a shell of the model without its initializers (stand-in graph
    inputs keep it valid): the converter serialises the whole model, which for a ResNet-50 costs
    seconds; upgrade adapters rewrite nodes and attributes, never initializer values."""
    from onnx import version_converter

    graph = model.graph
    shell = onnx.ModelProto()
    shell.ir_version = model.ir_version
    shell.opset_import.extend(model.opset_import)
    shell.functions.extend(model.functions)
    g = shell.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in graph.initializer)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    converted = version_converter.convert_version(shell, target)
    kept = list(converted.graph.input)[:len(graph.input)]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    converted.graph.initializer.extend(graph.initializer)
    converted.graph.sparse_initializer.extend(graph.sparse_initializer)
    converted.graph.doc_string = graph.doc_string
    for attr in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(converted, attr, getattr(model, attr))
    converted.metadata_props.extend(model.metadata_props)
    converted.ir_version = max(model.ir_version,
                               onnx.helper.find_min_ir_version_for(list(converted.opset_import), True))
    return converted


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def quantize_model(model_or_path: str | os.PathLike | onnx.ModelProto, device: DeviceConfig, *,
                   selection: LayerSelection | None = None) -> tuple[onnx.ModelProto, CrossbarMap, dict]:
    """Quantise every selected layer onto ``device`` crossbars.

    Returns the deployable QDQ model, its conductance map and a report (per layer: tiles, cells,
    utilisation, SQNR). The input model is not modified. Metadata (``rram.*`` keys and any other)
    is carried over; ``rram.device`` records the device description as JSON.
    """
    t0 = time.perf_counter()
    if not isinstance(device, DeviceConfig):
        raise QuantizeError(f"device must be a DeviceConfig, got {type(device).__name__}")
    selection = selection or LayerSelection()
    model = load_model(model_or_path)

    candidates, skipped = find_layers(model, selection)
    if not candidates:
        why = "; ".join(f"{s['node']}: {s['reason']}" for s in skipped[:5]) or "it has no Conv/Gemm/MatMul node"
        raise QuantizeError(f"no mappable layer (Conv/Gemm/MatMul with a constant float weight) in the "
                            f"model: {why}")

    np_dtype, _, min_opset = _storage_dtype(device)
    opset_before = opset_of(model)
    if opset_before < min_opset:
        try:
            model = _raise_opset(model, min_opset)
        except Exception as e:
            if np_dtype is not np.int16:
                raise QuantizeError(f"cannot raise the model's opset {opset_before} to {min_opset} "
                                    f"(needed by per-column DequantizeLinear): {one_line(e)}") from None
            # int16 needs opset 21; int32 represents the same integers exactly from opset 13
            np_dtype, min_opset = np.int32, 13
            if opset_before < min_opset:
                try:
                    model = _raise_opset(model, min_opset)
                except Exception as e2:
                    raise QuantizeError(f"cannot raise the model's opset {opset_before} to {min_opset}: "
                                        f"{one_line(e2)}") from None
        candidates, skipped = find_layers(model, selection)  # the converter returns new protos

    graph = model.graph
    inits, const_nodes = constants(graph, model.ir_version)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}
    layers, rows, dq_nodes, new_inits, drop_inits, drop_nodes = [], [], [], [], set(), set()
    total_signal = total_noise = 0.0
    for cand in candidates:
        if cand.weight in inits:
            tensor = inits[cand.weight]
            drop_inits.add(cand.weight)
        else:
            tensor = const_nodes[cand.weight].attribute[0].t
            drop_nodes.add(cand.weight)
        weight = numpy_helper.to_array(tensor).astype(np.float32, copy=False)
        if not np.all(np.isfinite(weight)):
            raise QuantizeError(f"weight {cand.weight!r} of {cand.node.name} has NaN or infinite values")
        matrix = np.ascontiguousarray(weight_to_matrix(weight, transpose=cand.transpose))
        scales = column_scales(matrix, device)
        q = quantize_matrix(matrix, scales, device)
        levels = encode(q, device)
        tiles = tile_grid(*matrix.shape, device)
        deq = dequantize_matrix(q, scales)

        qname = _unique(f"{cand.weight}__q", taken)
        sname = _unique(f"{cand.weight}__scale", taken)
        dqname = _unique(f"{cand.weight}__dequantize", taken)
        if weight.ndim == 2 and not cand.transpose:
            # A (K, N) weight is stored transposed, (N, K) with per-row scales, and a Transpose
            # restores it: onnxruntime otherwise fuses DequantizeLinear(int8) -> MatMul/Gemm into
            # MatMulNBits, which quantises the *activations* to int8 (a 1-2% output error not in
            # the map). DQ -> Transpose -> MatMul becomes an exact float FusedMatMul instead.
            stored_shape, stored_transpose = weight.shape[::-1], True
            dq_out = _unique(f"{cand.weight}__dequantized", taken)
            dq_nodes.append(onnx.helper.make_node("DequantizeLinear", [qname, sname], [dq_out],
                                                  name=dqname, axis=0))
            dq_nodes.append(onnx.helper.make_node("Transpose", [dq_out], [cand.weight],
                                                  name=_unique(f"{cand.weight}__transpose", taken), perm=[1, 0]))
        else:
            # Conv (Cout, ...) and Gemm transB=1 (N, K): matrix columns are axis 0
            stored_shape, stored_transpose = weight.shape, cand.transpose
            dq_nodes.append(onnx.helper.make_node("DequantizeLinear", [qname, sname], [cand.weight],
                                                  name=dqname, axis=0))
        new_inits.append(numpy_helper.from_array(
            matrix_to_weight(q, stored_shape, transpose=stored_transpose).astype(np_dtype), qname))
        new_inits.append(numpy_helper.from_array(scales, sname))
        # the map describes the integer initializer as stored (what DequantizeLinear reads)
        layers.append(MappedLayer(qname, cand.node.name, cand.node.op_type, tuple(stored_shape),
                                  stored_transpose, cand.groups, levels, scales, tiles))

        diff = matrix - deq  # float32 is exact enough for a noise power
        signal, noise = float(np.vdot(matrix, matrix)), float(np.vdot(diff, diff))
        total_signal, total_noise = total_signal + signal, total_noise + noise
        allocated = len(tiles) * device.tile_rows * device.tile_cols
        rows.append({
            "layer": cand.weight, "node": cand.node.name, "op_type": cand.node.op_type,
            "weight_shape": list(weight.shape), "groups": cand.groups, "matrix_shape": list(matrix.shape),
            "tiles": len(tiles), "cells": int(levels.size), "allocated_cells": allocated,
            "utilisation": levels.size / allocated,
            "sqnr_db": sqnr_db(signal, noise),
            # saturated by the clip (rounding would have gone past qmax)
            "clipped": float(np.mean(np.abs(matrix) > (device.qmax + 0.5) * scales[None, :])),
            "dtype": np.dtype(np_dtype).name,
        })

    keep_inits = [t for t in graph.initializer if t.name not in drop_inits]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits + new_inits)
    keep_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in drop_nodes)]
    del graph.node[:]
    graph.node.extend(dq_nodes + keep_nodes)  # DQ inputs are initializers: first keeps topological order

    meta = read_metadata(model)
    meta[DEVICE_KEY] = json.dumps(device.to_dict(), sort_keys=True)
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    if model.ir_version < 4:
        # IR 3 lists every initializer as a graph input; a mapped weight is now a DequantizeLinear
        # output, so it cannot stay an input: write IR 4 rules (initializers need not be inputs)
        inits = {t.name for t in model.graph.initializer} | {n.output[0] for n in dq_nodes}
        kept = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(4, onnx.helper.find_min_ir_version_for(list(model.opset_import), True))
    try:  # the full check (strict shape inference too) before anything is written
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise QuantizeError(f"the quantised model does not pass onnx.checker: {one_line(e)}") from None

    cmap = CrossbarMap(device, layers)
    cells = sum(r["cells"] for r in rows)
    allocated = sum(r["allocated_cells"] for r in rows)
    report = {
        "device": device.to_dict(),
        "opset": {"before": opset_before, "after": opset_of(model)},
        "weight_dtype": np.dtype(np_dtype).name,
        "layers": rows,
        "skipped": skipped,
        "total": {
            "layers": len(rows), "weights": int(sum(np.prod(r["weight_shape"]) for r in rows)),
            "tiles": sum(r["tiles"] for r in rows), "cells": cells, "allocated_cells": allocated,
            "utilisation": cells / allocated if allocated else 0.0,
            "sqnr_db": sqnr_db(total_signal, total_noise),
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return model, cmap, report


def quantize_to_folder(src: str | os.PathLike | onnx.ModelProto, outdir: str | os.PathLike,
                       device: DeviceConfig, *, selection: LayerSelection | None = None,
                       force: bool = False) -> dict:
    """``rram quantize``: quantise ``src`` and write the artifact folder; returns the report."""
    inputs = [] if isinstance(src, onnx.ModelProto) else [src]  # never replaced by --force
    check_output_folder(outdir, force, inputs)  # fail before the work, not after
    t0 = time.perf_counter()
    model, cmap, report = quantize_model(src, device, selection=selection)
    write_artifact(outdir, model, cmap, report, force=force, inputs=inputs)
    report = dict(report, model_sha256=cmap.model_sha256, output=str(outdir),
                  total_seconds=round(time.perf_counter() - t0, 3))
    return report

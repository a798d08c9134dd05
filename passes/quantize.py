"""Crossbar quantizer: map a model's weights onto RRAM crossbar cells and emit the deployable
artifact (QDQ ``model.onnx`` + conductance map ``crossbars.json``/``crossbars.npz`` + ``report.json``).

The mapping itself (matrix layout, bit slicing, encodings, tiles) lives in ``runtime.crossbar``, so
that the runtime decodes exactly what is written here. This module finds the mappable layers,
quantises their weights, rewrites the graph in the QDQ convention and writes the folder atomically.

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

import fnmatch
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from runtime.artifact import CrossbarMap, MappedLayer, file_sha256, save_map
from runtime.fileio import check_parents
from runtime.crossbar import (DeviceConfig, column_scales, dequantize_matrix, encode, matrix_to_weight,
                              quantize_matrix, tile_grid, weight_to_matrix)
from runtime.errors import RuntimeInputError

MAPPABLE_OPS = ("Conv", "Gemm", "MatMul")
MODEL_NAME = "model.onnx"
REPORT_NAME = "report.json"
DEVICE_METADATA_KEY = "rram.device"


class QuantizeError(RuntimeInputError):
    """Bad input to the quantizer (the CLI prints it as one line, exit 2)."""


@dataclass(frozen=True)
class LayerSelection:
    """Which layers are mapped: nodes of ``op_types`` whose weight is a constant float tensor,
    filtered by shell patterns matched against the node name or the weight name."""
    op_types: tuple[str, ...] = MAPPABLE_OPS
    include: tuple[str, ...] = ()  # empty: every candidate
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        bad = [op for op in self.op_types if op not in MAPPABLE_OPS]
        if bad or not self.op_types:
            raise QuantizeError(f"cannot map op type(s) {', '.join(bad) or '(none)'}: choose from "
                                f"{', '.join(MAPPABLE_OPS)}")

    def accepts(self, node_name: str, weight_name: str) -> bool:
        def hit(patterns):
            return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (node_name, weight_name))
        return (not self.include or hit(self.include)) and not hit(self.exclude)


@dataclass
class _Candidate:
    node: onnx.NodeProto
    weight: str
    transpose: bool
    groups: int


# ------------------------------------------------------------------------------------ loading

def load_model(src: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read and check an ONNX model; any unreadable, truncated or invalid file is a QuantizeError."""
    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)  # never modify the caller's model
        where = "the model"
    else:
        path = Path(src)
        where = str(path)
        if path.is_dir():
            raise QuantizeError(f"{path} is a folder, not an ONNX file")
        if not path.is_file():
            raise QuantizeError(f"{path}: no such file")
        try:
            model = onnx.load(path)
        except Exception as e:  # protobuf DecodeError, external-data OSError, ...
            raise QuantizeError(f"{path} is not a readable ONNX model ({type(e).__name__}: "
                                f"{_one_line(e)})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError; a truncated file often parses into an invalid model
        raise QuantizeError(f"{where} is not a valid ONNX model: {_one_line(e)}") from None
    if not model.graph.node:
        raise QuantizeError(f"{where} has an empty graph")
    return model


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


# ------------------------------------------------------------------------------------ layer search

def _constants(graph: onnx.GraphProto) -> tuple[dict[str, onnx.TensorProto], dict[str, onnx.NodeProto]]:
    """Constant tensors by name: initializers (not overridable graph inputs) and Constant nodes."""
    inputs = {i.name for i in graph.input}
    inits = {t.name: t for t in graph.initializer if t.name not in inputs}
    const_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                   and len(n.attribute) == 1 and n.attribute[0].name == "value"}
    return inits, const_nodes


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def find_layers(model: onnx.ModelProto, selection: LayerSelection) -> tuple[list[_Candidate], list[dict]]:
    """Mappable nodes (first use of each weight wins) and the reasons others were skipped."""
    graph = model.graph
    inits, const_nodes = _constants(graph)
    found, skipped, seen = [], [], set()
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in MAPPABLE_OPS:
            continue
        if not node.name:
            node.name = f"{node.op_type}_{index}"  # the map names layers by node
        wname = node.input[1] if len(node.input) > 1 else ""

        def skip(reason):
            skipped.append({"node": node.name, "op_type": node.op_type, "weight": wname, "reason": reason})

        if node.op_type not in selection.op_types:
            skip("op type not selected")
            continue
        if not selection.accepts(node.name, wname):
            skip("excluded by name")
            continue
        tensor = inits.get(wname)
        if tensor is None and wname in const_nodes:
            tensor = const_nodes[wname].attribute[0].t
        if tensor is None:
            overridable = any(i.name == wname for i in graph.input)
            skip("weight is a graph input (overridable, not a constant)" if overridable
                 else "weight is not a constant")
            continue
        if tensor.data_type != onnx.TensorProto.FLOAT:
            skip(f"weight type {onnx.TensorProto.DataType.Name(tensor.data_type)} (only FLOAT is mapped)")
            continue
        if wname in seen:
            skip("weight already mapped by an earlier node")
            continue
        dims = list(tensor.dims)
        transpose, groups = False, 1
        if node.op_type == "Conv":
            groups = int(_attr(node, "group", 1))
            if len(dims) < 3 or groups < 1 or dims[0] % groups:
                skip(f"unsupported Conv weight shape {dims} with group={groups}")
                continue
        elif node.op_type == "Gemm":
            if len(dims) != 2:
                skip(f"Gemm weight of shape {dims}")
                continue
            transpose = bool(_attr(node, "transB", 0))
        else:  # MatMul: only a constant 2-D right operand is a weight matrix
            if len(dims) != 2:
                skip(f"MatMul right operand of shape {dims} is not a 2-D weight")
                continue
        seen.add(wname)
        found.append(_Candidate(node, wname, transpose, groups))
    return found, skipped


# ------------------------------------------------------------------------------------ quantisation

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


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


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
    opset_before = _opset(model)
    if opset_before < min_opset:
        try:
            model = _raise_opset(model, min_opset)
        except Exception as e:
            if np_dtype is not np.int16:
                raise QuantizeError(f"cannot raise the model's opset {opset_before} to {min_opset} "
                                    f"(needed by per-column DequantizeLinear): {_one_line(e)}") from None
            # int16 needs opset 21; int32 represents the same integers exactly from opset 13
            np_dtype, min_opset = np.int32, 13
            if opset_before < min_opset:
                try:
                    model = _raise_opset(model, min_opset)
                except Exception as e2:
                    raise QuantizeError(f"cannot raise the model's opset {opset_before} to {min_opset}: "
                                        f"{_one_line(e2)}") from None
        candidates, skipped = find_layers(model, selection)  # the converter returns new protos

    graph = model.graph
    inits, const_nodes = _constants(graph)
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
            "sqnr_db": _db(signal, noise),
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

    meta = {p.key: p.value for p in model.metadata_props}
    meta[DEVICE_METADATA_KEY] = json.dumps(device.to_dict(), sort_keys=True)
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise QuantizeError(f"the quantised model does not pass onnx.checker: {_one_line(e)}") from None

    cmap = CrossbarMap(device, layers)
    cells = sum(r["cells"] for r in rows)
    allocated = sum(r["allocated_cells"] for r in rows)
    report = {
        "device": device.to_dict(),
        "opset": {"before": opset_before, "after": _opset(model)},
        "weight_dtype": np.dtype(np_dtype).name,
        "layers": rows,
        "skipped": skipped,
        "total": {
            "layers": len(rows), "weights": int(sum(np.prod(r["weight_shape"]) for r in rows)),
            "tiles": sum(r["tiles"] for r in rows), "cells": cells, "allocated_cells": allocated,
            "utilisation": cells / allocated if allocated else 0.0,
            "sqnr_db": _db(total_signal, total_noise),
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return model, cmap, report


# ------------------------------------------------------------------------------------ the artifact

def check_output_folder(outdir: str | os.PathLike, force: bool) -> Path:
    out = Path(outdir)
    if out.exists() or out.is_symlink():
        if not force:
            raise QuantizeError(f"{out} exists (use --force to replace it)")
        if not out.is_dir() or out.is_symlink():
            raise QuantizeError(f"{out} exists and is not a folder; refusing to replace it")
    return out


def write_artifact(outdir: str | os.PathLike, model: onnx.ModelProto, cmap: CrossbarMap, report: dict, *,
                   force: bool = False) -> Path:
    """Write ``model.onnx``, ``crossbars.json``/``.npz`` and ``report.json`` into ``outdir``.

    The folder is built beside its final place and renamed into it, so a crash or an error leaves
    either the old folder or the complete new one, never a half-written one. An existing folder is
    refused unless ``force``.
    """
    out = check_output_folder(outdir, force)
    check_parents(out)
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise QuantizeError(f"cannot create {out}: {e.strerror or e}") from None
    try:
        model_path = tmp / MODEL_NAME
        try:
            onnx.save(model, model_path)
        except ValueError as e:  # > 2 GB protobuf limit
            raise QuantizeError(f"cannot serialise the quantised model: {_one_line(e)}") from None
        cmap.model_sha256 = file_sha256(model_path)
        save_map(cmap, tmp)
        full = dict(report, model_sha256=cmap.model_sha256,
                    files=[MODEL_NAME, "crossbars.json", "crossbars.npz", REPORT_NAME])
        (tmp / REPORT_NAME).write_text(json.dumps(json_safe(full), indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp/mkstemp make everything private
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "x")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / "x", out)  # put the old folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def json_safe(obj):
    """inf/nan are not JSON: SQNR of an exactly representable layer is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def quantize_to_folder(src: str | os.PathLike | onnx.ModelProto, outdir: str | os.PathLike,
                       device: DeviceConfig, *, selection: LayerSelection | None = None,
                       force: bool = False) -> dict:
    """``rram quantize``: quantise ``src`` and write the artifact folder; returns the report."""
    check_output_folder(outdir, force)  # fail before the work, not after
    t0 = time.perf_counter()
    model, cmap, report = quantize_model(src, device, selection=selection)
    write_artifact(outdir, model, cmap, report, force=force)
    report = dict(report, model_sha256=cmap.model_sha256, output=str(outdir),
                  total_seconds=round(time.perf_counter() - t0, 3))
    return report


def format_report(report: dict) -> str:
    """The per-layer table printed by ``rram quantize``."""
    dev = report["device"]
    head = (f"device {dev['name']}: {dev['tile_rows']}x{dev['tile_cols']} tiles, {dev['bits_per_cell']} "
            f"bit(s)/cell x {dev['cells_per_weight']} slice(s), {dev['encoding']}, "
            f"{dev['scale_granularity']} scales; weights stored as {report['weight_dtype']}")
    lines = [head, f"{'node':<40} {'op':<7} {'matrix':>11} {'tiles':>5} {'cells':>10} {'util':>6} {'SQNR dB':>8}"]

    def sq(v):
        return "inf" if v is None or v == math.inf else f"{v:.1f}"

    for r in report["layers"]:
        name = r["node"] if len(r["node"]) <= 40 else "..." + r["node"][-37:]
        lines.append(f"{name:<40} {r['op_type']:<7} {r['matrix_shape'][0]:>5}x{r['matrix_shape'][1]:<5} "
                     f"{r['tiles']:>5} {r['cells']:>10} {100 * r['utilisation']:>5.1f}% {sq(r['sqnr_db']):>8}")
    t = report["total"]
    lines.append(f"{'total (' + str(t['layers']) + ' layers)':<40} {'':<7} {'':>11} {t['tiles']:>5} "
                 f"{t['cells']:>10} {100 * t['utilisation']:>5.1f}% {sq(t['sqnr_db']):>8}")
    if report.get("skipped"):
        lines.append(f"not mapped: {len(report['skipped'])} node(s) (see report.json)")
    return "\n".join(lines)

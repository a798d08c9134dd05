"""Which layers of a float ONNX model the quantizer maps: Conv/Gemm/MatMul nodes whose weight is
a constant float tensor, filtered by a ``LayerSelection``; the reasons others are skipped."""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import QuantizeError, one_line

MAPPABLE_OPS = ("Conv", "Gemm", "MatMul")


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
                                f"{one_line(e)})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError; a truncated file often parses into an invalid model
        raise QuantizeError(f"{where} is not a valid ONNX model: {one_line(e)}") from None
    if not model.graph.node:
        raise QuantizeError(f"{where} has an empty graph")
    return model


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def constants(graph: onnx.GraphProto, ir_version: int = 8) -> tuple[dict[str, onnx.TensorProto],
                                                                   dict[str, onnx.NodeProto]]:
    """Constant tensors by name: initializers (not overridable graph inputs) and Constant nodes.
    Below IR 4 every initializer had to be listed as a graph input too: there they are constants."""
    inputs = {i.name for i in graph.input} if ir_version >= 4 else set()
    inits = {t.name: t for t in graph.initializer if t.name not in inputs}
    const_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                   and len(n.attribute) == 1 and n.attribute[0].name == "value"}
    return inits, const_nodes


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def find_layers(model: onnx.ModelProto, selection: LayerSelection) -> tuple[list[_Candidate], list[dict]]:
    """Mappable nodes (first use of each weight wins) and the reasons others were skipped."""
    graph = model.graph
    inits, const_nodes = constants(graph, model.ir_version)
    found, skipped, seen = [], [], set()
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in MAPPABLE_OPS:
            continue
        if not node.name:
            node.name = f"{node.op_type}_{index}"  # the map names layers by node
        wname = node.input[1] if len(node.input) > 1 else ""

        def skip(reason, node=node, wname=wname):
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
            groups = int(attr(node, "group", 1))
            if len(dims) < 3 or groups < 1 or dims[0] % groups:
                skip(f"unsupported Conv weight shape {dims} with group={groups}")
                continue
        elif node.op_type == "Gemm":
            if len(dims) != 2:
                skip(f"Gemm weight of shape {dims}")
                continue
            transpose = bool(attr(node, "transB", 0))
        else:  # MatMul: only a constant 2-D right operand is a weight matrix
            if len(dims) != 2:
                skip(f"MatMul right operand of shape {dims} is not a 2-D weight")
                continue
        seen.add(wname)
        found.append(_Candidate(node, wname, transpose, groups))
    return found, skipped

"""DAC and ADC resolution on the deployed fp32 graph (issue 37; docs/runtime.md, Device
non-idealities): a rewrite of the prepared model (``DeployedModel.base_bytes``, the mapped weights
appended per chip by name, so every chip and every non-ideality of the weights composes with it).

For every mapped Conv/Gemm with input X, weight W (the chip's) and bias B:

- **DAC** (``dac_bits`` b): X quantised to b bits before the crossbar, one range per layer
  calibrated on the calibration images with ideal converters: unsigned [0, max X] in 2^b - 1
  steps when X never goes below 0 (after a ReLU), else signed, symmetric, 2^(b-1) - 1 steps.
- **ADC** (``adc_bits`` b): the layer split over its row tiles (``device.tile_rows`` rows of the
  weight matrix: a conv's rows are (input channel, kernel row, kernel column) flattened, so a tile
  may cut a channel's kernel): tile t computes its partial sum P_t = X * (W masked to its rows)
  (a Mul by a constant 0/1 mask: onnxruntime folds it into the weight at session creation), each
  P_t is converted on its own (signed, symmetric, 2^(b-1) - 1 steps per side, per column) and the
  converted partial sums are added digitally, then B. The column's range: ``calibrated-per-column``,
  the largest |P_t| of the column over the calibration images on the ideal chip (what a per-column
  gain trim sets); ``full-scale``, the largest sum the column can hold: its rows x the DAC's (or
  calibrated) input maximum x the column's largest |weight|. Values beyond the range saturate.

Quantisation is round-half-to-even (onnx Round) of value / step, clipped, times the step. Costs:
with an ADC every layer is computed once per row tile (ResNet20's 576-row layers five times).

With per-chip calibration (``converter_rewrite``): the same rewrite applied to the calibration's
statistics and evaluated graphs, whose calibrated layers have no bias (the rewrite then ends them
at the digital sum) and take the chip's digital scale and offset after it; the ranges measured
on the ideal chip as deployed, its periphery calibrated (``ranges_of(reference=...)``).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .artifact.deployed import DeployedModel, append_initializers
from .errors import RuntimeInputError


def _row_tiles(rows: int, step: int) -> list[tuple[int, int]]:
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def _mask(layer, r0: int, r1: int) -> np.ndarray:
    """A 0/1 mask that keeps the weight matrix rows [r0, r1), broadcastable to the stored weight."""
    shape = layer.weight_shape
    if len(shape) == 2:  # Gemm: (K, N), or (N, K) stored transposed
        k = shape[1] if layer.transpose else shape[0]
        m = np.zeros(k, np.float32)
        m[r0:r1] = 1
        return m.reshape(1, k) if layer.transpose else m.reshape(k, 1)
    m = np.zeros(int(np.prod(shape[1:])), np.float32)
    m[r0:r1] = 1
    return m.reshape(1, *shape[1:])


def _rows(layer) -> int:
    shape = layer.weight_shape
    if len(shape) == 2:
        return shape[1] if layer.transpose else shape[0]
    return int(np.prod(shape[1:]))


def _qdq(nodes: list, inits: list, x: str, step: np.ndarray, lo: float, hi: float, name: str) -> str:
    """x -> round(x / step) clipped to [lo, hi], times step; the output's name."""
    inits += [numpy_helper.from_array(step.astype(np.float32), f"{name}/step"),
              numpy_helper.from_array(np.array(lo, np.float32), f"{name}/lo"),
              numpy_helper.from_array(np.array(hi, np.float32), f"{name}/hi")]
    nodes += [helper.make_node("Div", [x, f"{name}/step"], [f"{name}/div"]),
              helper.make_node("Round", [f"{name}/div"], [f"{name}/round"]),
              helper.make_node("Clip", [f"{name}/round", f"{name}/lo", f"{name}/hi"], [f"{name}/clip"]),
              helper.make_node("Mul", [f"{name}/clip", f"{name}/step"], [f"{name}/q"])]
    return f"{name}/q"


def converter_model(model: DeployedModel, nonideal, ranges: dict | None,
                    base: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The prepared model (or ``base``, a graph built from it whose mapped Conv/Gemm nodes still
    read the mapped weights by name: a calibration graph) with each mapped layer split over its
    row tiles. ``ranges`` None: no quantisation, and the layer inputs and partial sums are extra
    outputs (what ``ranges_of`` measures); else ``{"x": [max |X|, min X] per layer, "p": [per
    tile: max |P_t| per column]}``. A layer without a bias (as the calibration graphs leave the
    calibrated ones) ends at the digital sum of its converted partial sums."""
    if base is None:
        base = model.base_model()
    else:
        copy = onnx.ModelProto()
        copy.CopyFrom(base)
        base = copy
    graph, device = base.graph, model.cmap.device
    consumer = {n.input[1]: n for n in graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}
    probes, new_inits, replaced = [], [], {}
    for i, (layer, wname) in enumerate(zip(model.cmap.layers, model.weight_names)):
        node = consumer.get(wname)
        if node is None:  # e.g. a MatMul or a weight behind a Transpose: not rewritten
            raise RuntimeInputError(f"DAC/ADC resolution supports mapped Conv and Gemm layers; {layer.node} is not one")
        if node.op_type == "Gemm" and any((a.name == "transA" and a.i) or (a.name == "beta" and a.f != 1.0)
                                          for a in node.attribute):
            raise RuntimeInputError(f"DAC/ADC resolution: {layer.node} is a Gemm with transA or beta != 1")
        nodes, x, tag = [], node.input[0], f"rram_conv/{i}"
        if ranges is None:  # (an Identity: the first layer's input is the graph's input)
            nodes.append(helper.make_node("Identity", [x], [f"{tag}/xin"]))
            probes.append(f"{tag}/xin")
        elif nonideal.dac_bits is not None:
            top, low = ranges["x"][i]
            signed = low < 0
            levels = (1 << (nonideal.dac_bits - 1)) - 1 if signed else (1 << nonideal.dac_bits) - 1
            step = np.array(max(top, 1e-30) / max(levels, 1), np.float32)
            x = _qdq(nodes, new_inits, x, step, -levels if signed else 0, levels, f"{tag}/dac")
        partials = []
        split = ranges is None or nonideal.adc_bits is not None  # the DAC alone needs no split
        for t, (r0, r1) in enumerate(_row_tiles(_rows(layer), device.tile_rows if split else _rows(layer))):
            w = wname
            if (r0, r1) != (0, _rows(layer)):
                new_inits.append(numpy_helper.from_array(_mask(layer, r0, r1), f"{tag}/mask{t}"))
                nodes.append(helper.make_node("Mul", [wname, f"{tag}/mask{t}"], [f"{tag}/w{t}"]))
                w = f"{tag}/w{t}"
            part = helper.make_node(node.op_type, [x, w], [f"{tag}/p{t}"])
            part.attribute.extend(a for a in node.attribute if a.name != "beta")
            nodes.append(part)
            p = f"{tag}/p{t}"
            if ranges is None:
                probes.append(p)
            elif nonideal.adc_bits is not None:
                levels = (1 << (nonideal.adc_bits - 1)) - 1
                top = np.maximum(np.asarray(ranges["p"][i][t], np.float32), 1e-30)
                step = (top / max(levels, 1)).reshape((1, -1) + (1,) * (2 if node.op_type == "Conv" else 0))
                p = _qdq(nodes, new_inits, p, step, -levels, levels, f"{tag}/adc{t}")
            partials.append(p)
        total = partials[0]
        if len(partials) > 1:
            nodes.append(helper.make_node("Sum", partials, [f"{tag}/sum"]))
            total = f"{tag}/sum"
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
            if node.op_type == "Conv":  # (C,) -> (1, C, 1, 1)
                new_inits.append(numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), f"{tag}/bshape"))
                nodes.append(helper.make_node("Reshape", [bias, f"{tag}/bshape"], [f"{tag}/b"]))
                bias = f"{tag}/b"
            nodes.append(helper.make_node("Add", [total, bias], [node.output[0]]))
        else:
            nodes.append(helper.make_node("Identity", [total], [node.output[0]]))
        replaced[id(node)] = nodes
    out = []
    for n in graph.node:
        out.extend(replaced.get(id(n), [n]))
    del graph.node[:]
    graph.node.extend(out)
    graph.initializer.extend(new_inits)
    for name in probes:
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return base, probes


def ranges_of(model: DeployedModel, nonideal, calibration: np.ndarray, session, batch: int = 100,
              reference: tuple | None = None) -> dict:
    """The converters' ranges from normalised calibration images on the ideal chip (module doc).
    ``reference``: (graph, initializer names, arrays) of the ideal chip as deployed, when that is
    not the prepared model with its clean weights (per-chip calibration: the fault-free chip with
    its periphery calibrated, the digital scale after the layer, ``ChipCalibrator.eval_model``)."""
    base, names, arrays = reference if reference is not None else (None, model.weight_names, model.clean_weights())
    graph, probes = converter_model(model, nonideal, None, base)
    sess = session(append_initializers(graph.SerializeToString(), names, arrays))
    top = [None] * len(probes)
    low = [np.inf] * len(probes)
    for start in range(0, len(calibration), batch):
        outs = sess.run(probes, {model.input_name: calibration[start:start + batch]})
        for k, v in enumerate(outs):
            axes = tuple(a for a in range(v.ndim) if a != 1)
            m = np.abs(v).max(axis=axes) if v.ndim > 1 else np.abs(v)
            top[k] = m if top[k] is None else np.maximum(top[k], m)
            low[k] = min(low[k], float(v.min()))
    ranges, k = {"x": [], "p": []}, 0
    device = model.cmap.device
    for layer in model.cmap.layers:
        x_top, x_low = float(top[k].max()), low[k]
        ranges["x"].append((x_top, x_low))
        k += 1
        tiles = []
        for r0, r1 in _row_tiles(_rows(layer), device.tile_rows):
            if nonideal.adc_range == "full-scale":  # rows x input maximum x the column's largest |weight|
                col_max = layer.scales.astype(np.float64) * device.qmax
                tiles.append((r1 - r0) * x_top * col_max)
            else:
                tiles.append(top[k])
            k += 1
        ranges["p"].append(tiles)
    return ranges


def converter_rewrite(model: DeployedModel, nonideal, calibration: np.ndarray, session, reference=None):
    """The ranges measured once (``ranges_of``, the ideal chip, ``reference``), then
    ``rewrite(graph) -> graph``: DAC/ADC resolution applied to the prepared model or to a graph
    built from it (the per-chip calibration's statistics and evaluated graphs: the chip
    calibrated and evaluated as it computes, behind the same converters)."""
    if calibration is None or len(calibration) == 0:
        raise RuntimeInputError("DAC/ADC resolution needs calibration images for its ranges")
    ranges = ranges_of(model, nonideal, calibration, session, reference=reference)

    def rewrite(base: onnx.ModelProto | None = None) -> onnx.ModelProto:
        return converter_model(model, nonideal, ranges, base)[0]
    return rewrite


def converted_base(model: DeployedModel, nonideal, calibration: np.ndarray, session) -> bytes:
    """The prepared model (without the mapped weights) with DAC/ADC resolution applied."""
    return converter_rewrite(model, nonideal, calibration, session)().SerializeToString()

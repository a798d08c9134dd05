"""A deployed model: one quantized folder (``model.onnx`` + its conductance map), loaded and
checked against each other, with the mapped weights folded for the engine.

Preparation (once per model): the QDQ weight path (integer initializer -> DequantizeLinear ->
Conv/Gemm) of every mapped layer is folded into one float initializer, bit for bit the
DequantizeLinear output, under the name the consumer reads, and the model *without* those
initializers is serialised once. Per chip only the faulty weights are serialised, as a second
ModelProto holding just ``graph.initializer``, and appended to those bytes: protobuf merges
concatenated messages (repeated fields append), so the session sees one complete model with the
weights as constant initializers, which onnxruntime pre-packs and lays out (NCHWc) at full
optimisation. Measured alternatives (docs/runtime.md): weights as graph inputs cannot be
pre-packed (~60% slower runs); ``SessionOptions.add_initializer`` at ORT_ENABLE_ALL silently
computes with the *original* weights in some layers (onnxruntime 1.32: wrong accuracy), and at
ORT_ENABLE_EXTENDED it loses the NCHWc layout (~40% slower runs).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from ..crossbar import decode, dequantize_matrix, matrix_to_weight
from ..errors import RuntimeInputError
from ..fileio import file_sha256
from ..metadata import DEVICE_KEY, PROVENANCE_ONLY_KEYS, Normalization, bn_rate_from_metadata, read_metadata
from .crossbar_map import CrossbarMap, load_map
from .layout import JSON_NAME, MODEL_NAME, NPZ_NAME

if TYPE_CHECKING:
    from ..faults import Chip


def content_sha256(folder: Path) -> str:
    """The sha256 of a deployed folder less what only says where it came from (results files'
    ``info.provenance.content_sha256``, runtime/provenance.py): model.onnx without the
    ``PROVENANCE_ONLY_KEYS`` metadata, re-serialised deterministically; crossbars.json without
    ``model_sha256`` (the file hash that metadata changes); crossbars.npz. Two builds that differ
    only in the checkpoint's recorded path or sha256 give one value; any weight, level, scale, tile
    layout or metadata the runtime reads gives another. Reads the files as they are (no
    consistency check: ``DeployedModel.load`` makes those)."""
    model = onnx.load(str(folder / MODEL_NAME), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key not in PROVENANCE_ONLY_KEYS]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    cmap = json.loads((folder / JSON_NAME).read_text())
    cmap.pop("model_sha256", None)
    digest = hashlib.sha256(model.SerializeToString(deterministic=True))
    digest.update(json.dumps(cmap, sort_keys=True).encode())
    digest.update((folder / NPZ_NAME).read_bytes())
    return digest.hexdigest()


@dataclass
class DeployedModel:
    """One quantized folder: model.onnx + its conductance map, checked against each other."""
    folder: Path
    cmap: CrossbarMap
    base_bytes: bytes             # the prepared float model without the mapped weights
    weight_names: list[str]       # per mapped layer, the float initializer it becomes
    input_name: str
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)
    input_dims: tuple = ()        # the image input's dims, None where symbolic (e.g. batch)

    def __post_init__(self):
        self._clean = self.clean_weights()

    @property
    def normalization(self) -> Normalization | None:
        return Normalization.from_metadata(self.metadata, self.folder / MODEL_NAME)

    @property
    def bn_rate(self) -> float | None:
        return bn_rate_from_metadata(self.metadata, self.folder / MODEL_NAME)

    def content_sha256(self) -> str:
        """``content_sha256`` of this model's folder (results files' ``info.provenance``)."""
        return content_sha256(self.folder)

    def model_bytes_with(self, weights: list[np.ndarray] | None = None) -> bytes:
        """The complete prepared model with these float weights (the clean ones when None)."""
        if weights is None:
            weights = self._clean
        if len(weights) != len(self.weight_names):
            raise RuntimeInputError(f"{len(weights)} weights for {len(self.weight_names)} mapped layers")
        return append_initializers(self.base_bytes, self.weight_names,
                                   [np.asarray(w, dtype=np.float32) for w in weights])

    def base_model(self) -> onnx.ModelProto:
        """The prepared float model without the mapped weights (they are appended per chip)."""
        return onnx.ModelProto.FromString(self.base_bytes)

    def clean_weights(self) -> list[np.ndarray]:
        return [layer.float_weight(self.cmap.device) for layer in self.cmap.layers]

    def chip_weights(self, chip: Chip) -> list[np.ndarray]:
        """The float weights a faulty chip computes with (same decoder as the quantizer)."""
        return self.weights_of(self.chip_levels(chip))

    def chip_levels(self, chip: Chip) -> list[np.ndarray]:
        """Per layer, the levels the chip's cells hold: uint8 (stuck cells at their stuck level),
        or float32 with programming variation (``variation.programmed_levels``, drawn from the
        run's seed in a stream of its own)."""
        from ..faults import apply_faults, faulty_levels, split_codes  # here: runtime.faults imports this package

        if chip.nonideal is None or not chip.nonideal.varies:
            return faulty_levels(self.cmap, chip.codes)
        from ..crossbar import sa0_level
        from ..variation import programmed_levels

        flat = np.concatenate([layer.levels.ravel() for layer in self.cmap.layers])
        faulty = apply_faults(flat, chip.codes, sa0_level(self.cmap.device))
        return split_codes(self.cmap, programmed_levels(faulty, chip.codes, chip.nonideal, self.cmap.device,
                                                        chip.seed))

    def read_weights(self, levels: list[np.ndarray], chip: Chip, batch: int) -> list[np.ndarray]:
        """The weights batch ``batch`` is computed with: the chip's ``levels`` read with that
        batch's read noise (``variation.read_noise``)."""
        from ..faults import split_codes
        from ..variation import read_noise

        noise = split_codes(self.cmap, read_noise(self.cmap.cell_count(), chip.nonideal, self.cmap.device,
                                                  chip.seed, batch))
        return self.weights_of([lv.astype(np.float32) + n for lv, n in zip(levels, noise)])

    def weights_of(self, levels: list[np.ndarray]) -> list[np.ndarray]:
        """Float weights from per-layer cell levels: integer levels through the quantizer's own
        decoder, real-valued ones (variation, read noise) through ``variation.decode_float``."""
        device = self.cmap.device
        out = []
        for layer, lv in zip(self.cmap.layers, levels):
            if lv.dtype == np.uint8:
                q = decode(lv, device)
            else:
                from ..variation import decode_float

                q = decode_float(lv, device)
            out.append(matrix_to_weight(dequantize_matrix(q, layer.scales), layer.weight_shape,
                                        transpose=layer.transpose))
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DeployedModel:
        folder = Path(folder)
        path = folder / MODEL_NAME
        if not path.is_file():
            raise RuntimeInputError(f"{folder} is not a quantized artifact: no {MODEL_NAME}")
        cmap = load_map(folder)
        sha = file_sha256(path)
        if cmap.model_sha256 != sha:
            raise RuntimeInputError(f"the conductance map in {folder} belongs to a different model.onnx "
                                    f"(sha256 {cmap.model_sha256[:12]}, file {sha[:12]})")
        try:
            model = onnx.load(str(path))
        except Exception as e:  # onnx raises DecodeError and friends
            raise RuntimeInputError(f"corrupt ONNX model {path}: {str(e).splitlines()[0][:200]}") from None
        inits = {t.name for t in model.graph.initializer}
        inputs = [i.name for i in model.graph.input if i.name not in inits]
        _check_device(model, cmap, path, folder)
        base_bytes, names = _fold_weights(model, cmap, path)
        if len(inputs) != 1:
            raise RuntimeInputError(f"{path}: expected one image input, found {inputs}")
        dims = next(i for i in model.graph.input if i.name == inputs[0]).type.tensor_type.shape.dim
        return cls(folder, cmap, base_bytes, names, inputs[0], sha, read_metadata(model),
                   tuple(d.dim_value if d.dim_value > 0 else None for d in dims))

    def fixed_batch(self, images_shape: tuple) -> int | None:
        """Check uint8 NHWC images against the model's input; the batch size the model fixes, if any."""
        dims = self.input_dims
        if len(dims) != 4 or len(images_shape) != 4:  # (normalize_images refuses non-NHWC images)
            return None
        got = (images_shape[3], images_shape[1], images_shape[2])
        if any(want is not None and want != g for want, g in zip(dims[1:], got)):
            show = "x".join("?" if d is None else str(d) for d in dims[1:])
            raise RuntimeInputError(f"{self.folder}: the model takes images of {show} (C x H x W), "
                                    f"the data holds {got[0]}x{got[1]}x{got[2]}")
        return dims[0]


def _check_device(model: onnx.ModelProto, cmap: CrossbarMap, path: Path, folder: Path) -> None:
    """The map's device must be the one the model was quantised for (``rram.device``): the same
    levels read on another device (e.g. bits_per_cell 7 -> 8) decode to the same integers, but
    its stuck cells to other values."""
    text = read_metadata(model).get(DEVICE_KEY)
    if text is None:
        raise RuntimeInputError(f"{path} records no {DEVICE_KEY} metadata: not written by rram quantize")
    try:
        recorded = json.loads(text)
    except ValueError:
        raise RuntimeInputError(f"{path}: corrupt {DEVICE_KEY} metadata") from None
    mine = json.loads(json.dumps(cmap.device.to_dict()))
    if recorded != mine:
        diff = sorted(k for k in set(recorded) | set(mine) if recorded.get(k) != mine.get(k))
        what = ", ".join(f"{k} {mine.get(k)!r}, model {recorded.get(k)!r}" for k in diff)
        raise RuntimeInputError(f"{folder / JSON_NAME}: the device differs from the one {MODEL_NAME} was "
                                f"quantised for ({what})")


def _mapped_in_model(graph: onnx.GraphProto) -> list[str]:
    """The integer initializers that DequantizeLinear turns into the weight of a Conv, Gemm or
    MatMul (directly or through a Transpose): the layers the quantizer mapped."""
    inits = {t.name: t for t in graph.initializer}
    weight_of = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
    transposed = {n.input[0] for n in graph.node if n.op_type == "Transpose" and n.output[0] in weight_of}
    integer = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
               onnx.TensorProto.UINT16, onnx.TensorProto.INT32}
    return [n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type in integer and (n.output[0] in weight_of or n.output[0] in transposed)]


def _fold_weights(model: onnx.ModelProto, cmap: CrossbarMap, path: Path) -> tuple[bytes, list[str]]:
    """Replace each mapped layer's DequantizeLinear by its float output; check that the map decodes
    to exactly the integer initializer and scales of the model."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    dq_of = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    names, drop_nodes, drop_inits = [], set(), set()
    in_map = {layer.name for layer in cmap.layers}
    missing = [name for name in _mapped_in_model(graph) if name not in in_map]
    if missing:  # such a layer would silently run fault-free
        raise RuntimeInputError(f"the conductance map does not match {path}: it has no entry for the mapped "
                                f"layer{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing[:3])}"
                                f"{', ...' if len(missing) > 3 else ''}")
    for layer in cmap.layers:
        node = dq_of.get(layer.name)
        if layer.name not in inits or node is None:
            raise RuntimeInputError(f"the conductance map does not match {path}: no integer initializer "
                                    f"{layer.name!r} feeding a DequantizeLinear")
        q = numpy_helper.to_array(inits[layer.name])
        if tuple(q.shape) != tuple(layer.weight_shape) or not np.array_equal(
                q.astype(np.int64), layer.integer_weight(device=cmap.device).astype(np.int64)):
            raise RuntimeInputError(f"the conductance map does not match {path}: layer {layer.name!r} "
                                    f"decodes to other integers than the model holds")
        scale_name = node.input[1]
        scale = numpy_helper.to_array(inits[scale_name]) if scale_name in inits else None
        if scale is None or not np.array_equal(scale.astype(np.float32).ravel(), layer.scales.ravel()):
            raise RuntimeInputError(f"the conductance map does not match {path}: layer {layer.name!r} "
                                    f"scales differ from the model's")
        if len(node.input) > 2 and node.input[2] and node.input[2] in inits and \
                np.any(numpy_helper.to_array(inits[node.input[2]])):
            raise RuntimeInputError(f"{path}: layer {layer.name!r} has a non-zero zero point")
        names.append(node.output[0])
        drop_nodes.add(id(node))
        drop_inits.update({layer.name, scale_name})
        if len(node.input) > 2 and node.input[2]:
            drop_inits.add(node.input[2])
    # initializers still read by other nodes stay
    still_used = {i for n in graph.node if id(n) not in drop_nodes for i in n.input}
    kept_nodes = [n for n in graph.node if id(n) not in drop_nodes]
    kept_inits = [t for t in graph.initializer if t.name not in drop_inits or t.name in still_used]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return model.SerializeToString(), names


def append_initializers(base: bytes, names: list[str], arrays: list[np.ndarray]) -> bytes:
    """``base`` plus these initializers: protobuf merges a concatenated message into the first
    (repeated fields append), so only the weights are serialised per chip."""
    tail = onnx.ModelProto(graph=onnx.GraphProto(initializer=[
        numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in zip(names, arrays)]))
    return base + tail.SerializeToString()

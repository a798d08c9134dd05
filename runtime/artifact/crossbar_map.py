"""The conductance map of a deployed model: ``crossbars.json`` (description) + ``crossbars.npz``
(cell levels and scales). Format spec: ``docs/crossbar-format.md``.

Written by the quantizer (``runtime.quantize``), read by the fault runtime. Per mapped layer the npz holds
``L{i:04d}.levels`` (uint8, planes x slices x rows x cols: the level of every cell, per cell plane)
and ``L{i:04d}.scales`` (float32, one per column). The weight the deployed model computes with is
``matrix_to_weight(decode(levels) * scales)``, bit for bit the DequantizeLinear output in model.onnx.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..crossbar import (
    DeviceConfig,
    Tile,
    decode,
    dequantize_matrix,
    matrix_to_weight,
    tile_grid,
)
from ..errors import RuntimeInputError
from ..fileio import atomic_write_with, check_npz_members, read_json_document
from .layout import JSON_NAME, NPZ_NAME

FORMAT = "rram-crossbar-map"
VERSION = 1


@dataclass
class MappedLayer:
    """One weight initializer mapped onto crossbar tiles."""
    name: str            # the ONNX initializer that holds the integer weight
    node: str            # the Conv/Gemm/MatMul node that uses it
    op_type: str
    weight_shape: tuple[int, ...]
    transpose: bool      # 2-D weights stored (N, K) (Gemm transB=1)
    groups: int
    levels: np.ndarray   # uint8 (planes, slices, rows, cols)
    scales: np.ndarray   # float32 (cols,)
    tiles: list[Tile] = field(default_factory=list)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return tuple(self.levels.shape[2:])

    def integer_weight(self, levels: np.ndarray | None = None, device: DeviceConfig | None = None) -> np.ndarray:
        """Signed integer weight in the layer's own shape, decoded from (possibly faulty) levels."""
        q = decode(self.levels if levels is None else levels, device)
        return matrix_to_weight(q, self.weight_shape, transpose=self.transpose)

    def float_weight(self, device: DeviceConfig, levels: np.ndarray | None = None) -> np.ndarray:
        q = decode(self.levels if levels is None else levels, device)
        return matrix_to_weight(dequantize_matrix(q, self.scales), self.weight_shape, transpose=self.transpose)


@dataclass
class CrossbarMap:
    device: DeviceConfig
    layers: list[MappedLayer]
    model_sha256: str = ""  # of the model.onnx this map belongs to

    def cell_count(self) -> int:
        return int(sum(layer.levels.size for layer in self.layers))


def save_map(cmap: CrossbarMap, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays, entries = {}, []
    for i, layer in enumerate(cmap.layers):
        key = f"L{i:04d}"
        arrays[f"{key}.levels"] = np.ascontiguousarray(layer.levels, dtype=np.uint8)
        arrays[f"{key}.scales"] = np.ascontiguousarray(layer.scales, dtype=np.float32)
        tiles = layer.tiles or tile_grid(*layer.matrix_shape, cmap.device)
        entries.append({
            "key": key, "name": layer.name, "node": layer.node, "op_type": layer.op_type,
            "weight_shape": list(layer.weight_shape), "transpose": layer.transpose,
            "groups": layer.groups, "matrix_shape": list(layer.matrix_shape),
            "planes": int(layer.levels.shape[0]), "slices": int(layer.levels.shape[1]),
            "tiles": [[t.row, t.col, t.rows, t.cols] for t in tiles],
        })
    doc = {"format": FORMAT, "version": VERSION, "device": cmap.device.to_dict(),
           "model_sha256": cmap.model_sha256, "layers": entries}
    # npz first: a json without its npz would be a broken artifact
    atomic_write_with(folder / NPZ_NAME, lambda fh: np.savez(fh, **arrays))
    atomic_write_with(folder / JSON_NAME, lambda fh: fh.write(json.dumps(doc, indent=1).encode()))


def _expected_bytes(entries, device: DeviceConfig) -> dict[str, int]:
    """{npz array name: the most bytes it may hold} per layer of ``crossbars.json``: levels one
    value per cell (planes x cells per weight x rows x columns) and scales one per column, each
    of at most 8 bytes (a wrong dtype is left to its own message), checked against each entry's
    declared size before it is read."""
    expected = {}
    for e in entries:
        rows, cols = (int(v) for v in e["matrix_shape"])
        if rows < 0 or cols < 0:
            raise ValueError(f"layer {e.get('name')!r} has a negative matrix_shape")
        expected[f"{e['key']}.levels"] = device.planes * device.cells_per_weight * rows * cols * 8
        expected[f"{e['key']}.scales"] = cols * 8
    return expected


def load_map(folder: str | os.PathLike) -> CrossbarMap:
    folder = Path(folder)
    jpath, npath = folder / JSON_NAME, folder / NPZ_NAME
    if not jpath.is_file() or not npath.is_file():
        raise RuntimeInputError(f"{folder} has no conductance map ({JSON_NAME} + {NPZ_NAME})")
    doc = read_json_document(jpath, FORMAT, "crossbar map")
    if doc.get("version") != VERSION:  # another layout read as this one gives wrong weights
        raise RuntimeInputError(f"{jpath}: crossbar map version {doc.get('version')!r} is not supported "
                                f"(this rram reads version {VERSION})")
    sha = doc.get("model_sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        # without it nothing ties the map to its model.onnx
        raise RuntimeInputError(f"{jpath}: model_sha256 (the sha256 of the model.onnx it belongs to) "
                                f"is {'missing' if not sha else 'not a sha256'}")
    layers = []
    try:
        device = DeviceConfig.from_dict(doc["device"])
        check_npz_members(npath, _expected_bytes(doc["layers"], device), "conductance map")
        with np.load(npath, allow_pickle=False) as z:
            for e in doc["layers"]:
                levels, scales = z[f"{e['key']}.levels"], z[f"{e['key']}.scales"]
                expected = (device.planes, device.cells_per_weight, *e["matrix_shape"])
                if levels.dtype != np.uint8:
                    raise RuntimeInputError(f"{npath}: layer {e['name']!r} levels are {levels.dtype}, "
                                            f"not uint8")
                if tuple(levels.shape) != expected:
                    raise RuntimeInputError(f"{npath}: layer {e['name']!r} levels have shape "
                                            f"{tuple(levels.shape)}, the map says {expected} (planes, "
                                            f"cells per weight, rows, columns)")
                if levels.max(initial=0) >= device.levels:
                    raise RuntimeInputError(f"{npath}: layer {e['name']!r} has a level above {device.levels - 1}")
                layers.append(MappedLayer(e["name"], e["node"], e["op_type"], tuple(e["weight_shape"]),
                                          bool(e["transpose"]), int(e["groups"]), levels, scales,
                                          [Tile(*t) for t in e["tiles"]]))
    except (KeyError, OSError, ValueError, TypeError, AttributeError, zipfile.BadZipFile) as e:
        raise RuntimeInputError(f"corrupt conductance map in {folder}: {type(e).__name__}: {e}") from None
    names = [layer.name for layer in layers]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise RuntimeInputError(f"{jpath}: layer {twice!r} is mapped twice")
    return CrossbarMap(device, layers, sha)

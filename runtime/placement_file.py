"""A placed chip is a file (``rram place``; format in docs/crossbar-format.md, "Placement file"):
one ``.npz`` holding ``meta`` (UTF-8 JSON: what it belongs to) and per mapped layer ``Lnnnn.rows``
(int16, R x column tiles: the physical row, within its tile, of each logical row) and
``Lnnnn.flip`` (uint8, row bands x C: 1 where the tile column's pair carries its positive part on
its second cell, the sign restored by the periphery). Written atomically; every field is checked
on reading, so a file from another artifact or chip, or edited into something that is not a
placement, is a one-line error."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .artifact.crossbar_map import CrossbarMap
from .errors import RuntimeInputError
from .faults import layer_keys
from .fileio import atomic_write_with
from .placement import PLACEMENT_VERSION, Placement, column_tiles, padded_rows

FORMAT = "rram-placement"
VERSION = 1
FILE_NAME = "placement.npz"


def placement_meta(cmap: CrossbarMap, placement: Placement, *, model_sha256: str, fault_map_sha256: str,
                   spares: bool) -> dict:
    device = cmap.device
    return {"format": FORMAT, "version": VERSION, "algorithm": PLACEMENT_VERSION,
            "model_sha256": model_sha256, "fault_map_sha256": fault_map_sha256, "spares": bool(spares),
            "device": device.to_dict(), **placement.errors(),
            "layers": [{"key": key, "name": layer.name, "node": layer.node, "matrix_shape": list(layer.matrix_shape),
                        "tile_rows": device.tile_rows, "column_tiles": [list(t) for t in column_tiles(layer, device)]}
                       for key, layer in zip(layer_keys(cmap), cmap.layers)]}


def write_placement(path: str | os.PathLike, cmap: CrossbarMap, placement: Placement, **meta) -> None:
    doc = placement_meta(cmap, placement, **meta)
    arrays = {"meta": np.frombuffer(json.dumps(doc, indent=1).encode(), np.uint8)}
    for key, rows, flip in zip(layer_keys(cmap), placement.rows, placement.flip):
        arrays[f"{key}.rows"] = rows.astype(np.int16)
        arrays[f"{key}.flip"] = flip.astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda fh: np.savez_compressed(fh, **arrays))


def read_placement(path: str | os.PathLike, cmap: CrossbarMap, *, model_sha256: str, fault_map_sha256: str,
                   spares: bool) -> Placement:
    """The placement in ``path``, checked against the model it must belong to, the chip's fault
    map (its sha256), and the geometry: per tile, the logical rows go to distinct physical rows
    of that tile (spare rows only where the fault map has them)."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeInputError(f"placement file not found: {path}")
    _check_sizes(path, cmap)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        doc = json.loads(arrays.pop("meta").tobytes().decode())
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise RuntimeInputError(f"{path} is not a placement file: {type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RuntimeInputError(f"{path} is not a placement file")
    if doc.get("version") != VERSION:
        raise RuntimeInputError(f"{path}: placement file version {doc.get('version')!r}; this rram reads {VERSION}")
    if doc.get("model_sha256") != model_sha256:
        raise RuntimeInputError(f"{path} places another model (sha256 {str(doc.get('model_sha256'))[:12]}, this "
                                f"one {model_sha256[:12]}): place this artifact with rram place")
    if doc.get("fault_map_sha256") != fault_map_sha256:
        raise RuntimeInputError(f"{path} places another chip (its fault map's sha256 differs): place this "
                                f"chip with rram place")
    if doc.get("device") != cmap.device.to_dict():
        raise RuntimeInputError(f"{path} was made for another device geometry")
    rows_out, flips = [], []
    t = cmap.device.tile_rows
    for key, layer in zip(layer_keys(cmap), cmap.layers):
        n_rows, n_cols = layer.matrix_shape
        n_tiles, bands = len(column_tiles(layer, cmap.device)), -(-n_rows // t)
        rows, flip = arrays.get(f"{key}.rows"), arrays.get(f"{key}.flip")
        if rows is None or flip is None:
            raise RuntimeInputError(f"{path}: no placement for layer {layer.name!r} ({key})")
        if rows.shape != (n_rows, n_tiles) or not np.issubdtype(rows.dtype, np.integer):
            raise RuntimeInputError(f"{path}: layer {layer.name!r} rows are {rows.dtype} {rows.shape}, not "
                                    f"integers ({n_rows}, {n_tiles})")
        if flip.shape != (bands, n_cols) or not np.isin(flip, (0, 1)).all():
            raise RuntimeInputError(f"{path}: layer {layer.name!r} flip must be 0/1 of shape ({bands}, {n_cols})")
        physical = padded_rows(layer, cmap.device) if spares else n_rows
        for b in range(bands):
            band = rows[b * t:(b + 1) * t].astype(np.int64)
            limit = min(t, physical - b * t)  # the tile's physical rows: spares only where known
            for k in range(n_tiles):
                col = band[:, k]
                if col.min() < 0 or col.max() >= limit or len(np.unique(col)) != len(col):
                    raise RuntimeInputError(f"{path}: layer {layer.name!r} tile ({b}, {k}) does not send its "
                                            f"{len(col)} rows to distinct physical rows 0..{limit - 1}: not a "
                                            f"placement")
        rows_out.append(rows.astype(np.int16))
        flips.append(flip.astype(bool))
    return Placement(rows_out, flips, energy=1.0)


def _check_sizes(path: Path, cmap: CrossbarMap) -> None:
    """Each entry's declared size against what it may hold, before anything is decompressed."""
    from .fileio import check_npz_members

    limits = {"meta": 64 * 1024 + 512 * len(cmap.layers)}
    for key, layer in zip(layer_keys(cmap), cmap.layers):
        n_rows, n_cols = layer.matrix_shape
        limits[f"{key}.rows"] = 8 * n_rows * len(column_tiles(layer, cmap.device))
        limits[f"{key}.flip"] = 8 * -(-n_rows // cmap.device.tile_rows) * n_cols
    check_npz_members(path, limits, "placement file", unknown="an entry for no mapped layer")


# ------------------------------------------------------------------ one measured chip

def measured_chip(artifact, fault_map: str | os.PathLike, stats_rate, *, place: bool = False,
                  placement: str | os.PathLike | None = None):
    """A measured chip as the deployment computes with it: (model name, Chip; ``chip.info``: what
    placement records).
    ``place``: placed here with its own faults; ``placement``: as `rram place` placed it (the
    file checked against the model and the map). A fault map of the used cells only places
    without spare rows (its spares are unknown), and says so in the record."""
    from .artifact import check_stats_rate
    from .fileio import file_sha256
    from .placement import load_physical_fault_map, place_chip, placed_codes

    cmap = artifact.first.cmap
    physical = load_physical_fault_map(fault_map, cmap)
    name = artifact.select(physical.used.stuck_fraction, check_stats_rate(stats_rate))
    model_cmap = artifact.models[name].cmap
    if placement is not None:
        chosen = read_placement(placement, model_cmap, model_sha256=artifact.models[name].sha256,
                                fault_map_sha256=file_sha256(fault_map), spares=physical.spare is not None)
    elif place:
        chosen = place_chip(model_cmap, physical)
    else:
        return name, physical.used
    chip = placed_codes(model_cmap, physical, chosen)
    chip.info = {"placed": "file" if placement is not None else "here", "spare_rows": physical.spare is not None}
    if placement is None:
        chip.info.update(chosen.errors())
    return name, chip


def place_fault_map(artifact, fault_map: str | os.PathLike, out: str | os.PathLike, stats_rate="auto") -> dict:
    """``rram place``: place one measured chip and write its placement file; what it wrote."""
    from .artifact import check_stats_rate
    from .fileio import file_sha256
    from .placement import load_physical_fault_map, place_chip

    physical = load_physical_fault_map(fault_map, artifact.first.cmap)
    name = artifact.select(physical.used.stuck_fraction, check_stats_rate(stats_rate))
    model = artifact.models[name]
    placement = place_chip(model.cmap, physical)
    write_placement(out, model.cmap, placement, model_sha256=model.sha256, fault_map_sha256=file_sha256(fault_map),
                    spares=physical.spare is not None)
    return {"model": name, "spares": physical.spare is not None, **placement.errors()}

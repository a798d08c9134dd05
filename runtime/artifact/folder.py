"""Writing a deployed artifact folder as a whole: built beside its final place and renamed into
it, so a crash or an error leaves either the old folder or the complete new one."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from ..errors import QuantizeError, one_line
from ..fileio import check_parents, file_sha256
from .crossbar_map import CrossbarMap, save_map
from .layout import FILES, MODEL_NAME, REPORT_NAME


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
            raise QuantizeError(f"cannot serialise the quantised model: {one_line(e)}") from None
        cmap.model_sha256 = file_sha256(model_path)
        save_map(cmap, tmp)
        full = dict(report, model_sha256=cmap.model_sha256, files=list(FILES))
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

"""Writing a deployed artifact folder as a whole: built beside its final place and renamed into
it, so a crash or an error leaves either the old folder or the complete new one."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx

from ..errors import QuantizeError, RuntimeInputError, one_line
from ..fileio import check_parents, file_sha256
from .crossbar_map import CrossbarMap, save_map
from .layout import FILES, JSON_NAME, MODEL_NAME, REPORT_NAME


def check_output_folder(outdir: str | os.PathLike, force: bool,
                        inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The output folder, refused before any work if it exists, unless ``force`` and it is a
    previous artifact: its conductance map and only the artifact's own files (``FILES``), not
    holding any of ``inputs``, the current directory or a parent of either. ``--force`` once
    replaced whatever folder it was given, e.g. the one holding the input model."""
    out = Path(os.path.abspath(outdir))  # "." and "x/.." get a real name (a ".." temp folder once)
    if not (out.exists() or out.is_symlink()):
        return out
    if not force:
        raise QuantizeError(f"{outdir} exists (use --force to replace it)")
    if not out.is_dir() or out.is_symlink():
        raise QuantizeError(f"{outdir} exists and is not a folder; refusing to replace it")
    real = out.resolve()
    for what, path in [("the current directory", Path.cwd())] + [
            (f"the input {p}", Path(p)) for p in inputs if isinstance(p, (str, os.PathLike))]:
        path = path.resolve()
        if path == real or real in path.parents:
            raise QuantizeError(f"refusing to replace {outdir} with --force: it holds {what}")
    names = sorted(p.name for p in out.iterdir())
    unexpected = [n for n in names if n not in FILES or not (out / n).is_file() or (out / n).is_symlink()]
    if JSON_NAME not in names or unexpected:
        why = f"it holds {', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''}" if unexpected \
            else f"it has no {JSON_NAME}"
        raise QuantizeError(f"refusing to replace {outdir} with --force: it is not a previous artifact "
                            f"({why}); remove it yourself or choose another folder")
    return out


def write_artifact(outdir: str | os.PathLike, model: onnx.ModelProto, cmap: CrossbarMap, report: dict, *,
                   force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``model.onnx``, ``crossbars.json``/``.npz`` and ``report.json`` into ``outdir``.

    The folder is built beside its final place and renamed into it, so a crash or an error leaves
    either the old folder or the complete new one, never a half-written one, and no temporary
    folder. An existing folder is refused unless ``force`` and it is a previous artifact
    (``check_output_folder``). A failed write (full disk) names ``outdir``.
    """
    out = check_output_folder(outdir, force, inputs)
    check_parents(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise QuantizeError(f"cannot create {outdir}: {e.strerror or e}") from None
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
            _replace_folder(tmp, out, parent)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # the temporary folder's own path would mislead: name the folder asked for
        if isinstance(e, OSError):
            raise QuantizeError(f"cannot write {outdir}: {e.strerror or e}") from None
        if isinstance(e, RuntimeInputError) and str(tmp) in str(e):
            raise QuantizeError(str(e).replace(str(tmp), str(outdir))) from None
        raise
    return out


def _replace_folder(new: Path, out: Path, parent: Path) -> None:
    """Swap ``new`` into ``out`` through a private ``.NAME.xxxx.old`` folder, which is removed
    whatever happens, unless it still holds the old artifact (the swap back failed)."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
    try:
        os.replace(out, old / "x")
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(old / "x", out)  # put the old folder back
            raise
    finally:
        if (old / "x").exists() and not out.exists():
            pass  # the old artifact is only there now: keep it for the user
        else:
            shutil.rmtree(old, ignore_errors=True)


def json_safe(obj):
    """inf/nan are not JSON: SQNR of an exactly representable layer is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj

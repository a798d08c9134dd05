"""Reading, checking and writing ONNX files: atomic, deterministic, and safe for models above 2 GB
or with external data files (the dynamo exporter writes ``model.onnx.data``)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from runtime.fileio import check_parents

from .errors import PassError

# Protobuf cannot serialize a message of 2 GiB or more; above this we write external data.
# A module constant so tests can exercise the large-model path with a small model.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def one_line(e: BaseException) -> str:
    """The exception's message on one line of at most 300 characters, for one-line errors and
    warnings (onnx.checker and onnxruntime spread node dumps over several lines)."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return text or type(e).__name__


_first_line = one_line  # the name passes/pipeline.py still calls


def load(path) -> onnx.ModelProto:
    """Load an ONNX file (with its external data, if any) and run ``onnx.checker`` on it."""
    path = Path(path)
    if not path.is_file():
        raise PassError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise PassError(f"{path}: not an ONNX model or truncated ({one_line(e)})") from None
    except Exception as e:  # protobuf raises assorted types for garbage
        raise PassError(f"{path}: not an ONNX model or truncated ({one_line(e)})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise PassError(f"{path}: not an ONNX model or truncated (no graph nodes)")
    try:
        # The path form handles >2 GB models and external data.
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise PassError(f"{path}: fails onnx.checker: {one_line(e)}") from None
    return model


def external_files(path) -> list[Path]:
    """The external data files an ONNX file refers to (empty when it holds its weights)."""
    path = Path(path)
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    locs = []
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location" and e.value not in locs:
                    locs.append(e.value)
    return [path.parent / loc for loc in locs]


def model_size(model: onnx.ModelProto) -> int:
    """Serialized size, estimated without serializing (``ByteSize`` takes seconds on big models):
    initializer payloads from their dims plus the exact size of everything else."""
    total = sum(n.ByteSize() for n in model.graph.node) + 2**20
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += sum(e.ByteSize() for e in t.external_data)
            continue
        n = 1
        for d in t.dims:
            n *= d
        item = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize \
            if t.data_type != onnx.TensorProto.STRING else 0
        total += n * max(item, 1) + 64 + (t.ByteSize() if t.data_type == onnx.TensorProto.STRING else 0)
    return total


def check(model: onnx.ModelProto, what: str, *, full: bool = False) -> None:
    """``onnx.checker`` on an in-memory model (through a temporary file when it is too large);
    ``full`` adds the checker's strict shape inference, as for every model the passes write."""
    try:
        if model_size(model) < EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model, full_check=full)
        else:
            with tempfile.TemporaryDirectory(prefix="rram-passes-") as d:
                p = write_raw(model, Path(d) / "model.onnx")
                onnx.checker.check_model(str(p), full_check=full)
    except Exception as e:
        raise PassError(f"{what} fails onnx.checker: {one_line(e)}") from None


def write_raw(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` (external data ``<name>.data`` beside it when too large).
    Does not modify ``model``."""
    path = Path(path)
    if model_size(model) < EXTERNAL_DATA_THRESHOLD:
        path.write_bytes(model.SerializeToString())
        return path
    m = onnx.ModelProto()
    m.CopyFrom(model)
    # One data file with a fixed relative name keeps the output deterministic and relocatable.
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024, convert_attribute=False)
    return path


def save(model: onnx.ModelProto, out) -> list[Path]:
    """Write atomically: into a temporary folder beside ``out``, then ``os.replace`` (data file
    first, so the .onnx never points at a missing or stale data file). Returns the written paths."""
    out = Path(out)
    if out.is_dir():
        raise PassError(f"output {out} is a directory")
    check_parents(out)  # a file where a folder should be: say so, not "File exists"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return _save(model, out)
    except OSError as e:
        raise PassError(f"cannot write {out}: {e.strerror or e}") from None


def _save(model: onnx.ModelProto, out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as d:
        tmp = write_raw(model, Path(d) / out.name)
        written = []
        data = tmp.with_name(out.name + ".data")
        if data.exists():
            os.replace(data, out.with_name(out.name + ".data"))
            written.append(out.with_name(out.name + ".data"))
        os.replace(tmp, out)
        written.append(out)
    return written

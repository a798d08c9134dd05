"""Numeric verification: run the reference and the rewritten model in onnxruntime on the same
seeded random inputs (plus any real inputs given) and compare every output.

The figure compared with the tolerance is, per output, ``max|new - ref| / max|ref|`` (the largest
difference relative to the output's magnitude); integer and boolean outputs must match exactly."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from runtime.session import make_session

from . import model_io
from .errors import PassError

# max |diff| / max |output|. float32 evaluation noise alone reaches ~1e-4 on deep nets with
# small BN variances (measured: onnxruntime optimised vs unoptimised on the *same* MobileNetV2,
# BN recalibrated at p = 0.5: 8e-5; its folded form: 1.3e-4), so 1e-4 refused correct rewrites.
# A deliberately wrong rewrite (every Conv weight x 1.01) shows 1e-2: 1e-3 keeps a 10x margin.
DEFAULT_TOLERANCE = 1e-3


def _graph_inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def random_feeds(model: onnx.ModelProto, seed: int = 0, batch: int = 2,
                 input_shapes: dict | None = None) -> dict:
    """Seeded inputs for every graph input. The first dimension, when symbolic, is ``batch``; any
    other symbolic dimension must come from ``input_shapes`` ({name: [dims]})."""
    rng = np.random.default_rng(seed)
    input_shapes = input_shapes or {}
    names = [vi.name for vi in _graph_inputs(model)]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise PassError(f"--input-shape names no graph input: {', '.join(unknown)} (inputs: {', '.join(names)})")
    feeds = {}
    for vi in _graph_inputs(model):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise PassError(f"cannot verify: input {vi.name!r} is not a tensor (use --verify off)")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if vi.name in input_shapes:
            shape = [int(d) for d in input_shapes[vi.name]]
        else:
            shape = []
            for axis, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape.append(d.dim_value)
                elif axis == 0:
                    shape.append(batch)
                else:
                    raise PassError(
                        f"cannot verify: input {vi.name!r} has a symbolic dimension "
                        f"{d.dim_param or '?'!r} at axis {axis}; give its shape "
                        f"(--input-shape {vi.name}=1,3,224,224) or use --verify off")
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, 10, shape).astype(dtype)
        else:
            raise PassError(f"cannot verify: input {vi.name!r} has type {dtype}; use --verify off")
    return feeds


class ReferenceRunner:
    """ONNX's reference evaluator on a model: slow, but it implements every operator version,
    so an original that onnxruntime no longer runs (e.g. BatchNormalization-6) is still a
    reference for verification. Used only for the original model (see ``Verifier``)."""

    def __init__(self, model: onnx.ModelProto, what: str, why: str):
        from onnx.reference import ReferenceEvaluator

        self.what = what
        try:
            self.sess = ReferenceEvaluator(model)
        except Exception as e:
            raise PassError(f"cannot verify {what}: onnxruntime cannot load it ({why}), nor can ONNX's "
                            f"reference evaluator ({model_io.one_line(e)}); use --verify off") from None
        self.output_names = list(self.sess.output_names)

    def __call__(self, feeds: dict) -> dict:
        try:
            outs = self.sess.run(None, feeds)
        except Exception as e:
            raise PassError(f"cannot verify {self.what}: ONNX's reference evaluator failed running it "
                            f"({model_io.one_line(e)}); use --verify off") from None
        return dict(zip(self.output_names, outs))

    def close(self):
        self.sess = None


def reference_runner(model: onnx.ModelProto, what: str):
    """onnxruntime where it loads the model, else ONNX's reference evaluator."""
    try:
        return Runner(model, what)
    except OrtLoadError as e:
        return ReferenceRunner(model, what, e.reason)


class OrtLoadError(PassError):
    """onnxruntime refused to load a model (``reason``: its first line)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class Runner:
    """An onnxruntime session on a model, optimizations off (we verify what the file computes)."""

    def __init__(self, model: onnx.ModelProto, what: str):
        self._tmp = None
        self.what = what
        try:
            if model_io.model_size(model) < model_io.EXTERNAL_DATA_THRESHOLD:
                self.sess = make_session(model.SerializeToString(), optimize=False)
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="rram-verify-")
                p = model_io.write_raw(model, Path(self._tmp.name) / "model.onnx")
                self.sess = make_session(str(p), optimize=False)
        except Exception as e:
            reason = model_io.one_line(e)
            raise OrtLoadError(f"cannot verify {what}: onnxruntime cannot load it ({reason}); use --verify off",
                               reason) from None
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def __call__(self, feeds: dict) -> dict:
        try:
            outs = self.sess.run(None, feeds)
        except Exception as e:
            raise PassError(f"cannot verify {self.what}: onnxruntime failed running it "
                            f"({model_io.one_line(e)}); use --verify off") from None
        return dict(zip(self.output_names, outs))

    def close(self):
        self.sess = None
        if self._tmp is not None:
            self._tmp.cleanup()


def difference(ref: np.ndarray, new: np.ndarray) -> float:
    """max|new - ref| / max|ref| (0 when equal; inf for a shape, NaN-pattern or integer mismatch)."""
    ref, new = np.asarray(ref), np.asarray(new)
    if ref.shape != new.shape or ref.dtype != new.dtype:
        return float("inf")
    if not np.issubdtype(ref.dtype, np.floating):
        return 0.0 if np.array_equal(ref, new) else float("inf")
    r, n = ref.astype(np.float64), new.astype(np.float64)
    nan_r, nan_n = np.isnan(r), np.isnan(n)
    if not np.array_equal(nan_r, nan_n):
        return float("inf")
    r, n = np.where(nan_r, 0, r), np.where(nan_n, 0, n)
    if not np.array_equal(np.isinf(r), np.isinf(n)) or not np.array_equal(r[np.isinf(r)], n[np.isinf(n)]):
        return float("inf")
    fin = np.isfinite(r)
    if not fin.any():
        return 0.0
    scale = float(np.max(np.abs(r[fin])))
    diff = float(np.max(np.abs(n[fin] - r[fin])))
    return diff / scale if scale > 0 else diff


class Verifier:
    """Reference outputs computed once; ``check(model)`` compares a rewritten model against them."""

    def __init__(self, reference: onnx.ModelProto, feed_sets: list[dict], tolerance: float):
        self.tolerance = float(tolerance)
        self.feed_sets = feed_sets
        run = reference_runner(reference, "the original model")
        try:
            self.ref = [run(f) for f in feed_sets]
        finally:
            run.close()
        for outs in self.ref:
            for name, v in outs.items():
                if np.issubdtype(np.asarray(v).dtype, np.floating) and np.isnan(v).any():
                    raise PassError(f"cannot verify: the original model's output {name!r} holds NaN "
                                    f"on the verification inputs")

    def check(self, model: onnx.ModelProto, label: str, map_feeds=None) -> dict:
        """Compare ``model`` with the reference. ``map_feeds(feeds)``: the reference's feeds as
        ``model`` takes them, when a pass changed what an input means (embed-normalization)."""
        run = Runner(model, f"the model after {label}")
        worst, worst_out, worst_set = 0.0, None, 0
        try:
            for k, (feeds, ref) in enumerate(zip(self.feed_sets, self.ref)):
                got = run(map_feeds(feeds) if map_feeds is not None else feeds)
                if set(got) != set(ref):
                    raise PassError(f"verification failed after {label}: outputs changed from "
                                    f"{sorted(ref)} to {sorted(got)}")
                for name in ref:
                    d = difference(ref[name], got[name])
                    if d > worst or worst_out is None:
                        worst, worst_out, worst_set = d, name, k
        finally:
            run.close()
        return {"max_rel_diff": worst, "output": worst_out, "input_set": worst_set,
                "tolerance": self.tolerance, "input_sets": len(self.feed_sets)}

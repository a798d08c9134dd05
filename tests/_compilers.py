"""Running an ONNX model in the real compilers of docs/deploying.md (OpenVINO's CPU plugin, Apache
TVM's Relax ONNX frontend for llvm) and in plain onnxruntime; shared by tests/test_compilers.py
and benchmarks/compilers_agreement.py. Each function returns the first output (the logits)."""
from __future__ import annotations

import numpy as np

# The OpenVINO settings that reproduce onnxruntime (docs/deploying.md): float32 inference (on a
# CPU with AVX512-BF16 the default is bf16) and no dynamic quantisation of activations (the
# default quantises the input of a layer with compressed int8 weights, the QDQ classifier Gemm,
# in groups of 32 on CPUs whose kernels support it).
OPENVINO_EXACT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


def onnxruntime_logits(path, x: np.ndarray, batch: int = 500) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def openvino_compile(path, config: dict | None = None):
    """OpenVINO's CPU plugin on ``path`` with ``config`` (None: OpenVINO's defaults)."""
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", dict(config or {}))


def openvino_logits(path, x: np.ndarray, config: dict | None = None, batch: int = 500,
                    compiled=None) -> np.ndarray:
    c = compiled if compiled is not None else openvino_compile(path, config)
    out = c.output(0)
    return np.concatenate([c({0: x[i:i + batch]})[out] for i in range(0, len(x), batch)])


def tvm_compile(path, input_shape):
    """Apache TVM: Relax ONNX frontend, target llvm (untuned), a VirtualMachine on the CPU;
    returns ``f(x) -> logits`` for inputs of exactly ``input_shape``."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(path))
    name = model.graph.input[0].name
    mod = from_onnx(model, shape_dict={name: list(input_shape)}, keep_params_in_input=False)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.LegalizeOps()(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())

    def run(x):
        out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, np.float32)))
        return (out[0] if isinstance(out, (list, tuple)) or not hasattr(out, "numpy") else out).numpy()
    return run


def tvm_logits(path, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Compiled for one batch size; a last partial batch is padded with zeros and cut off."""
    b = min(batch, len(x))
    run = tvm_compile(path, (b, *x.shape[1:]))
    outs = []
    for i in range(0, len(x), b):
        part = x[i:i + b]
        n = len(part)
        if n < b:
            part = np.concatenate([part, np.zeros((b - n, *x.shape[1:]), np.float32)])
        outs.append(run(part)[:n])
    return np.concatenate(outs)


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """argmax agreement, max |logit difference| and that relative to max |logit|."""
    diff = float(np.max(np.abs(got - ref)))
    return {"argmax_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))), "max_abs_diff": diff,
            "max_rel_diff": diff / float(np.max(np.abs(ref)))}

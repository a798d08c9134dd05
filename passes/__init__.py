"""ONNX graph passes for the deployment flow: 1x1 -> 3x3 padding, BatchNormalization folding
(with per-rate statistics), constant folding and cleanup, each checked numerically against the
original model in onnxruntime. Never imports ``toolchain``.

    import passes
    res = passes.run("model.onnx", ["fold-bn", "pad-1x1-to-3x3"], verify="end")
    onnx.save(res.model, "out.onnx")          # or passes.run_file(src, dst, names)
"""
from .catalog import STANDARD, available, resolve
from .errors import PassError
from .pipeline import VERIFY_MODES, Result, run, run_file
from .registry import Condition, Pass, PassResult, register, unregister
from .verify import DEFAULT_TOLERANCE


def list_passes() -> dict[str, str]:
    """{name: one-line description} of every registered pass."""
    return {name: p.help for name, p in available().items()}


__all__ = ["PassError", "Result", "run", "run_file", "list_passes", "register", "unregister",
           "available", "resolve", "STANDARD", "VERIFY_MODES", "DEFAULT_TOLERANCE", "Pass", "PassResult",
           "Condition"]

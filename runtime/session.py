"""onnxruntime session set-up, in one place: providers, threads, the shared CPU arena, and the
one ``make_session`` every session of the project is made with (engine, int8 preparation, export
check, pass verification)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import RuntimeInputError


def default_providers() -> list[str]:
    """CUDA where onnxruntime-gpu and a GPU are present (unless RRAM_PROVIDER=cpu), the CPU
    provider otherwise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    # onnxruntime-gpu lists CUDA whether or not this machine has a GPU: look for the driver too
    gpu = any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia"))
    if "CUDAExecutionProvider" in available and gpu and os.environ.get("RRAM_PROVIDER", "").lower() != "cpu":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


MAX_THREADS = 1024  # onnxruntime threads per session: more than any machine's cores (a typo, 1e12)


def check_threads(threads: int | None) -> None:
    """``--threads``: None or an integer 1..MAX_THREADS, else one line (onnxruntime raised a
    TypeError beyond C int range and started 100000 threads below it)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise RuntimeInputError(f"--threads {threads}: choose between 1 and {MAX_THREADS} (this machine has "
                                f"{default_threads()} cores)")


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


_ENV_ARENA: bool | None = None


def shared_cpu_arena(ort) -> bool:
    """Register one process-wide CPU arena for all sessions (once). A fresh session per chip then
    reuses the activation memory of the previous one instead of growing its own arena (page faults)
    during its first run: measured, that first run was ~5-8% slower than a warmed session's."""
    global _ENV_ARENA
    if _ENV_ARENA is None:
        try:
            ort.create_and_register_allocator(ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT), None)
            _ENV_ARENA = True
        except Exception as e:  # already registered (by the host application), or unsupported
            _ENV_ARENA = "already" in str(e).lower()
    return bool(_ENV_ARENA)


def make_session(model: bytes | str | os.PathLike, *, providers: list[str] | None = None,
                 threads: int | None = None, optimize: bool = True, shared_arena: bool = False):
    """An onnxruntime InferenceSession on serialised model bytes or a file, warnings silenced
    (unused per-rate initializers are by design). ``providers``: default the CPU provider.
    ``threads``: intra-op threads (inter-op 1); None leaves onnxruntime's default. ``optimize=False``
    runs the graph as written (verification). ``shared_arena``: CPU sessions share one arena."""
    import onnxruntime as ort

    check_threads(threads)
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    providers = list(providers or ["CPUExecutionProvider"])
    if shared_arena and providers == ["CPUExecutionProvider"] and shared_cpu_arena(ort):
        so.add_session_config_entry("session.use_env_allocators", "1")
    if isinstance(model, os.PathLike):
        model = str(model)
    return ort.InferenceSession(model, so, providers=providers)

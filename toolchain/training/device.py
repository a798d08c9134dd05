"""The torch device a command runs on, and whether bf16 has hardware on it."""
from __future__ import annotations

import platform

import torch

from ..errors import UserError


def resolve_device(device: str) -> str:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; CUDA must be available."""
    name = str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or another torch device, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here")
    return name


def bf16_is_slow_here(device_type: str) -> bool:
    """True on an x86 CPU with neither AMX nor AVX512-BF16: there bf16 autocast has no hardware
    and runs far slower than fp32 (measured on 2 AVX2 cores of an AMD EPYC, 2x-wide ResNet20 option B,
    batch 256, p = 0.3: 60 s per step in bf16 against 5.1 s in fp32; docs/training.md). False where this
    cannot be told (other CPUs, a torch without the probes), so nothing is claimed there."""
    if device_type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(p is None for p in probes):
        return False
    return not any(p() for p in probes)

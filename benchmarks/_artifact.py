"""The one artifact several benchmarks measure: the shared ResNet20 taken through export, the
standard passes and the `paper` quantizer, with the rram commands a user would type."""
from __future__ import annotations

from pathlib import Path


def build_resnet20_paper(checkpoint: str, folder: Path) -> Path | None:
    """Write FOLDER/art (and the ONNX files before it); the artifact folder, or None when a step
    failed (its one-line error is already printed)."""
    from toolchain.cli import main as rram

    for cmd in (["export", checkpoint, "--model", "resnet20", "--out", str(folder / "r20.onnx")],
                ["passes", str(folder / "r20.onnx"), str(folder / "r20.p.onnx"), "--passes", "standard"],
                ["quantize", str(folder / "r20.p.onnx"), str(folder / "art"), "--preset", "paper"]):
        if rram(cmd):
            return None
    return folder / "art"

"""Provenance of a results file (issue 36): what made its numbers, recorded under ``info.provenance``
(docs/results-format.md). Never in ``config``: that is the identity a resume and a merge compare, and
a newer numpy or another commit must not make an existing campaign unresumable.

- ``checkpoint_sha256``: the sha256 of the checkpoint file the artifact was exported from, as
  ``rram export`` recorded it in the ONNX metadata (``rram.checkpoint_sha256``; the passes and the
  quantizer carry it into the artifact); one value when every model of the artifact has the same,
  else {model name: value}; null for an artifact exported before it was recorded.
- ``git_commit`` and ``git_dirty`` (tracked files changed) of the checkout this code runs from; null
  when it is not a git checkout (an installed package).
- ``packages``: {name: version} of numpy, onnx, onnxruntime and torch, read with importlib.metadata
  (nothing imported: the runtime never imports torch); null for one not installed.
- ``python``: the interpreter's version.
- ``cpu``: the processor's model name and the instruction-set extensions that change which kernels
  onnxruntime and PyTorch run (AVX2, AVX-512, AVX-512 BF16, VNNI, AMX): int8 results differ between
  machines with and without VNNI, and timings between all of them.
- ``content_sha256`` (of an artifact, ``of_artifact``): per model, ``DeployedModel.content_sha256``:
  the sha256 of the deployed folder less what only says where it came from (the model.onnx with the
  ``metadata.PROVENANCE_ONLY_KEYS`` dropped, crossbars.json without its ``model_sha256``, and
  crossbars.npz). The model's file sha256 (in ``config``, the identity) changes when a newer
  ``rram export`` records more provenance; this one does not, so two campaigns can be shown to have
  run the same deployed model (for files written before it: rerun the fixed-mapping baseline on
  the rebuilt artifact and compare chip by chip, as docs/results/nonideal/rebuilt/ does).
- ``pipeline_config_sha256``: when ``rram pipeline`` runs the command, the sha256 of its config's
  text (the file and its ``base`` chain, as the report quotes it), passed in the environment variable
  ``RRAM_PIPELINE_CONFIG_SHA256``; absent otherwise.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

from .metadata import CHECKPOINT_SHA256_KEY

PACKAGES = ("numpy", "onnx", "onnxruntime", "torch")
PIPELINE_ENV = "RRAM_PIPELINE_CONFIG_SHA256"
ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) holding runtime/


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this code runs from, or (None, None) outside one."""
    if not (ROOT / ".git").exists():  # a folder in a clone, a file in a worktree
        return None, None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu() -> str:
    """This machine's processor: its model name and which of ``CPU_FLAGS`` it has (Linux reads
    /proc/cpuinfo; elsewhere the platform's processor name alone)."""
    return cpu_of(Path("/proc/cpuinfo"))


def cpu_of(cpuinfo: Path) -> str:
    """``cpu()`` read from a /proc/cpuinfo file (its first processor's model name and flags)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if name and flags:
                break
    except OSError:
        return name
    present = [f for f in CPU_FLAGS if f in flags]
    return f"{name} ({', '.join(present) if present else 'none of ' + ', '.join(CPU_FLAGS)})"


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def checkpoint_sha256(model_metadata: dict[str, dict[str, str]]) -> str | dict | None:
    """The checkpoint sha256 of an artifact's models ({model name: ONNX metadata})."""
    found = {name: meta.get(CHECKPOINT_SHA256_KEY) or None for name, meta in model_metadata.items()}
    values = set(found.values())
    return values.pop() if len(values) == 1 else found


def provenance(model_metadata: dict[str, dict[str, str]]) -> dict:
    """The ``info.provenance`` of a results file on an artifact whose models carry this metadata."""
    commit, dirty = git_state()
    out = {"checkpoint_sha256": checkpoint_sha256(model_metadata), "git_commit": commit, "git_dirty": dirty,
           "packages": package_versions(), "python": platform.python_version(), "cpu": cpu()}
    pipeline = os.environ.get(PIPELINE_ENV)
    if pipeline:
        out["pipeline_config_sha256"] = pipeline
    return out


def of_artifact(artifact) -> dict:
    """``provenance`` of a loaded ``runtime.artifact.Artifact``, with each model's ``content_sha256``."""
    out = provenance({name: model.metadata for name, model in artifact.models.items()})
    out["content_sha256"] = {name: model.content_sha256() for name, model in artifact.models.items()}
    return out

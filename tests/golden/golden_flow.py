"""The golden flow: the shared ResNet20 through export, passes, quantize and two small validate
campaigns (fp32, int8), run through the real CLI. ``python tests/golden/golden_flow.py --freeze``
records what it gives (hashes of the written files, the quantizer's report and the results files
less their timing) beside this file; tests/test_golden.py runs the same flow and demands the same bytes and numbers.

Frozen before the architecture refactor (issue 10) to prove that it changed no behaviour. Re-freeze
only for an intended change of output, and say so in the commit."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import platform
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FILES = ("r20.onnx", "r20.passes.onnx", "art/model.onnx", "art/crossbars.json", "art/crossbars.npz")
VALIDATE = ["--sa1", "0,0.1,0.2", "--runs", "2", "--images", "200", "--seed", "0"]
CHECKPOINT_NAME = "resnet20-12fca82f.th"
VOLATILE = ("timing", "info")  # wall-clock figures and the paths given on the command line


def cpu_int8_kind() -> str:
    """onnxruntime's int8 kernels add exactly with VNNI and saturate without (docs/runtime.md):
    int8 numbers are recorded per kind of CPU."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return platform.machine().lower()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "x86-vnni" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "x86-avx2"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# report.json is compared field by field, not hashed: its SQNR figures come from float32 dot
# products (np.vdot in runtime/quantize/convert.py) whose summation order differs between CPU kinds
# (AVX2 and AVX-512 BLAS kernels), so they agree closely but not bit for bit (a hash of them
# rounded to 1e-6 dB failed across the two). On this model a float32 SQNR is within 3e-8 relative
# of its float64 value, in either summation order tried (measured on the golden weights with an
# int8 per-column quantisation). REPORT_REL_TOL (4e-4 dB on a 42 dB SQNR) is 300x above that and
# below any real change of the quantizer (1e-3 dB or more). The model and crossbar bytes stay
# hashed exact.
REPORT_REL_TOL = 1e-5


def report_less_timing(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("seconds")  # the only wall-clock figure in report.json
    return doc


def report_differences(got, want, where: str = "report") -> list[str]:
    """Where ``got`` differs from ``want``: floats beyond REPORT_REL_TOL, anything else at all."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in sorted(want) for d in report_differences(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, not {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in report_differences(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if math.isclose(got, want, rel_tol=REPORT_REL_TOL) else [f"{where}: {got!r}, not {want!r}"]
    return [] if (type(got) is type(want) and got == want) else [f"{where}: {got!r}, not {want!r}"]


def stable(results: Path) -> dict:
    doc = json.loads(results.read_text())
    return {k: v for k, v in doc.items() if k not in VOLATILE}


def run_flow(work: Path, checkpoint: Path, data: Path) -> dict:
    """Runs the flow in ``work``; returns {"hashes": ..., "fp32": results, "int8": results}."""
    from toolchain.cli import main

    def rram(*args) -> None:
        code = main([str(a) for a in args])
        if code:
            raise RuntimeError(f"rram {' '.join(map(str, args))} exited {code}")

    w = work
    # export records the checkpoint's file name (rram.source; before issue 33 the path it was
    # given): a copy under the same name, as the golden files were frozen with
    shutil.copyfile(checkpoint, w / CHECKPOINT_NAME)
    with contextlib.chdir(w):
        rram("export", CHECKPOINT_NAME, "--model", "resnet20", "--out", w / "r20.onnx")
    rram("passes", w / "r20.onnx", w / "r20.passes.onnx", "--passes", "standard")
    rram("quantize", w / "r20.passes.onnx", w / "art", "--preset", "paper")
    rram("validate", w / "art", *VALIDATE, "--data", data, "--out", w / "fp32.json")
    rram("validate", w / "art", *VALIDATE, "--precision", "int8", "--data", data, "--out", w / "int8.json")
    hashes = {name: sha256(w / name) for name in FILES}
    return {"hashes": hashes, "report": report_less_timing(w / "art/report.json"),
            "fp32": stable(w / "fp32.json"), "int8": stable(w / "int8.json")}


def golden_paths() -> dict[str, Path]:
    return {"hashes": HERE / "hashes.json", "report": HERE / "report.json", "fp32": HERE / "validate-fp32.json",
            "int8": HERE / f"validate-int8.{cpu_int8_kind()}.json"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--freeze", action="store_true", help="write the golden files beside this script")
    ap.add_argument("--work", default=None, help="folder for the flow's outputs (default: a temporary one)")
    args = ap.parse_args()
    import tempfile

    sys.path.insert(0, str(ROOT))
    shared = ROOT.parent / "shared"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        got = run_flow(work, shared / "models" / "resnet20-12fca82f.th", shared / "data" / "cifar10-jpeg")
    for key, path in golden_paths().items():
        text = json.dumps(got[key], indent=1, sort_keys=True) + "\n"
        if args.freeze:
            path.write_text(text)
            print(f"froze {path.relative_to(ROOT)}")
        elif key == "report":
            same = path.exists() and not report_differences(got[key], json.loads(path.read_text()))
            print(f"{path.name}: {'same (to its tolerance)' if same else 'DIFFERENT'}")
        else:
            print(f"{path.name}: {'same' if path.exists() and path.read_text() == text else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the study's trainings (``rram pipeline CONFIG --until train``) on a GPU machine, all at once,
under a wall-clock deadline, and pack their run folders for the trip back; plus GPU inference
figures for docs/runtime.md. Used through the project's device tool (one prepared call); the rest
of each pipeline (recalibrate .. report) then runs where the data and CPUs are:
``rram pipeline CONFIG`` picks the copied-in training up (``rram train --auto-resume``).

Two halves:

    python benchmarks/study_on_gpu.py pack  [--out .gpu]          # here: data + weights, one file
    python benchmarks/study_on_gpu.py run   --pack .gpu --results DIR --deadline SECONDS CONFIG...

``pack`` writes the CIFAR-10 JPEG files (their bytes, not decoded: 53 MB instead of 184) and the
pretrained checkpoint into one .npz, because a device call carries at most 64 MiB. ``run`` restores
them under the same absolute paths as here (``/work/shared/...``), so a fine-tune's recorded
``init`` path matches and ``--auto-resume`` accepts the run here; decodes the images once into the
cache; starts one ``rram pipeline --until train`` process per config (small models leave a GPU
mostly idle, so several share it); at the deadline interrupts the unfinished ones (each keeps its
last finished epoch, resumable); and packs the logs and every run folder into at most 4 tar files
of at most 15 MiB, in config order (the device tool returns 8 files, 64 MiB in all). A finished
run's ``last.pt`` loses its optimizer buffers on the way (a finished run needs none, and they
double the size); an unfinished run keeps them, so that it can be resumed anywhere. ``model.pt``
is not shipped: it holds last.pt's weights again, and `rram pipeline` (its `rram train
--auto-resume`) rebuilds it here (a run of 2026-12-01 lost a trained model to that duplicate).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STUDY_SHARED", "/work/shared"))  # the same absolute paths as here
DATA = SHARED / "data" / "cifar10-jpeg"
WEIGHTS = SHARED / "models"
CHUNK = 15 * 2**20
MAX_TARS = 4  # the device tool returns 8 files, 64 MiB in all


def pack(out: Path, test_every: int = 1) -> None:
    """``test_every`` k > 1 keeps every k-th test image: the trainings' per-epoch figure only (the
    trained weights do not depend on it), for when the run folders must travel too."""
    paths = sorted(p for p in DATA.rglob("*") if p.is_file())
    paths = [p for i, p in enumerate(paths) if p.relative_to(DATA).parts[0] != "test" or i % test_every == 0]
    blobs = [p.read_bytes() for p in paths]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    weights = sorted(p for p in WEIGHTS.glob("*.th"))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "pack.tmp.npz"
    np.savez(tmp, names=np.array([str(p.relative_to(DATA)).encode() for p in paths]),
             blob=np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets=offsets)
    for p in weights:  # checkpoints travel as they are
        (out / p.name).write_bytes(p.read_bytes())
    tmp.rename(out / "cifar10-jpeg.npz")
    print(f"packed {len(paths)} images ({offsets[-1] / 2**20:.1f} MiB) and {len(weights)} checkpoint(s) into {out}")


def unpack(src: Path) -> None:
    with np.load(src / "cifar10-jpeg.npz") as z:
        names, blob, offsets = z["names"], z["blob"], z["offsets"]
    for i, name in enumerate(names):
        p = DATA / name.decode()
        if p.is_file() and p.stat().st_size == offsets[i + 1] - offsets[i]:
            continue  # already there (a second call on a warm machine): keep its cache key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob[offsets[i]:offsets[i + 1]].tobytes())
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    for w in src.glob("*.th"):
        (WEIGHTS / w.name).write_bytes(w.read_bytes())
    print(f"unpacked {len(names)} images into {DATA}", flush=True)


def gpu_inference_figures(results: Path) -> None:
    """Images/s of the shared ResNet20 on the test split, fp32 and bf16 (PyTorch, CUDA)."""
    import torch

    from toolchain.checkpoints import load_checkpoint
    from toolchain.data import load_split, normalize, to_float_nchw

    out = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    try:
        import onnxruntime as ort

        out["onnxruntime"] = ort.__version__
        out["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError as e:
        out["onnxruntime"] = f"not importable: {e}"
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        ckpt = load_checkpoint(str(next(WEIGHTS.glob("*.th"))), model="resnet20")
        model = ckpt.build().cuda().eval()
        test = load_split(str(DATA), "test", progress=False)
        x = normalize(to_float_nchw(torch.from_numpy(test.images)).cuda(), ckpt.normalization)
        y = torch.from_numpy(test.labels).cuda()
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                for _ in range(3):
                    model(x[:1000])
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                reps = 20
                for _ in range(reps):
                    correct = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
                                  for i in range(0, len(y), 1000))
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            out[name] = {"images_per_s": round(reps * len(y) / dt), "accuracy": correct / len(y),
                         "batch": 1000}
    (results / "gpu-inference.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out), flush=True)


def run(args) -> int:
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    logs = ROOT / "out" / "study-gpu-logs"  # packed with the runs: the device returns 8 files
    logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    unpack(Path(args.pack))
    env = dict(os.environ, RRAM_DATA=str(DATA), RRAM_WEIGHTS=str(WEIGHTS), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("RRAM_CACHE", "/tmp/rram-cache")
    # decode once (both splits), so that the trainings start from the cache together
    subprocess.run([sys.executable, "-c", "from toolchain.data import load_split\n"
                    f"for s in ('train', 'test'): load_split({str(DATA)!r}, s, progress=False)"],
                   env=env, check=True, cwd=ROOT)
    print(f"decoded into {env['RRAM_CACHE']} at {time.monotonic() - start:.0f} s", flush=True)
    if args.figures:
        try:  # before the trainings, so that they do not share the GPU with it
            gpu_inference_figures(logs)
        except Exception as e:  # figures are a bonus: never lose the trainings for them
            print(f"gpu inference figures failed: {e!r}", flush=True)
    procs = {}
    for cfg in args.configs:
        name = Path(cfg).stem
        log = open(logs / f"{Path(cfg).parent.name}-{name}.log", "w")  # noqa: SIM115 (closed below)
        procs[cfg] = (subprocess.Popen([sys.executable, "-m", "toolchain", "pipeline", cfg, "--until", "train"],
                                       env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), log)
    status = {}
    while time.monotonic() - start < args.deadline and any(p.poll() is None for p, _ in procs.values()):
        time.sleep(2)
    for p, _ in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)  # KeyboardInterrupt: the last finished epoch is kept
    for cfg, (p, log) in procs.items():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
        status[cfg] = p.returncode
    print(f"trainings stopped at {time.monotonic() - start:.0f} s: {status}", flush=True)
    pack_runs(args.configs, status, logs, results)
    return 0


def _run_folder(cfg: str) -> Path:
    sys.path.insert(0, str(ROOT))
    from toolchain.pipeline.config import load_config

    os.environ.setdefault("RRAM_DATA", str(DATA))
    return load_config(cfg).out


def _arcname(p: Path) -> str:
    """Paths inside the repository stay relative to it (unpack with `tar -xf` in the checkout)."""
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p).lstrip("/")


def pack_runs(configs: list[str], status: dict, logs: Path, results: Path) -> None:
    """The logs, then every run folder (config order), first-fit into <= MAX_TARS tars of <= CHUNK."""
    from toolchain.checkpoints import load_checkpoint, save_checkpoint

    summary = {}
    files = []  # (arcname, bytes), in priority order
    for cfg in configs:
        run = _run_folder(cfg)
        log = run / "train" / "log.json"
        epochs = json.loads(log.read_text())["epochs"] if log.is_file() else []
        summary[cfg] = {"exit": status.get(cfg), "epochs_done": len(epochs),
                        "last": epochs[-1] if epochs else None}
    (logs / "runs-summary.json").write_text(json.dumps(summary, indent=2))
    files += [(_arcname(p), p.read_bytes()) for p in sorted(logs.iterdir()) if p.is_file()]
    for cfg in configs:
        run = _run_folder(cfg)
        last = run / "train" / "last.pt"
        for p in sorted(run.rglob("*"), key=lambda q: q.stat().st_size if q.is_file() else 0):
            if not p.is_file():
                continue
            if p == run / "train" / "model.pt" and last.is_file():
                continue  # the same weights as last.pt: `rram train --auto-resume` rebuilds it here
            data = p.read_bytes()
            if p == last and status.get(cfg) == 0:  # finished: the optimizer buffers are not needed
                ck = load_checkpoint(p)
                ck.meta["train_state"] = {"epoch": ck.meta["train_state"]["epoch"]}
                slim = run / "train" / "last.slim.pt"
                save_checkpoint(ck, slim)
                data = slim.read_bytes()
                slim.unlink()
            files.append((_arcname(p), data))
    bins: list[list] = []
    left_out = []
    for name, data in files:
        for b in bins:
            if sum(len(d) + 1024 for _, d in b) + len(data) + 1024 <= CHUNK:
                b.append((name, data))
                break
        else:
            if len(bins) < MAX_TARS and len(data) + 1024 <= CHUNK:
                bins.append([(name, data)])
            else:
                left_out.append(name)
    for i, b in enumerate(bins):
        with tarfile.open(results / f"runs-{i}.tar", "w") as tar:
            for name, data in b:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    print(f"packed {sum(len(b) for b in bins)} files into {len(bins)} tars; left out: {left_out}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", default=str(ROOT / ".gpu"))
    p.add_argument("--test-every", type=int, default=1, help="keep every k-th test image")
    r = sub.add_parser("run")
    r.add_argument("--pack", default=str(ROOT / ".gpu"))
    r.add_argument("--results", required=True)
    r.add_argument("--deadline", type=float, required=True, help="seconds from the start")
    r.add_argument("--no-figures", dest="figures", action="store_false",
                   help="skip the GPU inference figures (already measured)")
    r.add_argument("configs", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        pack(Path(args.out), args.test_every)
        return 0
    sys.path.insert(0, str(ROOT))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

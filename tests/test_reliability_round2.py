"""Bad input and resources, second round (issue 33): each case goes through the CLI entry point
(``toolchain.cli.main`` or an ``rram`` subprocess) and fails without its fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from toolchain.checkpoints import Checkpoint, save_checkpoint
from toolchain.data import CIFAR10_NORM
from toolchain.models import ModelSpec, build_model

from conftest import ROOT, make_cifar, one_line_error, run_cli

HERE = Path(__file__).resolve().parent


def rram_subprocess(*argv, timeout=120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    return subprocess.run([sys.executable, "-m", "toolchain", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=kw.get("cwd", ROOT))


# ------------------------------------------------------------------ 1. no code from a checkpoint

def _checkpoint_naming(tmp_path: Path, factory: str) -> Path:
    """A valid own-format checkpoint of a tiny built-in model whose ``model.name`` says ``factory``."""
    spec = ModelSpec("resnet20", width=0.25)
    ckpt = Checkpoint(spec, CIFAR10_NORM, build_model(spec).state_dict(), {}, {})
    path = save_checkpoint(ckpt, tmp_path / "ck.pt")
    obj = torch.load(path, weights_only=True)
    obj["model"] = {"name": factory}
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("factory", ["sys:exit", "tempfile:mkdtemp"])
def test_a_factory_named_by_the_checkpoint_alone_is_not_called(tmp_path, capsys, factory, monkeypatch):
    """`sys:exit` made `rram export` exit 0 with no output; `tempfile:mkdtemp` made a folder."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ck = _checkpoint_naming(tmp_path, factory)
    code, out, err = run_cli(capsys, "export", ck, "--out", tmp_path / "m.onnx")
    assert code == 2 and f"--model {factory}" in one_line_error(err)
    assert not (tmp_path / "m.onnx").exists() and not list((tmp_path / "tmp").iterdir())


def test_os_abort_in_a_checkpoint_does_not_abort(tmp_path):
    ck = _checkpoint_naming(tmp_path, "os:abort")
    r = rram_subprocess("export", ck, "--out", tmp_path / "m.onnx")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "pass --model os:abort" in one_line_error(r.stderr)


def test_a_factory_other_than_the_recorded_one_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # own_models.py
    ck = _checkpoint_naming(tmp_path, "sys:exit")
    for model in ("own_models:tiny_cnn", "resnet20"):
        code, _, err = run_cli(capsys, "export", ck, "--model", model, "--out", tmp_path / "m.onnx")
        assert code == 2 and f"holds a sys:exit, not a {model}" in one_line_error(err)
    make_cifar(tmp_path / "data", per_batch=8, test=16)
    code, _, err = run_cli(capsys, "eval", ck, "--data", tmp_path / "data", "--no-cache")
    assert code == 2 and "--model sys:exit" in one_line_error(err)


def test_the_recorded_factory_is_built_with_model_and_builtins_without(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    import own_models

    spec = ModelSpec("own_models:tiny_cnn")
    ck = save_checkpoint(Checkpoint(spec, CIFAR10_NORM, own_models.tiny_cnn().state_dict(), {}, {}),
                         tmp_path / "own.pt")
    code, _, err = run_cli(capsys, "export", ck, "--out", tmp_path / "a.onnx")
    assert code == 2 and "pass --model own_models:tiny_cnn" in one_line_error(err)
    code, _, err = run_cli(capsys, "export", ck, "--model", "own_models:tiny_cnn", "--out", tmp_path / "a.onnx")
    assert code == 0, err
    spec = ModelSpec("resnet20", width=0.25)
    ck = save_checkpoint(Checkpoint(spec, CIFAR10_NORM, build_model(spec).state_dict(), {}, {}), tmp_path / "b.pt")
    code, _, err = run_cli(capsys, "export", ck, "--out", tmp_path / "b.onnx")
    assert code == 0, err


# ------------------------------------------------------------------ 2. numbers of a chip-calibration file

@pytest.fixture(scope="module")
def bn_art(make_bn_artifact):
    return make_bn_artifact()


@pytest.fixture(scope="module")
def cifar(coloured_cifar):
    return coloured_cifar(test=32)


@pytest.fixture(scope="module")
def measured_chip(bn_art, cifar, tmp_path_factory):
    """A fault map and its chip-calibration file written by `rram calibrate`."""
    from runtime.artifact import DeployedModel
    from runtime.faults import run_seed, sample_chip, save_fault_map
    from toolchain.cli import main

    tmp = tmp_path_factory.mktemp("chip")
    cmap = DeployedModel.load(bn_art).cmap
    save_fault_map(tmp / "chip.npz", cmap, sample_chip(cmap.cell_count(), 0.2, 0.0, run_seed(7, 0.2, 0.0, 0)))
    assert main(["calibrate", str(bn_art), "--fault-map", str(tmp / "chip.npz"), "--data", str(cifar),
                 "--no-cache", "--calibrate", "8", "--out", str(tmp / "cal")]) == 0
    return tmp / "chip.npz", tmp / "cal" / "chip-calibration.json"


@pytest.mark.parametrize("key, value, message", [
    ("scale", 0, "must be non-zero"),
    ("scale", float("nan"), "not a finite number"),
    ("scale", float("inf"), "not a finite number"),
    ("scale", 1e30, "|scale| <= 1e+06"),
    ("scale", 10**400, "not a finite number"),
    ("scale", "1.0", "list of numbers"),
    ("scale", True, "list of numbers"),
    ("offset", float("-inf"), "not a finite number"),
    ("offset", None, "list of numbers"),
    ("calibrate", 0, "'calibrate'"),
    ("calibrate", "8", "'calibrate'"),
])
def test_an_edited_chip_calibration_file_is_refused(bn_art, cifar, measured_chip, tmp_path, capsys, key, value,
                                                    message):
    import json

    fault_map, good = measured_chip
    doc = json.loads(good.read_text())
    if key == "calibrate":
        doc[key] = value
    else:
        doc["layers"][-1][key][1] = value
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(doc))  # NaN and Infinity as Python's json writes (and reads) them
    code, _, err = run_cli(capsys, "validate", bn_art, "--data", cifar, "--no-cache", "--fault-map", fault_map,
                           "--chip-calibration", bad, "--out", tmp_path / "r.json")
    assert code == 2 and message in one_line_error(err)
    assert not (tmp_path / "r.json").exists()
    code, _, err = run_cli(capsys, "validate", bn_art, "--data", cifar, "--no-cache", "--fault-map", fault_map,
                           "--chip-calibration", good, "--out", tmp_path / "r.json")
    assert code == 0, err


# ------------------------------------------------------------------ 4. zip bombs

def _bomb(src: Path, dst: Path, member: str, *, data_bytes: int = 64 << 20, header_only: bool = False) -> Path:
    """``src`` (an .npz) with ``member`` replaced by a uint8 array of ``data_bytes`` zeros
    (deflated: a few hundred KB on disk), or (``header_only``) by a header that describes that
    many bytes over a payload of 16."""
    import zipfile

    arrays = dict(np.load(src))
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrays.items():
            if name != member:
                with zf.open(f"{name}.npy", "w") as fh:
                    np.lib.format.write_array(fh, a)
                continue
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (data_bytes,)})
                chunk = bytes(1 << 20)
                for _ in range(0 if header_only else data_bytes >> 20):
                    fh.write(chunk)
                if header_only:
                    fh.write(bytes(16))
    return dst


@pytest.mark.parametrize("header_only", [False, True])
def test_a_fault_map_zip_bomb_is_refused_before_it_is_read(bn_art, cifar, measured_chip, tmp_path, capsys,
                                                           header_only):
    fault_map, _ = measured_chip
    bomb = _bomb(fault_map, tmp_path / "bomb.npz", "L0000", header_only=header_only)
    assert bomb.stat().st_size < 1 << 20
    code, _, err = run_cli(capsys, "validate", bn_art, "--data", cifar, "--no-cache", "--fault-map", bomb,
                           "--out", tmp_path / "r.json")
    assert code == 2 and ("describes" if header_only else "declares") in one_line_error(err)
    assert "refused before reading it" in err and "'L0000'" in err


def test_a_crossbars_npz_zip_bomb_is_refused_before_it_is_read(bn_art, cifar, tmp_path, capsys):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(bn_art, art)
    npz = art / "crossbars.npz"
    _bomb(npz, tmp_path / "bomb.npz", "L0001.levels").replace(npz)
    code, _, err = run_cli(capsys, "validate", art, "--data", cifar, "--no-cache", "--sa1", "0.1", "--runs", "1",
                           "--out", tmp_path / "r.json")
    assert code == 2 and "entry 'L0001.levels' declares" in one_line_error(err)
    _bomb(bn_art / "crossbars.npz", tmp_path / "b2.npz", "L0000.scales", header_only=True).replace(npz)
    code, _, err = run_cli(capsys, "validate", art, "--data", cifar, "--no-cache", "--sa1", "0.1", "--runs", "1",
                           "--out", tmp_path / "r.json")
    assert code == 2 and "entry 'L0000.scales' describes" in one_line_error(err)


# ------------------------------------------------------------------ 6. SIGTERM releases OUT.lock

def test_sigterm_releases_the_results_lock(bn_art, cifar, tmp_path):
    import signal
    import time

    out = tmp_path / "r.json"
    lock = tmp_path / "r.json.lock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    proc = subprocess.Popen([sys.executable, "-m", "toolchain", "validate", str(bn_art), "--data", str(cifar),
                             "--no-cache", "--sa1", "0.1", "--runs", "1000000", "--threads", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists(), proc.communicate(timeout=5)
        time.sleep(1.0)  # well into the campaign
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not lock.exists()


# ------------------------------------------------------------------ 5. a Ray address that does not answer

def _validate_on_ray(capsys, art, data, tmp_path, *ray_arg):
    import time

    t0 = time.monotonic()
    code, _, err = run_cli(capsys, "validate", art, "--data", data, "--no-cache", "--sa1", "0.1", "--runs", "2",
                           *ray_arg, "--out", tmp_path / "r.json")
    return code, err, time.monotonic() - t0


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_closed_ray_address_is_refused_at_once(bn_art, cifar, tmp_path, capsys, monkeypatch, how):
    pytest.importorskip("ray")
    if how == "flag":
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        code, err, seconds = _validate_on_ray(capsys, bn_art, cifar, tmp_path, "--ray=127.0.0.1:1")
    else:
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
        code, err, seconds = _validate_on_ray(capsys, bn_art, cifar, tmp_path, "--ray")
    assert code == 2 and "cannot reach a Ray cluster at 127.0.0.1:1" in one_line_error(err)
    assert seconds < 30 and not (tmp_path / "r.json").exists()


def test_a_ray_address_that_never_answers_is_refused_within_the_timeout(bn_art, cifar, tmp_path):
    """A listening port that is no Ray cluster: ray.init retried for minutes. In a subprocess (the
    connection left waiting in its thread must not outlive a test process), the timeout set to 3 s."""
    import socket

    pytest.importorskip("ray")
    code = ("import sys; import runtime.ray_executor as rx; rx.CONNECT_TIMEOUT_S = 3; "
            "from toolchain.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        argv = ["validate", str(bn_art), "--data", str(cifar), "--no-cache", "--sa1", "0.1", "--runs", "2",
                f"--ray=127.0.0.1:{port}", "--out", str(tmp_path / "r.json")]
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                           env=env, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert f"no Ray cluster answered at 127.0.0.1:{port} within 3 s" in one_line_error(r.stderr)


# ------------------------------------------------------------------ 7. hashes that describe content

def test_identical_builds_in_two_folders_have_one_model_hash(tmp_path, capsys):
    """`rram.source` recorded the export's checkpoint path: two folders, two model hashes, two
    campaigns that could not be merged."""
    import json
    import shutil

    torch.manual_seed(0)
    spec = ModelSpec("resnet20", width=0.25)
    first = save_checkpoint(Checkpoint(spec, CIFAR10_NORM, build_model(spec).state_dict(), {}, {}),
                            tmp_path / "a" / "ck.pt")
    (tmp_path / "b").mkdir()
    shutil.copyfile(first, tmp_path / "b" / "ck.pt")
    hashes, outputs = [], []
    for run in ("a", "b"):
        d = tmp_path / run
        code, out, err = run_cli(capsys, "export", d / "ck.pt", "--out", d / "m.onnx", "--json")
        assert code == 0, err
        outputs.append(json.loads(out))
        assert run_cli(capsys, "passes", d / "m.onnx", d / "p.onnx", "--passes", "standard")[0] == 0
        assert run_cli(capsys, "quantize", d / "p.onnx", d / "art", "--preset", "paper")[0] == 0
        hashes.append(json.loads((d / "art" / "report.json").read_text())["model_sha256"])
    assert (tmp_path / "a" / "m.onnx").read_bytes() == (tmp_path / "b" / "m.onnx").read_bytes()
    assert hashes[0] == hashes[1]
    for run, out in zip("ab", outputs):  # the checkpoint's path: in the command's output
        assert out["source"] == str((tmp_path / run / "ck.pt").resolve())


# ------------------------------------------------------------------ 8. tracebacks and silent clamps -> one line

@pytest.mark.parametrize("threads", [10**12, 1025])
def test_an_absurd_thread_count_is_one_line(bn_art, cifar, tmp_path, capsys, threads):
    """10**12 was a TypeError traceback from onnxruntime; 100000 started that many threads."""
    code, _, err = run_cli(capsys, "validate", bn_art, "--data", cifar, "--no-cache", "--sa1", "0.1", "--runs", "1",
                           "--threads", threads, "--out", tmp_path / "r.json")
    assert code == 2 and f"--threads {threads}: choose between 1 and 1024" in one_line_error(err)
    assert not (tmp_path / "r.json").exists()


def test_a_plot_title_that_is_not_mathtext_is_one_line(bn_art, cifar, tmp_path, capsys):
    res = tmp_path / "r.json"
    assert run_cli(capsys, "validate", bn_art, "--data", cifar, "--no-cache", "--sa1", "0.1", "--runs", "1",
                   "--out", res)[0] == 0
    code, _, err = run_cli(capsys, "plot", res, "--title", r"a $\frac{ $", "--out", tmp_path / "f.png")
    assert code == 2 and "is not valid matplotlib mathtext" in one_line_error(err)
    assert not (tmp_path / "f.png").exists()
    code, _, err = run_cli(capsys, "plot", res, "--title", r"$\alpha$ chips, 5\$", "--out", tmp_path / "f.png")
    assert code == 0, err


def test_calibration_images_beyond_the_split_are_refused(bn_art, cifar, measured_chip, tmp_path, capsys):
    """`rram calibrate --precision int8 --range-images 1000000000000` (then --calibration-images) was
    clamped to the whole split (minutes on CIFAR-10) without a word."""
    fault_map, _ = measured_chip
    code, _, err = run_cli(capsys, "calibrate", bn_art, "--fault-map", fault_map, "--data", cifar, "--no-cache",
                           "--calibrate", "8", "--precision", "int8", "--range-images", "1000000000000",
                           "--out", tmp_path / "cal")
    assert code == 2 and "--range-images 1000000000000: the training split has" in one_line_error(err)
    assert not (tmp_path / "cal").exists()

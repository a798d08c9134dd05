"""Bad input on the runtime side (issue 11): each case runs the real command through the CLI entry
point and checks exit status 2, ONE line on stderr (``rram: error: ...``) and that nothing was
deleted, overwritten or half-written."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from toolchain.cli import main

from _runtime_helpers import export_torch, tiny_model
from conftest import ROOT, one_line_error, run_cli

# ------------------------------------------------------------------ helpers

def tree(root: Path) -> dict:
    """Every file and folder under root, files with their sha256: "nothing deleted or overwritten"."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("float") / "m.onnx"
    export_torch(tiny_model(), torch.zeros(1, 3, 32, 32), path)
    return path


# ------------------------------------------------------------------ 1. quantize --force

def test_force_never_replaces_the_folder_holding_the_input(float_onnx, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "m.onnx").write_bytes(float_onnx.read_bytes())
    (work / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "quantize", work / "m.onnx", work, "--force")
    line = one_line_error(err)
    assert code == 2 and str(work) in line and "input" in line
    # the case: OUT is the current directory ("."), which holds the input
    monkeypatch.chdir(work)
    code, _, err = run_cli(capsys, "quantize", "m.onnx", ".", "--force")
    assert code == 2 and "refusing to replace ." in one_line_error(err)
    # a parent of the current directory, the input elsewhere
    sub = work / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    code, _, err = run_cli(capsys, "quantize", float_onnx, "..", "--force")
    assert code == 2 and "current directory" in one_line_error(err)
    sub.rmdir()
    assert tree(tmp_path) == before  # nothing deleted, no "..xxxx.old" folder left


def test_force_replaces_only_a_previous_artifact(float_onnx, tmp_path, capsys):
    out = tmp_path / "art"
    code, _, err = run_cli(capsys, "quantize", float_onnx, out)
    assert code == 0, err
    (out / "results.json").write_text("a campaign")  # no longer only the artifact's own files
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "quantize", float_onnx, out, "--force")
    line = one_line_error(err)
    assert code == 2 and "not a previous artifact" in line and "results.json" in line
    assert tree(tmp_path) == before
    other = tmp_path / "other"  # a folder without a conductance map
    other.mkdir()
    (other / "model.onnx").write_text("not an artifact")
    code, _, err = run_cli(capsys, "quantize", float_onnx, other, "--force")
    assert code == 2 and "no crossbars.json" in one_line_error(err)
    assert (other / "model.onnx").read_text() == "not an artifact"
    (out / "results.json").unlink()
    code, _, err = run_cli(capsys, "quantize", float_onnx, out, "--force", "--bits-per-cell", "4")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "other"]


def test_failed_replacement_leaves_the_old_artifact_and_no_temporary_folder(float_onnx, tmp_path, capsys,
                                                                            monkeypatch):
    out = tmp_path / "art"
    assert run_cli(capsys, "quantize", float_onnx, out)[0] == 0
    before = tree(tmp_path)
    real = os.replace

    def fail_swap_in(src, dst):  # the new folder cannot be renamed into place
        if str(src).endswith(".tmp") and Path(dst) == out:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_swap_in)
    code, _, err = run_cli(capsys, "quantize", float_onnx, out, "--force", "--bits-per-cell", "4")
    line = one_line_error(err)
    assert code == 2 and f"cannot write {out}" in line
    assert tree(tmp_path) == before


def test_full_disk_in_quantize_force_names_the_folder(float_onnx, tmp_path, capsys, monkeypatch):
    import runtime.artifact.folder as folder

    out = tmp_path / "art"
    assert run_cli(capsys, "quantize", float_onnx, out)[0] == 0
    before = tree(tmp_path)

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder, "save_map", enospc)
    code, _, err = run_cli(capsys, "quantize", float_onnx, out, "--force")
    line = one_line_error(err)
    assert code == 2 and f"cannot write {out}: No space left on device" in line
    assert tree(tmp_path) == before


# ------------------------------------------------------------------ 2.-3., 5. validate campaigns

@pytest.fixture
def art(paper_art) -> Path:
    return paper_art


@pytest.fixture
def cifar(cifar_test_batch, small_images) -> Path:
    return cifar_test_batch(*small_images(16))


def _validate(art, cifar, out, *extra) -> list:
    return ["validate", art, "--data", cifar, "--no-cache", "--sa1", "0.1", "--runs", "2", "--out", out, *extra]


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the lock of ``path``, as a running ``rram validate`` does."""
    code = ("import sys, time\nfrom runtime.fileio import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_of_a_results_file_is_refused(art, cifar, tmp_path, capsys):
    out = tmp_path / "res.json"
    holder = _hold_lock(out)
    try:
        code, _, err = run_cli(capsys, *_validate(art, cifar, out))
        line = one_line_error(err)
        assert code == 2 and f"process {holder.pid}" in line and str(out) in line
        assert not out.exists()
        code, _, err = run_cli(capsys, *_validate(art, cifar, out, "--resume"))
        assert code == 2 and f"process {holder.pid}" in one_line_error(err)
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, naming a dead process
        holder.wait()
    assert (tmp_path / "res.json.lock").read_text().split()[0] == str(holder.pid)
    code, _, err = run_cli(capsys, *_validate(art, cifar, out))
    assert code == 0, err  # the stale lock is taken over
    assert json.loads(out.read_text())["complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.json"]  # released on exit


def test_second_writer_of_a_measured_chip_result_is_refused(art, cifar, tmp_path, capsys):
    from runtime.artifact import DeployedModel
    from runtime.faults import split_codes

    cmap = DeployedModel.load(art).cmap
    fault_map = tmp_path / "chip.npz"
    np.savez(fault_map, **{f"L{i:04d}": c for i, c in enumerate(split_codes(cmap, np.zeros(cmap.cell_count(),
                                                                                           np.uint8)))})
    out = tmp_path / "res.json"
    args = ["validate", art, "--data", cifar, "--no-cache", "--fault-map", fault_map, "--out", out]
    holder = _hold_lock(out)
    try:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and f"process {holder.pid}" in one_line_error(err)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.npz", "res.json"]


def test_stale_lock_naming_a_dead_pid_is_taken_over(art, cifar, tmp_path, capsys):
    out = tmp_path / "res.json"
    (tmp_path / "res.json.lock").write_text("999999999 nowhere\n")  # above any pid_max
    code, _, err = run_cli(capsys, *_validate(art, cifar, out))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.json"]


def test_lock_is_released_on_error_and_interrupt(art, cifar, tmp_path, capsys, monkeypatch):
    from runtime.engine import Engine

    out = tmp_path / "new" / "res.json"

    def interrupted(*args, **kwargs):  # Ctrl-C during the first chip, the lock held
        assert Path(f"{out}.lock").read_text().split()[0] == str(os.getpid())
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "chip_accuracy", interrupted)
    assert run_cli(capsys, *_validate(art, cifar, out))[0] == 130
    assert sorted(p.name for p in out.parent.iterdir()) == ["res.json"]  # the clean accuracies so far
    code, _, err = run_cli(capsys, *_validate(art, cifar, out))  # exists without --resume: an error
    assert code == 2 and "--resume" in one_line_error(err)
    assert sorted(p.name for p in out.parent.iterdir()) == ["res.json"]
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *_validate(art, cifar, out, "--resume"))
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["res.json"]


def test_a_billion_runs_start_at_once_with_progress_lines(art, cifar, tmp_path):
    """--runs 1000000000 once built the whole job list first (MemoryError, no ETA). One shard of
    a billion holds two chips here; the process may use 6 GiB of address space at most."""
    out = tmp_path / "res.json"
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
            "from toolchain.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               RRAM_PROGRESS_SECONDS="0")
    args = _validate(art, cifar, out)
    args[args.index("--runs") + 1] = "1000000000"
    args[args.index("--sa1") + 1] = "0.1,0.2"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args), "--shard", "1/1000000000"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"validate: 1/2 chips, 0:00:\d\d elapsed, ETA \d+:\d\d:\d\d", proc.stderr), proc.stderr
    assert "validate: 2/2 chips" in proc.stderr
    doc = json.loads(out.read_text())
    # the chips of the unsharded order: job j = i * runs + r, every billionth from the first
    assert [sorted(e["runs"]) for e in doc["rates"]] == [["0"], ["0"]]


def test_progress_lines_for_batch_jobs_and_the_same_chips(art, cifar, tmp_path, capsys, monkeypatch):
    import runtime.progress as progress

    out = tmp_path / "res.json"
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    code, _, err = run_cli(capsys, *_validate(art, cifar, out, "--shard", "2/3"))
    assert code == 0, err
    lines = [x for x in err.splitlines() if x.startswith("validate: ")]
    assert [x.split(",")[0] for x in lines] == ["validate: 1/1 chips"]  # jobs 1 (r=1) of 0..1
    assert list(json.loads(out.read_text())["rates"][0]["runs"]) == ["1"]
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 1e9)  # a short job: no line at all
    code, _, err = run_cli(capsys, *_validate(art, cifar, tmp_path / "all.json", "--runs", "3"))
    assert code == 0 and "chips," not in err


def test_summary_counts_only_the_chips_that_ran(art, cifar, tmp_path, capsys):
    out = tmp_path / "res.json"
    code, stdout, err = run_cli(capsys, *_validate(art, cifar, out, "--sa1", "0,0.1"))
    assert code == 0, err
    timing = json.loads(out.read_text())["timing"]
    assert (timing["runs"], timing["ran"], timing["reused"]) == (4, 2, 2)
    assert re.search(r"^2 chips run in [\d.]+ s \(2 fault-free, reused without running\): [\d.]+ chips/s, "
                     r"\d+ images/s$", stdout, re.M), stdout
    code, stdout, err = run_cli(capsys, "merge", out, "--out", tmp_path / "merged.json")
    assert code == 0, err
    assert json.loads((tmp_path / "merged.json").read_text())["timing"]["reused"] == 2
    assert "2 chips run in" in stdout


# ------------------------------------------------------------------ 4.-5. edited conductance maps

def _edit_map(doc: dict, case: str) -> None:
    if case == "bits_per_cell":
        doc["device"]["bits_per_cell"] = 8  # was 7: the SA0 result changed from 42.5% to 9.5%
    elif case == "layer":
        del doc["layers"][1]  # that layer then ran fault-free
    elif case == "version":
        doc["version"] = 99
    elif case == "hash":
        doc["model_sha256"] = ""  # switched the model check off


@pytest.mark.parametrize("case, expected", [
    ("bits_per_cell", "the device differs from the one model.onnx was quantised for (bits_per_cell 8, model 7)"),
    ("layer", "has no entry for the mapped layer"),
    ("version", "crossbar map version 99 is not supported"),
    ("hash", "model_sha256 (the sha256 of the model.onnx it belongs to) is missing"),
])
def test_edited_crossbar_map_is_refused(art, cifar, tmp_path, capsys, case, expected):
    edited = tmp_path / "art"
    shutil.copytree(art, edited)
    doc = json.loads((edited / "crossbars.json").read_text())
    _edit_map(doc, case)
    (edited / "crossbars.json").write_text(json.dumps(doc))
    out = tmp_path / "res.json"
    code, _, err = run_cli(capsys, *_validate(edited, cifar, out, "--sa0", "0.1"))
    line = one_line_error(err)
    assert code == 2 and expected in line, line
    assert str(edited) in line  # names the file (or the model.onnx it disagrees with)
    assert not out.exists()


def test_levels_of_the_wrong_type_say_so(art, cifar, tmp_path, capsys):
    edited = tmp_path / "art"
    shutil.copytree(art, edited)
    with np.load(edited / "crossbars.npz") as z:
        arrays = dict(z)
    arrays["L0000.levels"] = arrays["L0000.levels"].astype(np.int16)  # same shape, other type
    np.savez(edited / "crossbars.npz", **arrays)
    code, _, err = run_cli(capsys, *_validate(edited, cifar, tmp_path / "res.json"))
    line = one_line_error(err)
    assert code == 2 and "levels are int16, not uint8" in line and str(edited / "crossbars.npz") in line
    assert "the map says" not in line


# ------------------------------------------------------------------ 6. every command that writes

# where each command reads its input and writes its output (a folder, or a file of this suffix)
FOLDER_OUTPUTS = {"train", "recalibrate", "quantize", "pipeline"}
SUFFIX = {"export": ".onnx", "passes": ".onnx", "validate": ".json", "merge": ".json", "plot": ".png",
          "sensitivity": ".json"}
INPUT = {"train": "data", "recalibrate": "ck/m.pt", "export": "ck/m.pt", "passes": "models/m.onnx",
         "quantize": "models/m.onnx", "validate": "art", "merge": "results/res.json", "plot": "results/res.json",
         "sensitivity": "art", "pipeline": "pipe/p.toml"}
WRITERS = ["train", "recalibrate", "export", "passes", "quantize", "validate", "merge", "plot", "sensitivity",
           "pipeline"]
# the smallest pipeline: the workspace's checkpoint through recalibrate .. report (no [train])
PIPELINE = """\
out = {out}
data = "../data"

[model]
checkpoint = "../ck/m.pt"
arch = "resnet20"
width = 0.25

[recalibrate]
rates = [0.1]
batches = 1
batch_size = 4

[validate]
sa1 = [0.1]
runs = 1
images = 4
"""


def write_pipeline_config(ws: Path, out: Path) -> None:
    """``pipe/p.toml`` (the pipeline's input: its run folder is the config's ``out``) with this out."""
    (ws / INPUT["pipeline"]).write_text(PIPELINE.format(out=json.dumps(str(out))))


def _argv(command: str, ws: Path, out: Path) -> list:
    data, inp = ws / "data", ws / INPUT[command]
    return {
        "train": ["train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.1", "--epochs", "1",
                  "--batch-size", "4", "--data", data, "--no-cache", "--out", out],
        "recalibrate": ["recalibrate", inp, "--rates", "0.1", "--data", data, "--no-cache", "--batch-size", "4",
                        "--out", out],
        "export": ["export", inp, "--out", out],
        "passes": ["passes", inp, out],
        "quantize": ["quantize", inp, out, "--force"],  # --force: the dangerous one
        "validate": ["validate", inp, "--data", data, "--no-cache", "--runs", "1", "--sa1", "0.1", "--images", "4",
                     "--out", out],
        "merge": ["merge", inp, "--out", out],
        "plot": ["plot", inp, "--out", out],
        "sensitivity": ["sensitivity", inp, "--data", data, "--no-cache", "--sa1", "0.1", "--runs", "1",
                        "--images", "4", "--out", out],
        "pipeline": ["pipeline", inp],  # its out is in the config (write_pipeline_config)
    }[command]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_checkpoint) -> Path:
    """data/ (CIFAR-10 batches), ck/m.pt, models/m.onnx, art/ (quantized), results/res.json and
    pipe/ (for the pipeline's config), each beside a file of the user's (notes.txt) that no command
    may touch."""
    ws = tmp_path_factory.mktemp("ws")
    write_cifar_batches_py(ws / "data")
    (ws / "ck").mkdir()
    shutil.copy(tiny_checkpoint(), ws / "ck" / "m.pt")  # a copy: the commands run on ws's files
    assert main(["export", str(ws / "ck" / "m.pt"), "--out", str(ws / "models" / "m.onnx")]) == 0
    assert main(["quantize", str(ws / "models" / "m.onnx"), str(ws / "art")]) == 0
    assert main([str(a) for a in _argv("validate", ws, ws / "results" / "res.json")]) == 0
    (ws / "pipe").mkdir()
    for folder in ("data", "ck", "models", "results", "pipe"):
        (ws / folder / "notes.txt").write_text(f"the user's notes in {folder}")
    return ws


def write_cifar_batches_py(root: Path) -> None:
    from conftest import write_cifar_python

    rng = np.random.default_rng(0)
    write_cifar_python(root / "cifar-10-batches-py", {
        name: (rng.integers(0, 256, (8, 3072), dtype=np.uint8), np.arange(8) % 10)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]})


def read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` refuse writes as the kernel does for a user without permission there (root,
    as on this machine, ignores the mode): every way these commands create, open for writing or
    rename into a path checks it."""
    import builtins
    import io
    import tempfile

    folder = folder.resolve()

    def inside(path) -> bool:
        try:
            p = Path(os.fsdecode(path)).absolute()
        except TypeError:
            return False  # a file descriptor or file object
        return p == folder or folder in p.parents

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def guard(fn, path_of, writes=lambda *a, **k: True):
        def guarded(*args, **kwargs):
            path = path_of(*args, **kwargs)
            if path is not None and inside(path) and writes(*args, **kwargs):
                refuse(path)
            return fn(*args, **kwargs)
        return guarded

    def open_writes(file, mode="r", *a, **k):
        return any(c in mode for c in "wax+")

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if inside(p) and mode & os.W_OK
                        else real_access(p, mode, *a, **k))
    for mod, name in [(tempfile, "mkstemp"), (tempfile, "mkdtemp"), (tempfile, "NamedTemporaryFile")]:
        monkeypatch.setattr(mod, name, guard(getattr(mod, name), lambda *a, dir=None, **k: dir))
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, lambda p, *a, **k: p))
    monkeypatch.setattr(os, "replace", guard(os.replace, lambda src, dst, *a, **k: dst))
    monkeypatch.setattr(os, "rename", guard(os.rename, lambda src, dst, *a, **k: dst))
    monkeypatch.setattr(os, "open", guard(os.open, lambda p, flags, *a, **k: p,
                                          lambda p, flags, *a, **k: flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, lambda f, *a, **k: f, open_writes))
    monkeypatch.setattr(io, "open", builtins.open)
    monkeypatch.setattr(torch, "save", guard(torch.save, lambda obj, f, *a, **k: f))


CASES = ["existing folder", "existing file", "read-only parent", "inside the input's folder"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", WRITERS)
def test_every_writing_command_keeps_what_is_there(command, case, workspace, tmp_path, capsys, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    monkeypatch.setenv("RRAM_CACHE", str(tmp_path / "cache"))  # the pipeline's data cache: not in ws
    suffix = "" if command in FOLDER_OUTPUTS else SUFFIX[command]
    inp = ws / INPUT[command]
    if case == "existing folder":  # not an artifact, not a previous output: somebody's folder
        out = ws / f"mine{suffix}"
        out.mkdir()
        (out / "keep.txt").write_text("keep me")
    elif case == "existing file":  # a file of the user's where a folder goes; else the input itself
        out = ws / "notes" if command in FOLDER_OUTPUTS else (ws / "results" / "res.json" if inp.is_dir()
                                                              else inp)
        if command in FOLDER_OUTPUTS:
            out.write_text("keep me")
    elif case == "read-only parent":
        (ws / "ro").mkdir()
        (ws / "ro" / "keep.txt").write_text("keep me")
        out = ws / "ro" / f"new{suffix}"
        read_only(monkeypatch, ws / "ro")
    else:
        out = (inp if inp.is_dir() else inp.parent) / f"new{suffix}"
    if command == "pipeline":
        write_pipeline_config(ws, out)
    before = tree(ws)
    code, _, err = run_cli(capsys, *_argv(command, ws, out))
    monkeypatch.undo()
    after = tree(ws)
    if code == 0:
        # train and recalibrate resume into (or add to) a folder; quantize and the pipeline refuse one
        # they did not write
        assert case == "inside the input's folder" or (case == "existing folder" and command in FOLDER_OUTPUTS
                                                         and command not in ("quantize", "pipeline")), \
            f"{command} wrote into {out}"
        new = [p for p in after if p not in before]
        assert new and all((ws / p) == out or out in (ws / p).parents for p in new), new
        assert {p: h for p, h in after.items() if p in before} == before
    else:
        line = one_line_error(err)
        assert code == 2, line
        assert after == before, f"{command} ({case}) changed {set(after.items()) ^ set(before.items())}"


def test_progress_lines_name_their_unit_in_plain_english(monkeypatch, capsys):
    """A log reads "176/176 batches", not "batchs" (recalibration's progress line once did)."""
    from runtime import progress

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    for unit, word in (("batch", "batches"), ("chip", "chips"), ("step", "steps"), ("layer", "layers")):
        bar = progress.Progress(2, True, desc="d", unit=unit, leave=False)
        bar.update()
        bar.close()
        assert f"d: 1/2 {word}, " in capsys.readouterr().err


def test_the_eta_counts_only_units_that_took_time(monkeypatch, capsys):
    """A campaign's fault-free chips after the first are reused (no work): counting them made the
    ETA of the faulty chips after them 20x too short."""
    from runtime import progress

    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    now = [0.0]  # a clock of our own: the nine reused units take no time, the tenth 10 s
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    bar = progress.Progress(20, True, desc="d", leave=False)
    for _ in range(9):
        bar.update(timed=False)
    now[0] = 10.0
    bar.update()  # the 10th: the first that ran, 10 s
    bar.close()
    assert capsys.readouterr().err.splitlines()[-1] == "d: 10/20 chips, 0:00:10 elapsed, ETA 0:01:40"

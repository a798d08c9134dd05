"""Campaigns on Ray (`rram validate --ray`, `rram sensitivity --ray`; runtime/ray_executor.py):
the same numbers run for run as in this process, written as chips finish and resumable after a
kill, and bad input refused in one line. Against a local instance of 2 CPUs (2 workers)."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import runtime.campaign.run as campaign_run
from runtime.campaign import validate
from runtime.campaign.writer import ResultsWriter
from runtime.errors import RuntimeInputError
from runtime.results import journal_path, read_results
from runtime.sensitivity import sensitivity
from runtime.variation import Nonideal

from _runtime_helpers import make_images
from conftest import ROOT, one_line_error, one_thread, run_cli, write_test_batch

_one_thread = pytest.fixture(autouse=True)(one_thread)

try:
    import ray
except ImportError:  # an optional extra; `make install` installs it, so CI runs these tests
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install 'rram-toolchain[ray]')")


@pytest.fixture(scope="module")
def cluster():
    if ray is None:
        pytest.skip("ray is not installed (pip install 'rram-toolchain[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def runs_of(doc) -> list[dict]:
    return [e["runs"] for e in doc["rates"]]


@needs_ray
@pytest.mark.parametrize("kw", [
    # SA1 0 reuses the fault-free accuracy without running a chip; 0.05 and 0.3 run every chip
    dict(sa1=[0.0, 0.05, 0.3], runs=6, seed=4),
    # --protect restricts each chip's faults; --ci counts chips in run order and stops each rate
    dict(sa1=[0.1, 0.4], runs=12, seed=2, protect=["/conv2/Conv"], ci=25.0, min_runs=3),
    # device non-idealities (issue 37): programming variation and read noise drawn on the workers
    # from the run's seed, the converters' graph built on each worker from the same ranges
    dict(sa1=[0.0, 0.05, 0.1], runs=4, seed=3, nonideal=Nonideal(programming_sigma=0.03, read_sigma=0.01, adc_bits=6),
         calibration=make_images(16, seed=5)[0]),
], ids=["plain", "protect-ci", "nonideal"])
def test_ray_campaign_equals_the_local_one_run_for_run(paper_art, paper_data, cluster, kw):
    images, labels = paper_data
    local = validate(paper_art, images, labels, progress=False, **kw)
    on_ray = validate(paper_art, images, labels, progress=False, ray=True, **kw)
    assert runs_of(on_ray) == runs_of(local) and on_ray["clean"] == local["clean"]
    assert [e["summary"] for e in on_ray["rates"]] == [e["summary"] for e in local["rates"]]
    assert on_ray["config"] == local["config"] and on_ray["complete"]
    assert on_ray["timing"]["ran"] == local["timing"]["ran"]
    if "ci" in kw:  # the stop is where the local campaign stops: not one chip more
        assert all(len(e["runs"]) < kw["runs"] for e in local["rates"][:1])
    else:  # the chips differ from each other (the comparison above can fail)
        assert len({v["accuracy"] for v in local["rates"][2]["runs"].values()}) > 1


@needs_ray
def test_ray_sensitivity_equals_the_local_one(paper_art, paper_data, cluster):
    images, labels = paper_data
    local = sensitivity(paper_art, images, labels, sa1=[0.1, 0.3], runs=3, seed=5, progress=False)
    on_ray = sensitivity(paper_art, images, labels, sa1=[0.1, 0.3], runs=3, seed=5, progress=False, ray=True)
    local.pop("seconds"), on_ray.pop("seconds")
    assert on_ray == local
    assert len({lay["drop"] for e in local["rates"] for lay in e["layers"]}) > 1


@needs_ray
def test_interrupted_ray_campaign_resumes_to_the_local_result(paper_art, paper_data, cluster, tmp_path, monkeypatch):
    """Ctrl-C in the driver after four chips are written: the file holds them (whatever order they
    finished in); resuming on Ray runs only the others and ends as one local run."""
    images, labels = paper_data
    kw = dict(sa1=[0.1, 0.3], runs=8, seed=7, progress=False)
    whole = validate(paper_art, images, labels, **kw)
    out = tmp_path / "r.json"
    add = ResultsWriter.add

    def interrupted(self, *args):
        add(self, *args)
        if self.done == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultsWriter, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        validate(paper_art, images, labels, out=out, ray=True, **kw)
    assert not journal_path(out).exists()  # the interrupt rewrote the file with every chip it had
    assert sum(len(e["runs"]) for e in read_results(out)["rates"]) == 4
    monkeypatch.setattr(ResultsWriter, "add", add)
    resumed = validate(paper_art, images, labels, out=out, resume=True, ray=True, **kw)
    assert resumed["timing"]["runs"] == 16 - 4  # this process ran only the chips the file lacked
    assert runs_of(resumed) == runs_of(whole) and read_results(out)["complete"]


@needs_ray
def test_resume_on_ray_fills_the_gaps_any_kill_leaves(paper_art, paper_data, cluster, tmp_path):
    """Chips finish out of order on a cluster: a killed campaign's file can miss run 1 and hold run
    3. Resuming on Ray runs exactly the missing ones."""
    images, labels = paper_data
    kw = dict(sa1=[0.2, 0.4], runs=6, seed=3, progress=False)
    out = tmp_path / "r.json"
    whole = validate(paper_art, images, labels, out=out, **kw)
    doc = json.loads(out.read_text())
    doc["rates"][0]["runs"] = {k: v for k, v in doc["rates"][0]["runs"].items() if k in ("0", "3", "4")}
    doc["rates"][1]["runs"] = {k: v for k, v in doc["rates"][1]["runs"].items() if k == "5"}
    out.write_text(json.dumps(doc))
    resumed = validate(paper_art, images, labels, out=out, resume=True, ray=True, **kw)
    assert runs_of(resumed) == runs_of(whole)
    assert resumed["timing"]["runs"] == 12 - 4 and read_results(out)["complete"]


_SLOW_DRIVER = """
import sys, time
from runtime.campaign.writer import ResultsWriter
add = ResultsWriter.add
def slow(self, *args):  # a slow driver (a loaded head node): time for the test to kill it mid-campaign
    add(self, *args)
    time.sleep(0.3)
ResultsWriter.add = slow
from toolchain.cli import main
sys.exit(main(sys.argv[1:]))
"""


@needs_ray
def test_killed_cli_ray_campaign_resumes(paper_art, paper_data, cluster, tmp_path, capsys):
    """`rram validate --ray` killed (SIGKILL, its own local Ray instance with it) once its file
    holds three chips; `--resume --ray` completes it to the local campaign's numbers."""
    images, labels = paper_data
    root = write_test_batch(tmp_path / "cifar", images, labels)
    out = tmp_path / "r.json"
    argv = ["validate", str(paper_art), "--data", str(root), "--no-cache", "--split", "test", "--sa1", "0.1,0.3",
            "--runs", "10", "--seed", "9", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "driver.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", _SLOW_DRIVER, *argv, "--ray=local"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        held = 0
        while held < 3:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the campaign wrote no chip in 240 s"
            time.sleep(0.05)
            try:
                held = sum(len(e["runs"]) for e in read_results(out)["rates"])
            except RuntimeInputError:  # not written yet (a rename is atomic: never half a file)
                held = 0
    finally:
        # SIGKILL to the driver and to the session started for it: its local Ray instance goes too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    partial = read_results(out)
    assert not partial["complete"] and 3 <= sum(len(e["runs"]) for e in partial["rates"]) < 20
    code, _, err = run_cli(capsys, *argv, "--resume", "--ray", "--json")
    assert code == 0, err
    whole = validate(paper_art, images, labels, sa1=[0.1, 0.3], runs=10, seed=9, progress=False)
    assert runs_of(read_results(out)) == runs_of(whole)


def test_ray_bad_input(paper_art, paper_data, tmp_path, capsys, monkeypatch):
    images, labels = paper_data
    with pytest.raises(RuntimeInputError, match="--ray replaces --shard"):
        validate(paper_art, images, labels, sa1=[0.1], runs=4, shard=(1, 2), ray=True, progress=False)
    root = write_test_batch(tmp_path / "cifar", images, labels)
    out = tmp_path / "r.json"
    base = ["validate", paper_art, "--data", root, "--no-cache", "--split", "test", "--sa1", "0.1", "--runs", "4",
            "--out", out]
    code, _, err = run_cli(capsys, *base, "--shard", "1/2", "--ray")
    assert code == 2 and "--ray replaces --shard" in one_line_error(err)
    code, _, err = run_cli(capsys, *base, "--fault-map", tmp_path / "chip.npz", "--ray")
    assert code == 2 and "--fault-map" in one_line_error(err)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    code, _, err = run_cli(capsys, *base, "--ray")
    assert code == 2 and "pip install 'rram-toolchain[ray]'" in one_line_error(err)
    code, _, err = run_cli(capsys, "sensitivity", paper_art, "--data", root, "--no-cache", "--sa1", "0.1",
                           "--out", tmp_path / "s.json", "--ray")
    assert code == 2 and "pip install 'rram-toolchain[ray]'" in one_line_error(err)
    assert not out.exists() and not (tmp_path / "s.json").exists()


@needs_ray
def test_ray_bad_input_found_on_a_worker(paper_art, paper_data, cluster, tmp_path, capsys):
    """An error the engine raises on a worker reaches the one-line handler as it would locally."""
    images, labels = paper_data
    with pytest.raises(RuntimeInputError, match="^64 images but 10 labels$"):
        validate(paper_art, images, labels[:10], sa1=[0.1], runs=2, progress=False, ray=True)
    root = write_test_batch(tmp_path / "cifar", images, labels)
    code, _, err = run_cli(capsys, "validate", paper_art, "--data", root, "--no-cache", "--split", "test",
                           "--sa1", "0.1", "--runs", "2", "--threads", "3", "--out", tmp_path / "r.json", "--ray")
    assert code == 2 and "--threads 3" in one_line_error(err) and "has 2" in one_line_error(err)
    assert not (tmp_path / "r.json").exists()


def test_ray_is_imported_only_with_ray():
    code = "import sys, runtime.campaign, runtime.sensitivity, toolchain.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["False"], out.stdout + out.stderr


def test_every_campaign_runs_through_the_one_chip_function(paper_art, paper_data, monkeypatch):
    """The local executor runs measure_chip too: the function Ray workers run is the campaign's."""
    images, labels = paper_data
    seen = []
    measure_chip = campaign_run.measure_chip

    def spy(engine, cmap, chips, r, *args):
        seen.append((chips.sa1, r))
        return measure_chip(engine, cmap, chips, r, *args)

    monkeypatch.setattr(campaign_run, "measure_chip", spy)
    doc = validate(paper_art, images, labels, sa1=[0.1, 0.2], runs=3, seed=1, progress=False)
    assert seen == [(0.1, 0), (0.1, 1), (0.1, 2), (0.2, 0), (0.2, 1), (0.2, 2)]
    assert np.isfinite(doc["rates"][0]["summary"]["mean"])


PIPELINE = """\
out = "run"
data = "data"

[model]
checkpoint = "init.pt"
arch = "resnet20"

[recalibrate]
rates = [0.0, 0.1]

[validate]
sa1 = [0.0, 0.1]
runs = 2
"""


def test_pipeline_key_validate_ray(tmp_path, monkeypatch):
    """validate.ray passes --ray to the campaigns and is no setting of the step: changing it re-runs
    nothing (it changes no number)."""
    from toolchain.cli import RaisingParser, build_parser
    from toolchain.pipeline import Pipeline
    from toolchain.pipeline.actions import commands
    from toolchain.pipeline.config import load_config

    (tmp_path / "init.pt").write_bytes(b"")
    parser = build_parser(RaisingParser, only="validate")
    settings = []
    for value, ray in [(None, None), ("default", True), ("local", "local"), ("10.0.0.1:6379", "10.0.0.1:6379")]:
        config = tmp_path / "p.toml"
        config.write_text(PIPELINE + ("" if value is None else f'ray = "{value}"\n'))
        pipeline = Pipeline(load_config(config))
        step = next(s for s in pipeline.steps if s.stage == "validate")
        settings.append(step.settings)
        (argv,) = commands(pipeline, step)  # what the step runs, read by rram validate's own parser
        assert parser.parse_args(argv).ray == ray
    assert all(s == settings[0] for s in settings) and "ray" not in settings[0]


@needs_ray
def test_a_killed_ray_worker_is_one_line_and_the_finished_chips_are_kept(paper_art, paper_data, cluster, tmp_path,
                                                                          monkeypatch):
    from runtime.campaign.writer import ResultsWriter
    from runtime.ray_executor import RayExecutor

    images, labels = paper_data
    out = tmp_path / "r.json"
    executors, add = [], ResultsWriter.add
    init = RayExecutor.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        executors.append(self)

    def kill_after_the_first(self, *args):  # the workers die while the campaign runs
        add(self, *args)
        if self.done == 1:
            for actor in executors[0].actors:
                ray.kill(actor)

    monkeypatch.setattr(RayExecutor, "__init__", remember)
    monkeypatch.setattr(ResultsWriter, "add", kill_after_the_first)
    with pytest.raises(RuntimeInputError, match="a Ray worker died .* --resume"):
        validate(paper_art, images, labels, sa1=[0.2], runs=8, seed=1, out=out, ray=True, progress=False)
    assert 1 <= sum(len(e["runs"]) for e in read_results(out)["rates"]) < 8

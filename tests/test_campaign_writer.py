"""The campaign's results writer (issue 32) and the campaign-side checks of issue 33, through the
CLI and the public functions: journal and resume, no shrinking merge, checked numbers from files,
options that do not apply to the chosen mode, one chip's CI, a missed --ci target."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runtime.campaign import CampaignConfig, validate
from runtime.errors import RuntimeInputError
from runtime.results import journal_path, read_results

from conftest import ROOT, one_line_error, run_cli


@pytest.fixture
def art(paper_art):
    return paper_art


@pytest.fixture
def data(small_images):
    return small_images(16)


@pytest.fixture
def cifar(cifar_test_batch, data):
    return cifar_test_batch(*data)


def _validate(art, cifar, out, *extra) -> list:
    return ["validate", art, "--data", cifar, "--no-cache", "--out", out, *extra]


def runs_of(doc: dict) -> list:
    return [(e["sa1"], e["runs"]) for e in doc["rates"]]


# ------------------------------------------------------------------ the journal

def test_a_killed_campaigns_journal_is_folded_in_and_resume_runs_only_the_rest(art, data, tmp_path):
    """A campaign killed after some chips, whose results file predates them (rewrites are
    throttled): every reader sees the journal's chips, and --resume runs only the missing ones."""
    kw = dict(sa1=[0.1, 0.3], runs=6, seed=5, progress=False)
    whole = validate(art, *data, **kw)
    out = tmp_path / "r.json"
    validate(art, *data, out=out, **kw)
    doc = json.loads(out.read_text())
    header = {"format": "rram-validate-journal", "version": 1}
    from runtime.results import config_digest

    header["config_sha256"] = config_digest(doc["config"])
    # as a kill leaves it: the file holds 3 chips, the journal 4 more (one also in the file), the
    # last line cut short
    kept = {"0": doc["rates"][0]["runs"]["0"], "1": doc["rates"][0]["runs"]["1"], "2": doc["rates"][0]["runs"]["2"]}
    lines = [json.dumps(header)] + [json.dumps({"rate": 0, "run": r, "record": doc["rates"][0]["runs"][str(r)]})
                                    for r in (2, 3, 4, 5)] + ['{"rate": 1, "run": 0, "rec']
    journal = {r: doc["rates"][1]["runs"][str(r)] for r in ()}
    assert journal == {}
    doc["rates"][0]["runs"], doc["rates"][1]["runs"], doc["complete"] = kept, {}, False
    out.write_text(json.dumps(doc))
    journal_path(out).write_text("\n".join(lines))
    seen = read_results(out)  # plot, merge and resume see the journal's chips
    assert sorted(seen["rates"][0]["runs"], key=int) == ["0", "1", "2", "3", "4", "5"]
    assert sorted(read_results(out, journal=False)["rates"][0]["runs"]) == ["0", "1", "2"]
    resumed = validate(art, *data, out=out, resume=True, **kw)
    assert resumed["timing"]["runs"] == 6  # only rate 0.3's chips ran
    assert runs_of(resumed) == runs_of(whole) and not journal_path(out).exists()
    assert runs_of(read_results(out)) == runs_of(whole)


def test_a_journal_line_that_disagrees_or_belongs_elsewhere_is_refused(art, data, tmp_path, capsys, cifar):
    out = tmp_path / "r.json"
    kw = dict(sa1=[0.1], runs=2, seed=1, progress=False)
    doc = validate(art, *data, out=out, **kw)
    run = dict(doc["rates"][0]["runs"]["0"], accuracy=0.123456)
    from runtime.results import config_digest

    head = {"format": "rram-validate-journal", "version": 1, "config_sha256": config_digest(doc["config"])}
    journal_path(out).write_text(json.dumps(head) + "\n" + json.dumps({"rate": 0, "run": 0, "record": run}) + "\n")
    with pytest.raises(RuntimeInputError, match="differs from the results file"):
        read_results(out)
    journal_path(out).write_text(json.dumps(dict(head, config_sha256="0" * 64)) + "\n")
    code, _, err = run_cli(capsys, "plot", out, "--out", tmp_path / "p.png")
    assert code == 2 and "journal of another campaign" in one_line_error(err)
    journal_path(out).write_text(json.dumps(head) + "\nnot json\n" + json.dumps(head) + "\n")
    with pytest.raises(RuntimeInputError, match="malformed journal line 2"):
        read_results(out)


def test_sigterm_mid_campaign_writes_every_finished_chip_and_releases_the_lock(art, cifar, data, tmp_path):
    out = tmp_path / "t.json"
    args = [sys.executable, "-m", "toolchain", *map(str, _validate(art, cifar, out, "--sa1", "0.1,0.3",
                                                                   "--runs", "400", "--seed", "3"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if sum(len(e["runs"]) for e in read_results(out)["rates"]) >= 5:
                break
        except RuntimeInputError:
            pass
        time.sleep(0.01)
    proc.terminate()
    assert proc.wait(30) != 0
    assert not journal_path(out).exists() and not (tmp_path / "t.json.lock").exists()
    doc = read_results(out, journal=False)  # the file itself holds every finished chip
    assert 5 <= sum(len(e["runs"]) for e in doc["rates"]) < 800 and not doc["complete"]


# ------------------------------------------------------------------ merge never shrinks

def test_merge_onto_a_fuller_campaign_is_refused(art, data, tmp_path, capsys):
    kw = dict(sa1=[0.1], runs=4, seed=2, progress=False)
    full, s1, s2 = tmp_path / "full.json", tmp_path / "s1.json", tmp_path / "s2.json"
    validate(art, *data, out=full, **kw)
    validate(art, *data, out=s1, shard=(1, 2), **kw)
    validate(art, *data, out=s2, shard=(2, 2), **kw)
    before = full.read_bytes()
    code, _, err = run_cli(capsys, "merge", s1, "--out", full)
    assert code == 2 and "would lose them" in one_line_error(err) and full.read_bytes() == before
    code, _, err = run_cli(capsys, "merge", s1, s2, "--out", full)
    assert code == 0, err  # the merge holds every chip the file held
    assert runs_of(read_results(full)) == runs_of(json.loads(before))


# ------------------------------------------------------------------ numbers from files

@pytest.mark.parametrize("edit, what", [
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d["config"].update(sa1=["0.1"]), "malformed"),
    (lambda d: d["rates"][0]["runs"].update({"01": d["rates"][0]["runs"]["1"]}), "malformed"),
    (lambda d: d["timing"].update(seconds="x"), "malformed"),
    (lambda d: d["rates"][0]["runs"]["0"].update(accuracy=float("nan")), "malformed"),
])
def test_hand_edited_results_are_refused_by_every_reader(art, data, cifar, tmp_path, capsys, edit, what):
    out = tmp_path / "r.json"
    validate(art, *data, out=out, sa1=[0.1], runs=2, seed=0, progress=False)
    doc = json.loads(out.read_text())
    edit(doc)
    out.write_text(json.dumps(doc))
    for argv in (["merge", out, "--out", tmp_path / "m.json"], ["plot", out, "--out", tmp_path / "p.png"],
                 _validate(art, cifar, out, "--sa1", "0.1", "--runs", "2", "--resume")):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and what in one_line_error(err), (argv[0], err)
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "p.png").exists()


# ------------------------------------------------------------------ options that do not apply

@pytest.mark.parametrize("extra, expected", [
    (["--fault-map", "chip.npz", "--sa1", "0.1"], "--sa1 is for campaigns"),
    (["--fault-map", "chip.npz", "--runs", "3"], "--runs is for campaigns"),
    (["--fault-map", "chip.npz", "--ci", "1"], "--ci is for campaigns"),
    (["--sa1", "0.1", "--min-runs", "5"], "--min-runs applies to a precision target only"),
    (["--sa1", "0.1", "--protect", ""], "--protect needs"),
    (["--sa1", "0.1", "--protect", ","], "--protect"),
])
def test_options_that_do_not_apply_are_refused(art, cifar, tmp_path, capsys, extra, expected):
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, *_validate(art, cifar, out, *extra))
    assert code == 2 and expected in one_line_error(err)
    assert not out.exists()


def test_one_chip_has_no_ci_and_a_missed_ci_target_is_flagged(art, cifar, tmp_path, capsys):
    out = tmp_path / "one.json"
    code, stdout, err = run_cli(capsys, *_validate(art, cifar, out, "--sa1", "0.1", "--runs", "1"))
    assert code == 0, err
    s = read_results(out)["rates"][0]["summary"]
    assert s["n"] == 1 and s["ci95"] is None and s["std"] is None and "ci95 n/a (1 chip)" in stdout
    out = tmp_path / "ci.json"
    code, stdout, err = run_cli(capsys, *_validate(art, cifar, out, "--sa1", "0.1", "--runs", "3", "--ci", "0.01",
                                                   "--min-runs", "2"))
    assert code == 0, err
    doc = read_results(out)
    assert doc["complete"] and doc["rates"][0]["summary"]["ci_target_met"] is False
    assert "target of 0.01 points was missed" in stdout


def test_the_campaign_defaults_are_declared_once():
    """The CLI's and the pipeline's defaults are CampaignConfig's."""
    from toolchain.cli import build_parser
    from toolchain.pipeline.config import SCHEMA

    config = CampaignConfig(sa1=[0.1])
    args = build_parser().parse_args(["validate", "a", "--out", "o.json"])
    assert args.runs is None and args.min_runs is None  # None: the runtime's default applies
    assert SCHEMA["validate"]["runs"].default == config.runs == 100


def test_two_sensitivity_runs_on_one_out_cannot_both_write(art, cifar, tmp_path, capsys):
    """A second `rram sensitivity` on an --out another one is writing is refused (the lock
    `rram validate` takes), naming the holder; the first one's report is kept."""
    out = tmp_path / "s.json"
    code = ("import sys, time\nfrom runtime.fileio import output_lock\n"
            "with output_lock(sys.argv[1], 'rram sensitivity'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    argv = ["sensitivity", art, "--data", cifar, "--no-cache", "--sa1", "0.1", "--runs", "1", "--out", out]
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and f"process {holder.pid}" in one_line_error(err) and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    before = out.read_bytes()
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "exists" in one_line_error(err) and out.read_bytes() == before

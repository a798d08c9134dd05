"""Precision-targeted campaigns (issue 15, first part): `rram validate --ci POINTS`."""
import json

import numpy as np
import pytest

from runtime.campaign import validate
from runtime.errors import RuntimeInputError
from runtime.results import read_results, summarize

from conftest import one_line_error, one_thread, run_cli, write_test_batch

_one_thread = pytest.fixture(autouse=True)(one_thread)


def half_width(accs) -> float:
    s = summarize(accs)
    return 100 * (s["ci95"][1] - s["ci95"][0]) / 2


def test_ci_stops_once_the_target_is_reached_and_never_before_the_minimum(paper_art, paper_data):
    images, labels = paper_data
    loose = validate(paper_art, images, labels, sa1=[0.05], runs=30, seed=1, progress=False, ci=40.0, min_runs=4)
    accs = [v["accuracy"] for v in loose["rates"][0]["runs"].values()]
    n = len(accs)
    assert 4 <= n < 30 and loose["complete"] and loose["config"]["ci"] == 40.0
    assert half_width(accs) <= 40.0
    assert n == 4 or half_width(accs[:-1]) > 40.0  # not one chip later than needed
    # the chips are the first n of the plain campaign: same seeds, same order
    plain = validate(paper_art, images, labels, sa1=[0.05], runs=n, seed=1, progress=False)
    assert [v["accuracy"] for v in plain["rates"][0]["runs"].values()] == accs
    tight = validate(paper_art, images, labels, sa1=[0.05], runs=6, seed=1, progress=False, ci=0.001, min_runs=2)
    assert len(tight["rates"][0]["runs"]) == 6 and tight["complete"]  # the maximum, target not reached


def test_ci_resumes_to_the_same_result(paper_art, paper_data, tmp_path):
    images, labels = paper_data
    out = tmp_path / "r.json"
    kw = dict(sa1=[0.2, 0.4], runs=20, seed=2, progress=False, ci=30.0, min_runs=3)
    whole = validate(paper_art, images, labels, **kw)
    validate(paper_art, images, labels, out=out, **kw)
    doc = json.loads(out.read_text())  # a kill after the first rate's third chip
    doc["rates"][0]["runs"] = dict(list(doc["rates"][0]["runs"].items())[:3])
    doc["rates"][1]["runs"] = {}
    out.write_text(json.dumps(doc))
    resumed = validate(paper_art, images, labels, out=out, resume=True, **kw)
    assert [e["runs"] for e in resumed["rates"]] == [e["runs"] for e in whole["rates"]]
    assert read_results(out)["complete"]


def test_ci_bad_input(paper_art, paper_data, tmp_path, capsys):
    images, labels = paper_data
    with pytest.raises(RuntimeInputError, match="cannot be sharded"):
        validate(paper_art, images, labels, sa1=[0.1], runs=4, ci=1.0, shard=(1, 2), progress=False)
    root = write_test_batch(tmp_path / "cifar", images, labels)
    base = ["validate", paper_art, "--data", root, "--no-cache", "--split", "test", "--sa1", "0.1", "--runs", "4",
            "--out", tmp_path / "r.json"]
    code, _, err = run_cli(capsys, *base, "--ci", "1", "--shard", "1/2")
    assert code == 2 and "cannot be sharded" in one_line_error(err)
    code, _, err = run_cli(capsys, *base, "--ci", "0")
    assert code == 2 and "--ci" in one_line_error(err)
    assert not (tmp_path / "r.json").exists()
    code, out, _ = run_cli(capsys, *base, "--ci", "50", "--min-runs", "2", "--json")
    assert code == 0 and json.loads(out)["config"]["min_runs"] == 2
    assert np.isfinite(json.loads(out)["rates"][0]["summary"]["mean"])

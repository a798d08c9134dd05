"""`rram validate --ci POINTS --images auto` (issue 15): each chip on its own random image subset.
Subsets drawn from (seed, rates, run) only; the subset estimator unbiased with the between-chip sd
corrected for image sampling; the size rule; the campaign's stop, resume, int8, calibration, plot."""
import json

import numpy as np
import pytest

from runtime.artifact import DeployedModel
from runtime.campaign import validate
from runtime.engine import Engine
from runtime.errors import RuntimeInputError
from runtime.faults import run_seed, sample_chip
from runtime.results import merge, read_results, summarize
from runtime.subsets import (
    between_chip_sd,
    between_chip_variance,
    chip_subset,
    choose_size,
    optimal_size,
    sampling_variance,
)

from _runtime_helpers import self_labelled_images
from conftest import one_line_error, one_thread, run_cli, write_test_batch

_one_thread = pytest.fixture(autouse=True)(one_thread)

AUTO = dict(images_auto=True, pilot_images=100, min_images=20)  # small sizes for a 400-image split


@pytest.fixture
def art(paper_art):
    return paper_art


@pytest.fixture
def data(art, self_labelled):
    return self_labelled(art, n=400)


def half_width(accs) -> float:
    s = summarize(accs)
    return 100 * (s["ci95"][1] - s["ci95"][0]) / 2


def sizes(entry) -> list[int]:
    return [v["images"] for v in entry["runs"].values()]


# ------------------------------------------------------------------ subsets

def test_subset_is_a_function_of_seed_rates_and_run_only():
    a = chip_subset(7, 0.1, 0.0, 5, 50, 1000)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert np.array_equal(a, chip_subset(7, 0.1, 0.0, 5, 50, 1000))  # no hidden state between calls
    others = [chip_subset(s, p1, p0, r, 50, 1000) for s, p1, p0, r in
              [(8, 0.1, 0.0, 5), (7, 0.2, 0.0, 5), (7, 0.1, 0.01, 5), (7, 0.1, 0.0, 6)]]
    assert all(not np.array_equal(a, o) for o in others)
    # a larger subset of the same run extends the smaller one (the pilot's images stay in)
    assert set(a.tolist()) <= set(chip_subset(7, 0.1, 0.0, 5, 400, 1000).tolist())
    # its own stream: not the permutation the chip's own seed would draw
    chip_stream = np.sort(np.random.Generator(np.random.PCG64(run_seed(7, 0.1, 0.0, 5))).permutation(1000)[:50])
    assert not np.array_equal(a, chip_stream)


def test_subsets_do_not_depend_on_the_split_of_the_work(art, data, tmp_path):
    """Run k's accuracy is the engine's on chip k and subset k computed alone; a campaign killed
    in the pilot and after it resumes to the same records (sizes included)."""
    images, labels = data
    kw = dict(sa1=[0.05, 0.1], runs=12, seed=4, progress=False, ci=0.001, min_runs=3, **AUTO)
    whole = validate(art, images, labels, **kw)
    engine = Engine(DeployedModel.load(art), images, labels)
    n_cells = DeployedModel.load(art).cmap.cell_count()
    for e in whole["rates"]:
        assert sizes(e)[:3] == [100] * 3 and set(sizes(e)[3:]) == {e["images_auto"]["size"]}
        for r in (0, 7):  # a pilot run and a later one
            chip = sample_chip(n_cells, e["sa1"], 0.0, run_seed(4, e["sa1"], 0.0, r))
            subset = chip_subset(4, e["sa1"], 0.0, r, e["runs"][str(r)]["images"], len(labels))
            assert e["runs"][str(r)]["accuracy"] == engine.timed_chip_accuracy(chip, subset)[0]
    out = tmp_path / "r.json"
    validate(art, images, labels, out=out, **kw)
    doc = json.loads(out.read_text())
    first = json.loads(out.read_text())  # (sizes after the pilot come from this process's timings)
    # killed after run 5 of the first rate (its size recorded) and in the second rate's pilot
    doc["rates"][0]["runs"] = dict(list(doc["rates"][0]["runs"].items())[:6])
    doc["rates"][1]["runs"] = dict(list(doc["rates"][1]["runs"].items())[:2])
    recorded = doc["rates"][0]["images_auto"]["size"]
    del doc["rates"][1]["images_auto"]
    out.write_text(json.dumps(doc))
    resumed = validate(art, images, labels, out=out, resume=True, **kw)
    assert sizes(resumed["rates"][0])[3:] == [recorded] * 9  # the recorded size, not a re-timed one
    assert resumed["rates"][0]["runs"] == first["rates"][0]["runs"]  # the uninterrupted campaign's
    assert list(resumed["rates"][1]["runs"].items())[:3] == list(first["rates"][1]["runs"].items())[:3]
    assert resumed["rates"][1]["summary"]["n"] == 12 and read_results(out)["complete"]


def test_a_recorded_size_is_reused_on_resume_and_kept_by_merge(art, data, tmp_path):
    images, labels = data
    kw = dict(sa1=[0.1], runs=8, seed=5, progress=False, ci=0.001, min_runs=3, **AUTO)
    out = tmp_path / "r.json"
    validate(art, images, labels, out=out, **kw)
    doc = json.loads(out.read_text())
    doc["rates"][0]["images_auto"]["size"] = 37  # as another machine's timings might have chosen
    doc["rates"][0]["runs"] = dict(list(doc["rates"][0]["runs"].items())[:3])  # killed after the pilot
    out.write_text(json.dumps(doc))
    resumed = validate(art, images, labels, out=out, resume=True, **kw)
    assert sizes(resumed["rates"][0]) == [100] * 3 + [37] * 5
    merged = merge([out])
    assert merged["rates"][0]["images_auto"]["size"] == 37
    assert merged["rates"][0]["summary"] == resumed["rates"][0]["summary"]
    assert merged["timing"]["images"] == sum(sizes(resumed["rates"][0]))


# ------------------------------------------------------------------ the estimator

def test_subset_estimator_is_unbiased_and_the_corrected_sd_recovers_the_chip_spread():
    """Synthetic chips with known whole-split accuracies: the mean of subset accuracies is unbiased
    for their mean, and the corrected variance for their variance, over many repetitions."""
    rng = np.random.default_rng(0)
    total, chips, n, reps = 2000, 30, 100, 400
    truth = rng.uniform(0.3, 0.7, chips)  # between-chip sd ~0.115; image noise at n=100: ~0.05
    correct = np.zeros((chips, total), bool)
    for k, a in enumerate(truth):  # each chip right on exactly round(a * total) images
        correct[k, rng.permutation(total)[:round(a * total)]] = True
    true_acc = correct.mean(1)
    means, variances, raw = [], [], []
    for rep in range(reps):
        accs = np.array([correct[k, chip_subset(rep, 0.1, 0.0, k, n, total)].mean() for k in range(chips)])
        means.append(accs.mean())
        variances.append(between_chip_variance(accs, [n] * chips, total))
        raw.append(accs.var(ddof=1))
    means, variances = np.array(means), np.array(variances)
    se = means.std(ddof=1) / np.sqrt(reps)
    assert abs(means.mean() - true_acc.mean()) < 4 * se
    target = true_acc.var(ddof=1)
    assert abs(variances.mean() - target) < 4 * variances.std(ddof=1) / np.sqrt(reps)
    assert np.mean(raw) > target * 1.1  # uncorrected, the image noise inflates the spread
    assert abs(np.sqrt(max(variances.mean(), 0)) - true_acc.std(ddof=1)) < 0.01
    # with the whole split per chip there is no image noise to remove
    assert between_chip_sd(true_acc, [total] * chips, total) == pytest.approx(true_acc.std(ddof=1))
    assert sampling_variance(0.4, total, total) == 0.0
    assert sampling_variance(0.5, 101, 10 ** 12) == pytest.approx(0.25 / 100)


def test_the_size_rule():
    # n* = sqrt(p(1-p) C / (sd^2 c)): C/c = 100 images' worth of time per chip
    assert optimal_size(0.5, 0.05, 0.03, 0.0003) == pytest.approx(100)
    assert optimal_size(0.5, 0.01, 0.03, 0.0003) == pytest.approx(500)
    assert choose_size(0.5, 0.01, 0.03, 0.0003, 10000) == 500
    assert choose_size(0.5, 0.05 / 3, 0.03, 0.0003, 10000) == 200  # n* = 300: nearer 200 than 500 in log
    assert choose_size(0.5, 0.5, 0.03, 0.0003, 10000) == 100  # clamped to the minimum
    assert choose_size(0.5, 0.0, 0.03, 0.0003, 10000) == 10000  # chips alike: the whole split
    assert choose_size(0.5, 0.001, 0.03, 0.0003, 3000) == 3000  # clamped to the split
    assert choose_size(0.5, 0.5, 0.03, 0.0003, 60) == 60  # a split below the minimum


# ------------------------------------------------------------------ the campaign

def test_ci_with_images_auto_stops_once_the_target_is_reached_and_never_before_the_minimum(art, data):
    images, labels = data
    loose = validate(art, images, labels, sa1=[0.05], runs=80, seed=1, progress=False, ci=25.0, min_runs=4, **AUTO)
    e = loose["rates"][0]
    accs = [v["accuracy"] for v in e["runs"].values()]
    n = len(accs)
    assert 4 <= n < 80 and loose["complete"] and loose["config"]["images_auto"] == {"pilot": 100, "min": 20}
    assert half_width(accs) <= 25.0
    assert n == 4 or half_width(accs[:-1]) > 25.0  # not one chip later than needed
    s = e["summary"]
    assert s["n"] == n and s["images_evaluated"] == sum(v["images"] for v in e["runs"].values()
                                                        if v["stuck_fraction"] > 0)
    assert 0 <= s["sd_between"] <= s["std"] + 1e-12 and s["images_min"] == min(sizes(e))
    assert "image-sampling noise" in s["note"]
    assert loose["timing"]["images"] == s["images_evaluated"]
    tight = validate(art, images, labels, sa1=[0.05], runs=6, seed=1, progress=False, ci=0.001, min_runs=5, **AUTO)
    assert len(tight["rates"][0]["runs"]) == 6 and tight["complete"]  # the maximum, target not reached
    assert sizes(tight["rates"][0])[:5] == [100] * 5  # the pilot: the first --min-runs chips


def test_images_auto_with_int8_and_per_chip_calibration(data, make_bn_artifact):
    art = make_bn_artifact()  # an artifact with fold-bn's BN targets
    images, labels = data  # (labelled by another tiny model: the accuracies only need to agree)
    kw = dict(sa1=[0.1], runs=5, seed=2, progress=False, ci=0.001, min_runs=3, **AUTO)
    model = DeployedModel.load(art)
    chip = sample_chip(model.cmap.cell_count(), 0.1, 0.0, run_seed(2, 0.1, 0.0, 4))
    for extra, engine_kw in ((dict(precision="int8", calibration=images[:64]),
                              dict(precision="int8", calibration=images[:64])),
                             (dict(calibrate=images[:64]), dict(calibrate=images[:64]))):
        doc = validate(art, images, labels, **kw, **extra)
        e = doc["rates"][0]
        assert len(e["runs"]) == 5 and sizes(e)[:3] == [100] * 3
        subset = chip_subset(2, 0.1, 0.0, 4, e["runs"]["4"]["images"], len(labels))
        engine = Engine(model, images, labels, **engine_kw)
        assert e["runs"]["4"]["accuracy"] == engine.timed_chip_accuracy(chip, subset)[0]


def test_plot_reads_an_images_auto_results_file(art, data, tmp_path):
    from runtime.plot import plot_results, series_names

    images, labels = data
    out = tmp_path / "r.json"
    validate(art, images, labels, sa1=[0.0, 0.1], runs=5, seed=3, progress=False, ci=0.001, min_runs=3,
             out=out, **AUTO)
    doc = read_results(out)
    assert "random image subset" in series_names([doc], [out])[0]
    assert plot_results([out], tmp_path / "fig.png").stat().st_size > 0


def test_images_auto_bad_input(art, data, tmp_path, capsys):
    images, labels = data
    with pytest.raises(RuntimeInputError, match="--ci"):
        validate(art, images, labels, sa1=[0.1], runs=4, progress=False, images_auto=True)
    with pytest.raises(RuntimeInputError, match="pilot images"):
        validate(art, images, labels, sa1=[0.1], runs=4, progress=False, ci=1.0, images_auto=True, pilot_images=1)
    with pytest.raises(RuntimeInputError, match="cannot be sharded"):
        validate(art, images, labels, sa1=[0.1], runs=4, progress=False, ci=1.0, shard=(1, 2), **AUTO)
    root = write_test_batch(tmp_path / "cifar", images, labels)
    base = ["validate", art, "--data", root, "--no-cache", "--split", "test", "--sa1", "0.1", "--runs", "4",
            "--out", tmp_path / "r.json"]
    code, _, err = run_cli(capsys, *base, "--images", "auto")
    assert code == 2 and "--ci" in one_line_error(err)
    code, _, err = run_cli(capsys, *base, "--images", "auto", "--ci", "1", "--shard", "1/2")
    assert code == 2 and "cannot be sharded" in one_line_error(err)
    code, _, err = run_cli(capsys, *base, "--images", "some")
    assert code == 2 and "auto" in one_line_error(err)
    code, _, err = run_cli(capsys, *base, "--images", "auto", "--ci", "1", "--fault-map", tmp_path / "f.npz")
    assert code == 2 and "--fault-map" in one_line_error(err)
    assert not (tmp_path / "r.json").exists()
    # the CLI's pilot (1000) and minimum (100) are clamped to this 400-image split
    code, out, _ = run_cli(capsys, *base, "--images", "auto", "--ci", "50", "--min-runs", "2", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["config"]["images_auto"] == {"pilot": 400, "min": 100}
    assert summary["rates"][0]["summary"]["n"] >= 2 and "sd_between" in summary["rates"][0]["summary"]
    # a split larger than the pilot: subsets of 1000 of its 1200 images
    many = self_labelled_images(art, n=1200)
    root = write_test_batch(tmp_path / "cifar1200", *many)
    text_out = tmp_path / "t.json"
    code, out, _ = run_cli(capsys, "validate", art, "--data", root, "--no-cache", "--split", "test", "--sa1", "0.1",
                           "--runs", "4", "--out", text_out, "--images", "auto", "--ci", "50", "--min-runs", "2")
    timing = read_results(text_out)["timing"]
    assert code == 0 and "images auto: " in out and "between-chip sd" in out and "image-sampling noise" in out
    assert timing["images"] == 1000 * timing["ran"]
    # the speed counts the images the chips really evaluated
    assert f"{timing['images'] / timing['seconds']:.0f} images/s" in out

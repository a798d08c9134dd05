"""rram pipeline: a mini flow end to end on synthetic data, step skipping by content and settings,
--dry-run, --from, resuming an interrupted step, and one-line errors for bad configs."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from toolchain.checkpoints import Checkpoint, save_checkpoint
from toolchain.cli import main
from toolchain.data import CIFAR10_NORM
from toolchain.models import ModelSpec, build_model
from toolchain.pipeline.config import all_keys, load_config
from toolchain.pipeline.state import STATE_NAME, settings_key

from conftest import ROOT, make_cifar, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)

CONFIG = """\
out = "run"
data = "data"

[model]
checkpoint = "init.pt"
arch = "resnet20"

[train]
drop_rate = 0.1
epochs = 1
images = 64
eval_images = 32
batch_size = 32

[recalibrate]
rates = [0.0, 0.1]
batches = 2
batch_size = 32

[validate]
sa1 = [0.0, 0.1]
runs = 2
images = 32
"""
ALL_STEPS = ["train"] + [f"{s}:{v}" for v in ("fault-aware", "baseline")
                         for s in ("recalibrate", "export", "passes", "quantize", "validate")] + ["report"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RRAM_CACHE", str(tmp_path / "cache"))


def make_project(root: Path, config: str = CONFIG) -> Path:
    make_cifar(root / "data", per_batch=32, test=64)
    torch.manual_seed(0)
    spec = ModelSpec("resnet20", 0.25)
    save_checkpoint(Checkpoint(spec, CIFAR10_NORM, build_model(spec).eval().state_dict(), {}, {}), root / "init.pt")
    (root / "p.toml").write_text(config)
    return root / "p.toml"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One finished mini pipeline; tests work on copies (every recorded path is relative)."""
    import os

    root = tmp_path_factory.mktemp("pipeline")
    cfg = make_project(root)
    before = os.environ.get("RRAM_CACHE")
    os.environ["RRAM_CACHE"] = str(root / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["pipeline", str(cfg)]) == 0
    finally:
        torch.set_num_threads(threads)
        if before is None:
            os.environ.pop("RRAM_CACHE")
        else:
            os.environ["RRAM_CACHE"] = before
    return root


@pytest.fixture
def project(built, tmp_path) -> Path:
    dst = tmp_path / "proj"
    shutil.copytree(built, dst, ignore=shutil.ignore_patterns("cache"))
    return dst / "p.toml"


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def decisions(out: str) -> dict[str, tuple[str, str]]:
    """step -> (run|skip, why) from the pipeline's "[run] step: why" lines."""
    return {m[2]: (m[1], m[3]) for m in re.finditer(r"^\[(run|skip)\] (\S+): (.*)$", out, re.M)}


def ran(out: str) -> set[str]:
    return {s for s, (what, _) in decisions(out).items() if what == "run"}


def test_end_to_end_report_and_artifacts(built):
    run = built / "run"
    for variant in ("fault-aware", "baseline"):
        for rate in ("0.0", "0.1"):
            art = run / variant / "art" / f"rate-{rate}"
            assert {"model.onnx", "crossbars.json", "crossbars.npz", "report.json"} <= {p.name for p in art.iterdir()}
        res = json.loads((run / variant / "results.json").read_text())
        assert res["complete"] and res["config"]["runs"] == 2 and res["config"]["sa1"] == [0.0, 0.1]
        assert sorted(res["config"]["models"]) == ["rate-0.0", "rate-0.1"]
    assert not (run / "model").exists()
    for png in ("accuracy.png", "crossbar-usage.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run / "report.md").read_text()
    for heading in ("## Fault-free accuracy", "## Accuracy on faulty chips", "## Crossbar usage per layer",
                    "## Configuration", "## Software", "## Time per step"):
        assert heading in report
    # the numbers are the results files' own
    fa = json.loads((run / "fault-aware" / "results.json").read_text())
    s = fa["rates"][1]["summary"]
    assert (f"| 10% | drop-connect p=0.1 | 0.1 | 2 | {100 * s['mean']:.2f}% | {100 * s['std']:.2f} | "
            f"{100 * s['min']:.2f}% | {100 * s['max']:.2f}% | [{100 * s['ci95'][0]:.2f}%, "
            f"{100 * s['ci95'][1]:.2f}%] |") in report
    base = json.loads((run / "baseline" / "results.json").read_text())
    assert f"| baseline (no drop-connect) | {100 * base['clean']['rate-0.0']:.2f}% |" in report
    usage = json.loads((run / "fault-aware" / "art" / "rate-0.0" / "report.json").read_text())["total"]
    assert f"| **total** |  |  | {usage['tiles']} | {usage['cells']} | {usage['allocated_cells']} |" in report
    assert CONFIG.strip() in report and "| torch |" in report and "| rram-toolchain |" in report
    assert "![accuracy on faulty chips](accuracy.png)" in report and "whiskers" in report
    # the conclusions (issue 35): computed from the same numbers, each model's own sentence
    conclusions = report.split("## Conclusions")[1].split("## What was built")[0]
    assert (f"**drop-connect p=0.1** (with BN re-alignment only): at SA1 10% the mean of 2 chips is "
            f"{100 * s['mean']:.2f}% (95% CI ±{50 * (s['ci95'][1] - s['ci95'][0]):.2f} points") in conclusions
    b = base["rates"][1]["summary"]
    assert f"**baseline (no drop-connect)** (with BN re-alignment only): at SA1 10% the mean of 2 chips is " \
           f"{100 * b['mean']:.2f}%" in conclusions
    assert "**A smoke test**: 2 chips x 32 images" in conclusions
    link = conclusions.split("[docs/deploying.md](")[1].split(")")[0]  # relative to the run folder
    assert (run / link).resolve() == Path(__file__).resolve().parents[1] / "docs" / "deploying.md"
    assert "**Deploy**: the " in conclusions and "**Next, for a trustworthy figure**: in `p.toml`" in conclusions
    assert "Columns: **SA1 rate**" in report and "The BN rate 0.1 column" in report
    state = json.loads((run / STATE_NAME).read_text())
    assert sorted(state["steps"]) == sorted(ALL_STEPS) and state["started"] == {}
    # a default (fp32) training records no precision setting: run folders written before
    # train.precision existed keep the same settings, so their training stays up to date
    assert "precision" not in state["steps"]["train"]["settings"]
    assert not {"variation", "programming_model"} & set(state["steps"]["train"]["settings"])  # nor variation


def test_rerun_skips_every_step_and_writes_nothing(project, capsys):
    before = snapshot(project.parent)
    assert main(["pipeline", str(project)]) == 0
    d = decisions(capsys.readouterr().out)
    assert sorted(d) == sorted(ALL_STEPS)
    assert all(what == "skip" for what, _ in d.values())
    assert snapshot(project.parent) == before


def test_dry_run_says_why_and_changes_nothing(project, capsys):
    project.write_text(project.read_text().replace("runs = 2", "runs = 3"))
    before = snapshot(project.parent)
    assert main(["pipeline", str(project), "--dry-run"]) == 0
    d = decisions(capsys.readouterr().out)
    assert d["validate:fault-aware"] == ("run", "setting validate.runs changed: 2 -> 3")
    assert d["report"][0] == "run" and "rebuilt by validate:" in d["report"][1]
    assert {s for s, (what, _) in d.items() if what == "run"} == {"validate:fault-aware", "validate:baseline",
                                                                 "report"}
    assert snapshot(project.parent) == before
    # a fresh run folder: everything would run, and the folder is not even created
    project.write_text(project.read_text().replace('out = "run"', 'out = "fresh"'))
    assert main(["pipeline", str(project), "--dry-run"]) == 0
    d = decisions(capsys.readouterr().out)
    assert d["train"] == ("run", "never run in this folder")
    assert d["export:baseline"] == ("run", "input recalibrated.pt is rebuilt by recalibrate:baseline")
    assert not (project.parent / "fresh").exists()


def test_changed_setting_reruns_exactly_the_steps_downstream(project, capsys):
    results = project.parent / "run" / "fault-aware" / "results.json"
    project.write_text(project.read_text().replace("runs = 2", "runs = 3"))
    assert main(["pipeline", str(project)]) == 0
    assert ran(capsys.readouterr().out) == {"validate:fault-aware", "validate:baseline", "report"}
    assert json.loads(results.read_text())["config"]["runs"] == 3
    assert "| 3 |" in (project.parent / "run" / "report.md").read_text()
    # a training setting: the fault-aware branch re-runs, the baseline does not
    project.write_text(project.read_text().replace("drop_rate = 0.1", "drop_rate = 0.2"))
    assert main(["pipeline", str(project)]) == 0
    out = capsys.readouterr().out
    assert ran(out) == {"train", "recalibrate:fault-aware", "export:fault-aware", "passes:fault-aware",
                        "quantize:fault-aware", "validate:fault-aware", "report"}
    assert decisions(out)["train"][1] == "setting train.drop_rate changed: 0.1 -> 0.2"
    assert "--precision fp32" in out  # the default is said, not left to rram train's own default
    assert "drop-connect p=0.2" in (project.parent / "run" / "report.md").read_text()
    # a changed input file (the initial checkpoint) re-runs everything that reads it
    init = project.parent / "init.pt"
    spec = ModelSpec("resnet20", 0.25)
    torch.manual_seed(1)
    save_checkpoint(Checkpoint(spec, CIFAR10_NORM, build_model(spec).eval().state_dict(), {}, {}), init)
    assert main(["pipeline", str(project), "--dry-run"]) == 0
    d = decisions(capsys.readouterr().out)
    assert d["train"] == ("run", "input checkpoint changed")
    assert d["recalibrate:baseline"] == ("run", "input checkpoint changed")


def test_data_is_compared_by_content_not_modification_time(project, capsys):
    """A copy of the data set with new modification times (another machine, a fresh checkout of
    shared/) re-runs nothing; one image's bytes changed (at the same size) re-run every step
    that reads the data, and the steps after them."""
    import os

    files = sorted(p for p in (project.parent / "data").rglob("*") if p.is_file())
    for i, f in enumerate(files):
        os.utime(f, ns=(10**18 + i, 10**18 + i))
    assert main(["pipeline", str(project), "--dry-run"]) == 0
    assert ran(capsys.readouterr().out) == set()
    changed = bytearray(files[0].read_bytes())
    changed[-1] ^= 1
    files[0].write_bytes(bytes(changed))
    assert main(["pipeline", str(project), "--dry-run"]) == 0
    d = decisions(capsys.readouterr().out)
    assert d["train"] == ("run", "input data changed")
    assert d["recalibrate:baseline"] == ("run", "input data changed")
    assert d["export:baseline"] == ("run", "input recalibrated.pt is rebuilt by recalibrate:baseline")
    assert {s for s, (what, _) in d.items() if what == "run"} == set(ALL_STEPS)


def test_run_folder_recorded_with_the_older_data_fingerprint_reruns_nothing(project, capsys):
    """Run folders recorded when the data set was fingerprinted by (path, size, mtime) stay up to
    date, and a step started then resumes, as long as that listing still describes the folder."""
    from toolchain.pipeline.state import listing_fingerprint

    state_file = project.parent / "run" / STATE_NAME
    doc = json.loads(state_file.read_text())
    older = listing_fingerprint(project.parent / "data")
    for rec in doc["steps"].values():
        if "data" in rec["inputs"]:
            rec["inputs"]["data"] = older
    rec = doc["steps"].pop("validate:baseline")  # as if it had been killed mid-run
    doc["started"]["validate:baseline"] = settings_key(rec["settings"], rec["inputs"])
    state_file.write_text(json.dumps(doc))
    assert main(["pipeline", str(project), "--dry-run"]) == 0
    d = decisions(capsys.readouterr().out)
    assert d["validate:baseline"] == ("run", "resuming an interrupted run")
    assert {s for s, (what, _) in d.items() if what == "run"} == {"validate:baseline", "report"}
    (project.parent / "data" / "cifar-10-batches-py" / "test_batch").touch()  # the listing no longer fits
    assert main(["pipeline", str(project), "--dry-run"]) == 0
    d = decisions(capsys.readouterr().out)
    assert d["train"] == d["recalibrate:baseline"] == ("run", "input data changed")


def test_one_chip_campaign_shows_sd_and_ci_as_na(project, capsys):
    project.write_text(project.read_text().replace("runs = 2", "runs = 1"))
    assert main(["pipeline", str(project)]) == 0
    report = (project.parent / "run" / "report.md").read_text()
    rows = [r for r in report.splitlines() if r.startswith("| 10% |")]
    assert len(rows) == 2
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[3] == "1" and cells[5] == "n/a" and cells[8] == "n/a" and cells[4] == cells[6] == cells[7]


def test_from_reruns_that_stage_and_later(project, capsys):
    state = project.parent / "run" / STATE_NAME
    old = json.loads(state.read_text())["steps"]
    assert main(["pipeline", str(project), "--from", "quantize"]) == 0
    out = capsys.readouterr().out
    assert ran(out) == {"quantize:fault-aware", "quantize:baseline", "validate:fault-aware",
                        "validate:baseline", "report"}
    assert decisions(out)["quantize:baseline"] == ("run", "--from quantize")
    new = json.loads(state.read_text())["steps"]
    assert new["export:baseline"] == old["export:baseline"]
    assert new["validate:baseline"]["finished"] >= old["validate:baseline"]["finished"]
    # the same artifacts and campaign again: same numbers
    assert new["validate:baseline"]["inputs"] == old["validate:baseline"]["inputs"]


def test_interrupted_step_resumes(project, capsys):
    """A step that started and never finished (a kill) continues where it was with the same
    settings: the campaign is resumed (--resume), not restarted."""
    run = project.parent / "run"
    state = json.loads((run / STATE_NAME).read_text())
    rec = state["steps"].pop("validate:fault-aware")
    state["steps"].pop("report")
    state["started"]["validate:fault-aware"] = settings_key(rec["settings"], rec["inputs"])
    (run / STATE_NAME).write_text(json.dumps(state))
    results = run / "fault-aware" / "results.json"
    doc = json.loads(results.read_text())
    del doc["rates"][1]["runs"]["1"]  # the kill came before the last chip
    doc["complete"] = False
    results.write_text(json.dumps(doc))
    assert main(["pipeline", str(project)]) == 0
    out = capsys.readouterr().out
    assert decisions(out)["validate:fault-aware"] == ("run", "resuming an interrupted run")
    assert re.search(r"^\$ rram validate .* --resume$", out, re.M)
    assert ran(out) == {"validate:fault-aware", "report"}
    assert json.loads(results.read_text())["complete"]


def test_killed_training_resumes_from_its_last_epoch(project, capsys, monkeypatch):
    """Ctrl-C in the second epoch of a new 2-epoch training stops the pipeline (exit 130); the
    next run resumes that training (rram train --auto-resume) instead of starting it afresh."""
    import toolchain.commands.train as train_command
    from toolchain.training import train

    def interrupted_in_second_epoch(cfg, **kw):  # the public step_callback: after each optimizer step
        def stop(epoch, step):
            if epoch == 1:  # 0-based: the second epoch
                raise KeyboardInterrupt
        return train(cfg, step_callback=stop, **kw)

    project.write_text(project.read_text().replace("epochs = 1", "epochs = 2"))
    monkeypatch.setattr(train_command, "train", interrupted_in_second_epoch)
    assert main(["pipeline", str(project)]) == 130
    log = project.parent / "run" / "train" / "log.json"
    first = json.loads(log.read_text())["epochs"]
    assert [e["epoch"] for e in first] == [1]
    capsys.readouterr()
    monkeypatch.setattr(train_command, "train", train)
    assert main(["pipeline", str(project)]) == 0
    out, err = capsys.readouterr()
    assert decisions(out)["train"] == ("run", "resuming an interrupted run")
    assert "epoch 2/2:" in err and "epoch 1/2:" not in err  # only the missing epoch was trained
    epochs = json.loads(log.read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[0] == first[0]
    assert "recalibrate:baseline" not in ran(out)


def test_config_without_train_runs_the_checkpoint_as_is(project, capsys):
    text = re.sub(r"\[train\].*?\n\n", "", project.read_text(), flags=re.S)
    project.write_text(text.replace('out = "run"', 'out = "plain"'))
    assert main(["pipeline", str(project), "--dry-run"]) == 0
    d = decisions(capsys.readouterr().out)
    assert sorted(d) == sorted([f"{s}:model" for s in ("recalibrate", "export", "passes", "quantize",
                                                       "validate")] + ["report"])


BAD = [
    ("runs = 2\n", "runs = 2\nrun = 3\n", "unknown key 'validate.run'; did you mean 'validate.runs'?"),
    ("[validate]\n", "[valdate]\n", "unknown key 'valdate'; did you mean 'validate'?"),
    ('arch = "resnet20"\n', "", "missing required key 'model.arch' in [model]"),
    ('checkpoint = "init.pt"', 'checkpoint = "nope.pt"', "model.checkpoint: no such file:"),
    ('checkpoint = "init.pt"', 'checkpoint = "resnet99-nobody"', "model.checkpoint: checkpoint not found: resnet99"),
    ('data = "data"', 'data = "nodata"', "data folder not found:"),
    ("runs = 2", 'runs = "two"', "validate.runs must be an integer, got 'two'"),
    ("drop_rate = 0.1", "drop_rate = 1.5", "train.drop_rate must be below 1"),
    ("rates = [0.0, 0.1]", "rates = [0.1, 0.1]", "recalibrate.rates repeats a value"),
    ("runs = 2", "runs = [", "not valid TOML"),
    ('data = "data"\n\n[model]\ncheckpoint = "init.pt"\n', 'data = "data"\nbaseline = true\n\n[model]\n',
     "baseline = true needs model.checkpoint"),
    ('arch = "resnet20"\n', 'arch = "resnet20"\nshortcut = "C"\n', "model.shortcut must be one of A, B"),
    ("epochs = 1\n", 'epochs = 1\nprecision = "fp16"\n', "train.precision must be one of fp32, bf16"),
    ("epochs = 1\n", "epochs = 1\nvariation = -0.1\n", "train.variation must be"),
    ("epochs = 1\n", 'epochs = 1\nprogramming_model = "gauss"\n', "train.programming_model must be one of"),
    # values only a later step's command refuses: checked with that command's parser and checks
    # before the first step runs (they used to fail after training, hours in)
    ("runs = 2\n", "runs = 2\nseed = 4294967296\n", "validate:fault-aware: argument --seed: must be below 2**32"),
    ("runs = 2\n", "runs = 2\ncalibrate = 1000000000000\n",
     "validate.calibrate: --calibrate 1000000000000: choose between 1 and the"),
    ("runs = 2\n", "runs = 2\nsa0 = 0.95\n", "SA1 + SA0 rates must not exceed 1"),
    ("[validate]\n", '[passes]\npasses = "fold-bn,no-such-pass"\n\n[validate]\n', "unknown pass 'no-such-pass'"),
    ("[validate]\n", '[quantize]\npreset = "nope"\n\n[validate]\n', "argument --preset: invalid choice: 'nope'"),
]


@pytest.mark.parametrize("old,new,message", BAD)
def test_bad_config_one_line_error(built, tmp_path, capsys, old, new, message):
    shutil.copytree(built, tmp_path / "proj", ignore=shutil.ignore_patterns("cache", "run"))
    cfg = tmp_path / "proj" / "p.toml"
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new, 1))
    assert main(["pipeline", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rram: error: ") and message in err, err
    assert not (tmp_path / "proj" / "run").exists()


def _based(root: Path) -> Path:
    """CONFIG as a base in a sub-folder (its relative paths are that folder's), and a config in
    root that takes it as its base and replaces three keys."""
    (root / "common").mkdir(parents=True, exist_ok=True)
    (root / "common" / "base.toml").write_text(CONFIG)
    (root / "p.toml").write_text('# the variant\nbase = "common/base.toml"\nout = "run2"\n\n'
                                 "[train]\ndrop_rate = 0.3\n\n[validate]\nruns = 5\n")
    return root / "p.toml"


def test_base_config_keys_are_replaced_key_by_key(tmp_path):
    from toolchain.pipeline import Pipeline

    make_project(tmp_path / "common")
    cfg = load_config(_based(tmp_path))
    base = load_config(tmp_path / "common" / "base.toml")
    assert cfg.section("train")["drop_rate"] == 0.3 and cfg.section("validate")["runs"] == 5
    for section in ("model", "train", "recalibrate", "validate"):  # the rest is the base's, table by table
        mine = {k: v for k, v in cfg.section(section).items() if (section, k) not in
                {("train", "drop_rate"), ("validate", "runs")}}
        assert mine == {k: v for k, v in base.section(section).items() if k in mine}
    assert cfg.section("")["base"] == "common/base.toml" and base.section("")["base"] is None
    # paths are relative to the file that sets them: out here, data and checkpoint in common/
    assert cfg.out == (tmp_path / "run2").resolve() and cfg.data == (tmp_path / "common" / "data").resolve()
    assert Pipeline(cfg).init == (tmp_path / "common" / "init.pt").resolve()
    # the report quotes both files, this one first
    assert cfg.text.startswith("# the variant") and "\n# ---- base: common/base.toml\n" + CONFIG in cfg.text


@pytest.mark.parametrize("edit,message", [
    (lambda r: (r / "p.toml").write_text((r / "p.toml").read_text().replace('out = "run2"\n', "")),
     "p.toml: missing required key 'out': a config with a base sets its own run folder"),
    (lambda r: (r / "common" / "base.toml").write_text('base = "../p.toml"\n' + CONFIG),
     "base.toml: base '../p.toml' leads back to p.toml"),
    (lambda r: (r / "p.toml").write_text((r / "p.toml").read_text().replace("common/", "nowhere/")),
     "p.toml: base: no such pipeline config:"),
    (lambda r: (r / "common" / "base.toml").write_text(CONFIG.replace("runs = 2", "run = 2")),
     "base.toml: unknown key 'validate.run'; did you mean 'validate.runs'?"),
    (lambda r: (r / "common" / "base.toml").write_text(CONFIG.replace("epochs = 1", 'epochs = "one"')),
     "base.toml: train.epochs must be an integer"),
    (lambda r: (r / "p.toml").write_text("base = 3\n" + (r / "p.toml").read_text().split("\n", 2)[2]),
     "p.toml: base must be a non-empty string"),
    (lambda r: (r / "p.toml").write_text((r / "p.toml").read_text().replace('out = "run2"', "out = {x = 1}")),
     "p.toml: out must be a non-empty string"),
    (lambda r: (r / "common" / "base.toml").write_text('weights = {x = 1}\n' + CONFIG),
     "base.toml: weights must be a non-empty string"),
    (lambda r: (r / "p.toml").write_text((r / "p.toml").read_text() + "\n[data]\nx = 1\n"),
     "p.toml: data must be a non-empty string"),
])
def test_bad_base_config_one_line_error_naming_its_file(tmp_path, capsys, edit, message):
    make_project(tmp_path / "common")
    _based(tmp_path)
    edit(tmp_path)
    assert main(["pipeline", str(tmp_path / "p.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rram: error: ") and message in err, err
    assert not (tmp_path / "run2").exists() and not (tmp_path / "common" / "run").exists()


def test_missing_config_and_bad_from(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err == f"rram: error: pipeline config not found: {tmp_path / 'none.toml'}\n"
    assert main(["pipeline", str(tmp_path / "none.toml"), "--from", "training"]) == 2
    assert "invalid choice: 'training'" in capsys.readouterr().err


def test_every_key_documented_once():
    doc = (ROOT / "docs" / "pipeline.md").read_text()
    documented = re.findall(r"^\| `([a-z_.0-9]+)` \|", doc, re.M)
    assert sorted(documented) == sorted(all_keys())


def test_shipped_configs_parse(monkeypatch, tmp_path):
    from toolchain.pipeline.config import load_config

    monkeypatch.setenv("RRAM_DATA", str(tmp_path))
    files = sorted((ROOT / "configs").rglob("*.toml"))
    configs = [f for f in files if not f.name.startswith("_")]  # _name.toml: only a base, not a run
    assert len(configs) > 1
    used, outs = set(), []
    for cfg in configs:
        c = load_config(cfg)
        assert c.out.is_relative_to(ROOT / "out"), cfg  # run folders stay in the ignored out/
        assert c.has_train or c.values["model"]["checkpoint"], cfg
        outs.append(c.out)
        if c.values[""]["base"]:
            used.add((cfg.parent / c.values[""]["base"]).resolve())
    assert {f.resolve() for f in files if f.name.startswith("_")} <= used  # no base left unused
    assert len(set(outs)) == len(outs)  # no two configs share a run folder


def test_your_own_model_through_the_pipeline(tmp_path, capsys):
    """`model.arch = "package.module:factory"` (issue 13): a factory model's checkpoint goes
    through every stage."""
    from toolchain.models import ModelSpec as Spec

    make_cifar(tmp_path / "data", per_batch=32, test=64)
    spec = Spec("own_models:tiny_cnn10")
    torch.manual_seed(0)
    save_checkpoint(Checkpoint(spec, CIFAR10_NORM, build_model(spec).eval().state_dict(), {}, {}), tmp_path / "init.pt")
    config = CONFIG.replace('arch = "resnet20"', 'arch = "own_models:tiny_cnn10"').replace('out = "run"', 'out = "own"')
    (tmp_path / "p.toml").write_text(config)
    assert main(["pipeline", str(tmp_path / "p.toml")]) == 0, capsys.readouterr().err
    assert (tmp_path / "own" / "report.md").is_file()
    assert (tmp_path / "own" / "fault-aware" / "results.json").is_file()


def test_from_scratch_until_train_then_elsewhere(tmp_path, capsys):
    """A config without model.checkpoint trains from scratch with the [model] shape keys;
    `--until train` stops after training; the run folder's training, carried to a machine
    without its state file and with other package versions (a GPU machine's), is taken as it is
    by `rram train --auto-resume` (same options), not trained again."""
    make_cifar(tmp_path / "data", per_batch=32, test=64)
    config = re.sub(r'checkpoint = "init.pt"\n', "", CONFIG).replace(
        'arch = "resnet20"', 'arch = "resnet20"\nwidth = 0.25\npad_1x1 = true\nshortcut = "B"').replace(
        "epochs = 1\n", 'epochs = 1\nprecision = "bf16"\nvariation = 0.02\nprogramming_model = "wan2022"\n')
    (tmp_path / "p.toml").write_text(config)
    assert main(["pipeline", str(tmp_path / "p.toml"), "--until", "train"]) == 0
    out = capsys.readouterr().out
    assert ran(out) == {"train"} and "steps up to train ran" in out
    assert "--width 0.25 --pad-1x1 --shortcut B" in out and "--lr 0.1 " in out  # scratch default lr
    assert "--train-precision bf16" in out and "--variation 0.02 --programming-model wan2022" in out
    run = tmp_path / "run"
    model = run / "train" / "model.pt"
    from toolchain.checkpoints import load_checkpoint

    spec = load_checkpoint(model).spec
    assert (spec.width, spec.padded, spec.shortcut) == (0.25, True, "B")
    assert load_checkpoint(model).meta["config"]["precision"] == "bf16"
    assert load_checkpoint(model).meta["config"]["variation"] == 0.02
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    (run / STATE_NAME).unlink()  # what another machine's run folder looks like here
    assert main(["pipeline", str(tmp_path / "p.toml"), "--until", "recalibrate"]) == 0
    out, err = capsys.readouterr()
    assert ran(out) == {"train", "recalibrate:fault-aware"}  # no baseline without a checkpoint
    assert "nothing to do" in err and "epoch 1/1" not in err
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before


def test_no_checkpoint_and_no_train_is_one_line_error(tmp_path, capsys):
    make_cifar(tmp_path / "data", per_batch=32, test=64)
    text = re.sub(r"\[train\].*?\n\n", "", CONFIG, flags=re.S).replace('checkpoint = "init.pt"\n', "")
    (tmp_path / "p.toml").write_text(text)
    assert main(["pipeline", str(tmp_path / "p.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing required key 'model.checkpoint'" in err


STUDY_CONFIGS = sorted((ROOT / "configs" / "study").glob("*/*.toml"))


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_study_config_loads_and_validates_on_the_paper_protocol(path, tmp_path, monkeypatch):
    """The committed study configs (issue 16) parse with the pipeline's own loader (a misspelt key
    or a bad value fails here, not hours into a run) and keep the study's protocol."""
    monkeypatch.setenv("RRAM_DATA", str(tmp_path))  # the data folder is the runner's, not the config's
    cfg = load_config(path)
    assert cfg.section("quantize")["preset"] == "paper"
    validate = cfg.section("validate")
    assert list(validate["sa1"]) == [0.0, 0.1, 0.2, 0.3] and validate["calibrate"] == 256
    assert validate["runs"] >= (100 if path.parent.name == "full" else 20)
    assert cfg.out.name == path.stem and cfg.out.parent.name == path.parent.name  # out/study/<scale>/<config>


def test_pipeline_modules_import_one_way():
    """plan <- actions, decide <- execute; the report reads the plan (and the state), never the
    executor or the rerun decision: no import cycle inside toolchain/pipeline/, and no module
    there over the project's 400 lines."""
    import ast

    folder = ROOT / "toolchain" / "pipeline"
    graph = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {n.module for n in ast.walk(tree)
                            if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
        assert len(path.read_text().splitlines()) <= 400, path
    assert not graph["report"] & {"execute", "decide"} and not graph["plan"] - {"config"}

    def reach(start, seen=()):
        for m in graph.get(start, ()):
            assert m not in seen + (start,), f"import cycle through {start} and {m}"
            reach(m, seen + (start,))

    for module in graph:
        reach(module)


# ------------------------------------------------------------------------ the run folder is the pipeline's own

def _one_line_refusal(capsys, *parts: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rram: error: ") and all(p in err for p in parts), err


def test_existing_folder_of_other_files_is_refused_and_untouched(built, tmp_path, capsys):
    """out = "." in a folder of the user's files: refused in one line, nothing written or deleted
    (it used to delete art/ folders, results.json and overwrite report.md)."""
    shutil.copytree(built, tmp_path / "proj", ignore=shutil.ignore_patterns("cache", "run"))
    cfg = tmp_path / "proj" / "p.toml"
    shutil.move(tmp_path / "proj" / "data", tmp_path / "data")
    cfg.write_text(cfg.read_text().replace('out = "run"', 'out = "."').replace('data = "data"', 'data = "../data"'))
    (tmp_path / "proj" / "model" / "art" / "my-notes").mkdir(parents=True)
    (tmp_path / "proj" / "model" / "art" / "my-notes" / "n.txt").write_text("mine")
    (tmp_path / "proj" / "report.md").write_text("my report")
    before = snapshot(tmp_path / "proj")
    assert main(["pipeline", str(cfg)]) == 2
    _one_line_refusal(capsys, "holds files the pipeline did not write", "choose another out")
    assert snapshot(tmp_path / "proj") == before


@pytest.mark.parametrize("where", ["/", "/tmp", "~"])
def test_system_and_home_folders_are_refused(built, tmp_path, capsys, where):
    shutil.copytree(built, tmp_path / "proj", ignore=shutil.ignore_patterns("cache", "run"))
    cfg = tmp_path / "proj" / "p.toml"
    cfg.write_text(cfg.read_text().replace('out = "run"', f'out = "{Path(where).expanduser()}"'))
    assert main(["pipeline", str(cfg), "--dry-run"]) == 2
    _one_line_refusal(capsys, f"out {Path(where).expanduser()} holds ")  # other files (and maybe the data)


def test_pipeline_deletes_only_what_it_wrote(project, capsys):
    """A rate dropped from recalibrate.rates loses its artifact files, but the user's folder beside
    it in art/ and the user's file in that rate folder stay."""
    art = project.parent / "run" / "fault-aware" / "art"
    (art / "my-notes").mkdir()
    (art / "my-notes" / "n.txt").write_text("mine")
    (art / "rate-0.1" / "notes.txt").write_text("mine too")
    project.write_text(project.read_text().replace("rates = [0.0, 0.1]", "rates = [0.0]"))
    assert main(["pipeline", str(project)]) == 0, capsys.readouterr().err
    assert (art / "my-notes" / "n.txt").read_text() == "mine"
    assert sorted(p.name for p in (art / "rate-0.1").iterdir()) == ["notes.txt"]
    assert not (project.parent / "run" / "baseline" / "art" / "rate-0.1").exists()


def test_output_the_pipeline_did_not_write_is_not_replaced(project, capsys):
    """A results.json the state does not record as the pipeline's (put there by hand) is refused,
    not deleted and recomputed."""
    run = project.parent / "run"
    doc = json.loads((run / STATE_NAME).read_text())
    for step in ("validate:baseline", "report"):
        doc["steps"].pop(step)
    doc["written"] = [p for p in doc.get("written", []) if not p.startswith("baseline/results")]
    (run / STATE_NAME).write_text(json.dumps(doc))
    (run / "baseline" / "results.json").write_text('{"mine": 1}')
    assert main(["pipeline", str(project)]) == 2
    _one_line_refusal(capsys, "validate:baseline: baseline/results.json is in the run folder but the pipeline "
                              "did not write it")
    assert (run / "baseline" / "results.json").read_text() == '{"mine": 1}'


@pytest.mark.parametrize("out", ["data/run", "data/cifar-10-batches-py/run", "data", "."])
def test_run_folder_inside_or_around_the_data_is_refused(built, tmp_path, capsys, out):
    """Inside the data folder the run folder would become an extra class folder; around it, the
    data set would sit in the run folder."""
    shutil.copytree(built, tmp_path / "proj", ignore=shutil.ignore_patterns("cache", "run"))
    cfg = tmp_path / "proj" / "p.toml"
    cfg.write_text(cfg.read_text().replace('out = "run"', f'out = "{out}"'))
    before = snapshot(tmp_path / "proj")
    assert main(["pipeline", str(cfg)]) == 2
    _one_line_refusal(capsys, "the data folder")
    assert snapshot(tmp_path / "proj") == before


def test_second_pipeline_on_one_folder_is_refused_naming_the_holder(project, capsys):
    """While a pipeline runs in a folder (here: it holds the lock, its campaign "running"), a second
    one is refused in one line naming the first's process, and its results file is left alone
    (it used to take the running step for an interrupted one and restart it)."""
    import subprocess
    import sys

    run = project.parent / "run"
    state = json.loads((run / STATE_NAME).read_text())
    rec = state["steps"].pop("validate:fault-aware")
    state["started"]["validate:fault-aware"] = settings_key(rec["settings"], rec["inputs"])
    (run / STATE_NAME).write_text(json.dumps(state))
    results = run / "fault-aware" / "results.json"
    before = results.read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from runtime.fileio import output_lock\n"
         f"with output_lock({str(run / STATE_NAME)!r}, 'rram pipeline'):\n"
         "    print('held', flush=True); time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["pipeline", str(project)]) == 2
        _one_line_refusal(capsys, "being written by another rram pipeline", f"process {holder.pid}")
        assert results.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()

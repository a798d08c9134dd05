"""docs/runtime.md's device non-ideality table (issue 37) is what the committed campaign files give
(benchmarks/nonideal_table.py render), and each file is the campaign the table says it is."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import nonideal_table  # noqa: E402  (benchmarks/nonideal_table.py)

FILES = sorted(nonideal_table.RESULTS.glob("*.json"))


def block() -> str:
    text = (ROOT / "docs" / "runtime.md").read_text()
    return re.search(re.escape(nonideal_table.BEGIN) + r"\n(.*?)" + re.escape(nonideal_table.END), text, re.S).group(1)


def test_the_block_is_what_the_files_give():
    assert block() == nonideal_table.render()


def test_a_changed_figure_changes_the_block(tmp_path, monkeypatch):
    """The check can fail: a copy of one committed file (or of the placement baseline, while no
    non-ideality file is committed) with one chip's mean moved renders another block."""
    source = FILES[0] if FILES else nonideal_table.PLACEMENT / "pretrained.fixed.json"
    folder = tmp_path / source.parent.name
    shutil.copytree(source.parent, folder)
    monkeypatch.setattr(nonideal_table, "RESULTS" if FILES else "PLACEMENT", folder)
    assert nonideal_table.render() == block()
    doc = json.loads((folder / source.name).read_text())
    doc["rates"][0]["summary"]["mean"] -= 0.01
    (folder / source.name).write_text(json.dumps(doc))
    assert nonideal_table.render() != block()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_each_file_is_the_campaign_its_name_says(path):
    model, name = path.stem.split(".", 1)
    campaigns = {c[0]: c for c in nonideal_table.campaigns()}
    assert model in dict(nonideal_table.MODELS) and name in campaigns
    doc = json.loads(path.read_text())
    config = doc["config"]
    assert doc["complete"] and config["images"] == 10000 and config["runs"] == 20 and config["seed"] == 0
    assert [f"{r['sa1']:g}" for r in doc["rates"]] == campaigns[name][1].split(",")
    options = campaigns[name][2]
    setting = config["nonideal"]
    if "--variation" in options:
        assert setting["programming_sigma"] == float(options[options.index("--variation") + 1])
        assert setting["programming_model"] == "additive" and not setting.get("adc_bits")
    if "--adc-bits" in options:
        assert setting["adc_bits"] == int(options[options.index("--adc-bits") + 1])
    if "--nonideal" in options:
        assert setting["name"] == "wan2022"
    assert bool(config.get("place")) == ("--place" in options)
    assert (config.get("calibrate") == 256) == ("--calibrate" in options)
    # the same artifact as the placement baseline the losses are taken against, or a rebuild of it
    # whose baseline rerun gives the same chips (test_a_rebuilt_artifact_computes_the_baseline)
    baseline = json.loads((nonideal_table.PLACEMENT / f"{model}.fixed.json").read_text())["config"]
    assert config["models"] in nonideal_table.artifacts(model) and config["images_sha256"] == baseline["images_sha256"]


REBUILT = sorted(nonideal_table.REBUILT.glob("*.json"))


@pytest.mark.parametrize("path", REBUILT, ids=[p.name for p in REBUILT])
def test_a_rebuilt_artifact_computes_the_baseline(path):
    """docs/results/nonideal/rebuilt/MODEL.fixed.json: the placement table's fixed-mapping baseline
    rerun on an artifact rebuilt later (another model.onnx sha256: more provenance metadata) gives
    every chip's accuracy at every rate, within MAX_IMAGES_APART images (float rounding), nearly all
    of them exactly."""
    model = path.name.removesuffix(".fixed.json")
    rerun = json.loads(path.read_text())
    baseline = json.loads((nonideal_table.PLACEMENT / path.name).read_text())
    assert rerun["config"]["models"] != baseline["config"]["models"]  # else it is not needed
    assert nonideal_table.same_baseline(rerun, baseline), model
    chips = nonideal_table.chip_accuracies(rerun)
    assert len(chips) == 4 and all(len(rate) == 20 for rate in chips)
    apart = nonideal_table.images_apart(rerun, baseline)
    assert apart.count(0) >= 0.95 * len(apart), apart


def test_a_rerun_with_another_chip_is_not_the_baseline():
    """Within MAX_IMAGES_APART images on every chip is the same baseline; one image more, or
    another seed, is not."""
    baseline = json.loads((nonideal_table.PLACEMENT / "pretrained.fixed.json").read_text())
    assert nonideal_table.same_baseline(baseline, baseline)
    images = baseline["config"]["images"]
    other = json.loads(json.dumps(baseline))
    other["rates"][2]["runs"]["7"]["accuracy"] += nonideal_table.MAX_IMAGES_APART / images  # rounding
    assert nonideal_table.same_baseline(other, baseline)
    other["rates"][2]["runs"]["7"]["accuracy"] += 1 / images  # one image more: other weights
    assert not nonideal_table.same_baseline(other, baseline)
    other = json.loads(json.dumps(baseline))
    other["config"]["seed"] = 1
    assert not nonideal_table.same_baseline(other, baseline)


def test_every_campaign_command_parses():
    """Each campaign's `rram validate` command is accepted by today's CLI."""
    from toolchain.cli import build_parser
    parser = build_parser()
    for _, rates, options in nonideal_table.campaigns():
        args = parser.parse_args(nonideal_table.command("ART", "out.json", rates, options)[1:])
        assert args.runs == 20 and args.resume


def test_a_row_runs_on_a_rebuilt_artifact_only_after_its_baseline_rerun_matches(tmp_path, monkeypatch):
    """check_artifact: the baseline's own artifact and the committed rebuilt one run at once; another
    rebuilt one first reruns the fixed baseline (placement_table's command) and stops with one line
    when its chips differ."""
    baseline = json.loads((nonideal_table.PLACEMENT / "pretrained.fixed.json").read_text())
    ran = []

    def rerun_gives(doc):
        def fake_run(argv, check):
            ran.append(argv)
            Path(argv[argv.index("--out") + 1]).write_text(json.dumps(doc))
        monkeypatch.setattr(nonideal_table.subprocess, "run", fake_run)

    monkeypatch.setattr(nonideal_table, "_models_of", lambda folder: baseline["config"]["models"])
    rerun_gives(baseline)
    nonideal_table.check_artifact(tmp_path, "pretrained")
    assert ran == []  # the same artifact: nothing to rerun
    committed = json.loads((nonideal_table.REBUILT / "pretrained.fixed.json").read_text())["config"]["models"]
    assert committed != baseline["config"]["models"]
    monkeypatch.setattr(nonideal_table, "_models_of", lambda folder: committed)
    nonideal_table.check_artifact(tmp_path, "pretrained")
    assert ran == []  # the rebuilt artifact whose rerun is committed: checked already
    rebuilt = {".": {"sha256": "0" * 64, "bn_rate": 0.0}}
    monkeypatch.setattr(nonideal_table, "_models_of", lambda folder: rebuilt)
    same = {**json.loads(json.dumps(baseline)), "config": {**baseline["config"], "models": rebuilt}}
    rerun_gives(same)
    nonideal_table.check_artifact(tmp_path, "pretrained")
    assert ran[-1] == nonideal_table.placement_table.command(str(tmp_path / "pretrained"),
                                                             str(tmp_path / "rebuilt" / "pretrained.fixed.json"), [])
    other = json.loads(json.dumps(same))
    other["rates"][1]["runs"]["3"]["accuracy"] += 0.01  # 100 images apart: other weights
    (tmp_path / "rebuilt" / "pretrained.fixed.json").unlink()
    rerun_gives(other)
    with pytest.raises(SystemExit, match="is not the artifact of"):
        nonideal_table.check_artifact(tmp_path, "pretrained")


def test_a_missing_artifact_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^nonideal_table: artifact folder not found: .*\(build it as"):
        nonideal_table.check_artifact(tmp_path, "pretrained")


def test_the_slowdown_block_is_the_committed_benchmark_record():
    """Issue 37's slowdown of each non-ideality (benchmarks/bench_nonideal.py --write): the block in
    docs/runtime.md is what the committed record gives, each ratio is its row's seconds over the
    seconds of the row it names, every non-ideality of the table is timed, and it was taken idle."""
    import bench_nonideal

    text = (ROOT / "docs" / "runtime.md").read_text()
    found = re.search(re.escape(bench_nonideal.BEGIN) + r"\n(.*?)" + re.escape(bench_nonideal.END), text, re.S)
    doc = json.loads(bench_nonideal.RESULT.read_text())
    assert found.group(1) == bench_nonideal.render(doc)
    seconds = {row["options"]: row["seconds_per_chip"] for row in doc["rows"]}
    assert [row["options"] for row in doc["rows"]] == [bench_nonideal.name(o) for o, _ in bench_nonideal.ROWS]
    for row in doc["rows"]:
        assert row["seconds_per_chip"] > 0, row
        if row["against"] is not None:
            assert row["slowdown"] == pytest.approx(row["seconds_per_chip"] / seconds[row["against"]], abs=0.01)
    assert {"--variation 0.05", "--read-noise 0.01", "--adc-bits 6", "--nonideal wan2022"} <= set(seconds)
    assert doc["load_before"] < 1.0, "time it on an idle machine"
    # the check can fail: another figure renders another block
    doc["rows"][1]["seconds_per_chip"] += 1
    assert bench_nonideal.render(doc) != found.group(1)


def _campaign(folder: Path, name: str) -> dict:
    """A committed 20-chip campaign on the full test split at SA1 0 / 10 / 20 / 30%."""
    path = folder / f"{name}.json"
    assert path.exists(), f"{name} is not committed: docs/runtime.md's statements about it need it"
    doc = json.loads(path.read_text())
    assert doc["complete"] and doc["config"]["images"] == 10000 and doc["config"]["runs"] == nonideal_table.RUNS
    assert [r["sa1"] for r in doc["rates"]] == [0.0, 0.1, 0.2, 0.3], name
    return doc


def _means(doc: dict) -> list[float]:
    return [r["summary"]["mean"] for r in doc["rates"]]


def _stuck_fractions(doc: dict) -> list[list[float]]:
    """Every chip's stuck fraction per rate: equal lists mean the same chips (the same seed's draws)."""
    return [[c["stuck_fraction"] for c in r["runs"].values()] for r in doc["rates"]]


@pytest.mark.parametrize("model", [m for m, _ in nonideal_table.MODELS])
def test_the_statements_below_the_wan2022_rows_hold(model):
    """docs/runtime.md, "What the `wan2022` rows say": with calibration, and with placement +
    calibration to measured targets, the preset costs accuracy on top of the stuck cells' at every
    SA1 rate, on the same chips (the placement table's campaigns: the same artifact, or the rebuilt
    one whose baseline rerun is committed, and every chip's stuck cells the same); placement +
    calibration to measured targets is the best row at every rate, with the preset (among all four)
    and without it (among all five); with the preset, placement alone keeps more than calibration
    alone at SA1 10, 20 and 30%; on the shared model (one artifact: the same BN in both tables) the
    preset costs placement alone accuracy at every SA1 rate too (SA1 0 included), and `resnet20-dc30-ft3`'s two
    placement rows differ in BN as the page says (rate 0 with the preset, per-rate without)."""
    text = " ".join((ROOT / "docs" / "runtime.md").read_text().split())
    assert ("with per-chip calibration, and with placement + calibration to measured targets, the preset costs "
            "each model accuracy on top of the stuck cells' at every SA1 rate") in text
    assert ("placement + calibration to measured targets stays each model's best row at every rate with the "
            "preset (against the other three rows), as it is without the preset (against the other four rows). "
            "With the preset, placement alone keeps more than calibration alone at SA1 10, 20 and 30% on both "
            "models. Its `resnet20-dc30-ft3` row runs every chip on the rate-0 artifact") in text
    assert ("the shared model has one artifact, and there the preset costs placement alone accuracy at every "
            "SA1 rate too") in text
    stuck, preset = nonideal_table.PLACEMENT, nonideal_table.RESULTS
    for alone, with_preset in (("fixed-cal", "wan2022-cal"), ("placed-cal-measured", "wan2022-placed-cal")):
        a, b = _campaign(stuck, f"{model}.{alone}"), _campaign(preset, f"{model}.{with_preset}")
        assert b["config"]["models"] in nonideal_table.artifacts(model)
        assert _stuck_fractions(a) == _stuck_fractions(b), (model, with_preset)
        without, with_ = _means(a), _means(b)
        assert all(w > p for w, p in zip(without, with_)), (model, with_preset, without, with_)
    for folder, best, others in ((stuck, "placed-cal-measured", ["fixed", "fixed-cal", "placed", "placed-cal"]),
                                 (preset, "wan2022-placed-cal", ["wan2022", "wan2022-cal", "wan2022-placed"])):
        top = _means(_campaign(folder, f"{model}.{best}"))
        for other in others:
            assert all(t >= o for t, o in zip(top, _means(_campaign(folder, f"{model}.{other}")))), \
                (model, best, other)
    placed, calibrated = (_campaign(preset, f"{model}.{name}") for name in ("wan2022-placed", "wan2022-cal"))
    assert all(p > c for p, c in list(zip(_means(placed), _means(calibrated)))[1:]), model
    assert placed["config"]["models"] in nonideal_table.artifacts(model)
    alone = _campaign(stuck, f"{model}.placed")
    assert _stuck_fractions(alone) == _stuck_fractions(placed), model
    models = [[e["model"] for e in doc["rates"]] for doc in (placed, alone)]
    if model == "pretrained":  # one artifact: like for like
        assert models == [["."] * 4] * 2
        assert all(w > p for w, p in zip(_means(alone), _means(placed)))
    else:  # the preset's row on the rate-0 artifact at every rate, the placement table's on per-rate BN
        assert set(models[0]) == {"rate-0.0"} and "rate-0.3" in models[1], models

"""docs/RESULTS.md's placement table (issue 36, benchmarks/study_placement.py): its rows, the status
line and the targets rows follow the committed files of docs/results/placement/, read in place; a
campaign not committed yet says "not run yet" and fills in when its file lands; the note's claims
about how the model was chosen are what the zoo's manifest and the files record."""
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import placement_table  # noqa: E402  (benchmarks/placement_table.py)
import study_losses as losses  # noqa: E402
import study_placement as placement  # noqa: E402
import study_tables  # noqa: E402

RESULTS = ROOT / "docs" / "results"
CLOSEST = "resnet20-dc30-ft3.placed-cal-measured.json"  # the closest row at width 1 on the test split
PROTOCOL_FILE = "resnet20-dc40-ft10.placed-cal-measured.100-chips.json"  # the row chosen on the validation split


@pytest.fixture
def copy(tmp_path, monkeypatch):
    """A copy of docs/results/ that the tables read instead, and that passes the check."""
    folder = tmp_path / "results"
    shutil.copytree(RESULTS, folder)
    monkeypatch.setattr(study_tables, "RESULTS", folder)
    assert study_tables.main(["check"]) == 0
    return folder


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _status_line(name: str = "ResNet20, option A", width: str = "1") -> str:
    lines = [ln for ln in study_tables.status().splitlines() if ln.startswith(f"- **{name}**, width {width}:")]
    assert len(lines) == 1, lines
    return lines[0]


def _row(model: str, method: str) -> str:
    label = placement.MODELS[model]
    rows = [ln for ln in study_tables.tables().splitlines()
            if ln.startswith(f"| {label}") and f"| {method} |" in ln]
    assert len(rows) == 1, (model, method, rows)
    return rows[0]


def test_the_method_names_are_placement_table_s_and_each_file_s_config_says_the_same():
    assert set(placement.METHODS) == {v for v, _, _ in placement_table.VARIANTS}
    assert {m for m, _ in placement_table.MODELS} == set(placement.MODELS)
    files = [f for arch in placement.HEADINGS for f in placement.files(RESULTS, arch)]  # every table's
    assert len(files) >= 8
    for f in files:
        variant = f.name.split(".")[1]
        said = losses.method(f)
        if variant == "fixed" and len(losses.read(f)["config"]["models"]) == 1:
            assert said == "BN of the fault-free model"  # one artifact: no per-rate BN to give
        else:
            assert said.split(" (")[0] == placement.METHODS[variant].split(" (")[0], f.name


def test_the_rows_are_the_files_and_the_status_at_width_1_is_the_row_chosen_on_the_validation_split():
    """Today's figures, as issue 36 quotes them: the status's row at width 1 is the one chosen on the
    validation split, on the paper's 100 chips: `resnet20-dc40-ft10` with placement and calibration
    to measured targets loses 0.08 / 0.32 / 0.71 against its plain 79.94%. The test-split closer row
    of `resnet20-dc30-ft3` (-0.03 / 0.39 / 1.18, not chosen by the study's rules) stays in its table."""
    row = _row("resnet20-dc30-ft3", placement.METHODS["placed-cal-measured"])
    assert "**-0.03 / 0.39 / 1.18**" in row and f"(results/placement/{CLOSEST})" in row and "| 20 x 10,000 |" in row
    assert losses.plain_file(RESULTS / "placement" / CLOSEST).name == "resnet20-dc30-ft3.fixed.json"
    line = _status_line()
    assert placement.chosen_file(RESULTS).name == PROTOCOL_FILE
    assert f"(results/placement/{PROTOCOL_FILE})" in line and "**0.08 / 0.32 / 0.71**" in line
    assert "100 chips x 10,000 images" in line and "(79.94%)" in line and "within the target by 0.29 points" in line
    assert "chosen on the validation split" in line and "(*)" not in line
    # its plain accuracy is the fixed-mapping campaign of the same model
    assert losses.plain_file(RESULTS / "placement" / PROTOCOL_FILE).name == "resnet20-dc40-ft10.fixed.json"


def test_a_changed_placement_figure_changes_the_table_and_the_status(copy):
    target = copy / "placement" / PROTOCOL_FILE
    lost = losses.losses(target)[0]  # 0.08 / 0.32 / 0.71 today
    _edit(target, lambda doc: doc["rates"][3]["summary"].update(mean=doc["rates"][3]["summary"]["mean"] - 0.006))
    now = f"**{lost[0.1]:.2f} / {lost[0.2]:.2f} / {lost[0.3] + 0.6:.2f}**"
    assert now in _status_line() and f"{lost[0.3] + 0.6 - 1:.2f} points over the target" in _status_line()
    assert study_tables.main(["check"]) == 1
    # a choice made otherwise on the validation split moves the status to that method's campaign
    val = copy / placement.VAL_FOLDER / "resnet20-dc30-ft10.placed-cal.json"
    plain = losses.plain_accuracy(val)
    _edit(val, lambda doc: [e["summary"].update(mean=plain) for e in doc["rates"]])
    assert placement.chosen(copy) == ("resnet20-dc30-ft10", "placed-cal")
    assert "(results/placement/resnet20-dc30-ft10.placed-cal.json)" in _status_line()


def test_a_changed_plain_accuracy_moves_every_loss_of_its_model(copy):
    _edit(copy / "placement" / "resnet20-dc30-ft3.fixed.json",
          lambda doc: doc["rates"][0]["summary"].update(mean=doc["rates"][0]["summary"]["mean"] + 0.01))
    assert "**0.97 / 1.39 / 2.18**" in _row("resnet20-dc30-ft3", placement.METHODS["placed-cal-measured"])
    assert "`resnet20-dc30-ft3` 82.82%" in study_tables.tables()
    _edit(copy / "placement" / "resnet20-dc40-ft10.fixed.json",
          lambda doc: doc["rates"][0]["summary"].update(mean=doc["rates"][0]["summary"]["mean"] + 0.01))
    assert "(80.94%)" in _status_line() and "**1.08 / 1.32 / 1.71**" in _status_line()


def test_a_campaign_not_run_yet_says_so_and_fills_in_when_its_file_lands(copy):
    """fixed-cal (per-chip calibration without placement) is run after the others: its row says
    "not run yet" until its file is committed, then shows it with no code change."""
    folder = copy / "placement"
    for model in placement.MODELS:
        (folder / f"{model}.fixed-cal.json").unlink(missing_ok=True)
        assert f"| {placement.NOT_RUN} |" in _row(model, placement.METHODS["fixed-cal"])
    # a stand-in for the file as placement_table.py will write it: the fixed campaign, calibrated
    landed = folder / "resnet20-dc30-ft3.fixed-cal.json"
    shutil.copyfile(folder / "resnet20-dc30-ft3.fixed.json", landed)

    def calibrated(doc):
        doc["config"].update(calibrate=256, calibrate_sha256="0" * 64)
        for e in doc["rates"]:
            e["summary"]["mean"] = 0.80
    _edit(landed, calibrated)
    row = _row("resnet20-dc30-ft3", placement.METHODS["fixed-cal"])
    assert placement.NOT_RUN not in row and "(results/placement/resnet20-dc30-ft3.fixed-cal.json)" in row
    assert "| 80.00 |" in row and "**1.82 / 1.82 / 1.82**" in row and "| 0.00 / 0.00 / 0.00 |" in row
    assert "resnet20-dc30-ft3.fixed-cal.json" in study_tables.targets_table()  # per-chip calibration's best at width 1
    # without the chosen row's 100-chip campaign the status shows its 20-chip one; without either,
    # the closest row (a test-split choice, marked as such)
    (folder / PROTOCOL_FILE).unlink()
    assert "(results/placement/resnet20-dc40-ft10.placed-cal-measured.json)" in _status_line()
    (folder / "resnet20-dc40-ft10.placed-cal-measured.json").unlink()
    assert f"(results/placement/{CLOSEST})" in _status_line() and "(*)" in _status_line()


def test_without_its_plain_campaign_a_model_says_its_plain_accuracy_is_not_measured(copy):
    (copy / "placement" / "pretrained.fixed.json").unlink()
    text = study_tables.tables()
    assert "the shared model not measured yet" in text
    assert "| n/a / n/a / n/a |" not in _row("pretrained", placement.METHODS["placed"])  # own-chip losses stay
    assert "**n/a / n/a / n/a**" in _row("pretrained", placement.METHODS["placed"])


def test_the_note_says_what_the_manifest_and_the_files_record():
    """(*): resnet20-dc30-ft3 was trained on the whole training split (no validation hold-out), at
    p = 0.3; the shared model's placement + calibration campaign drew other calibration images than
    every later calibrated campaign."""
    entry = json.loads((ROOT / "zoo" / "manifest.json").read_text())["models"]["resnet20-dc30-ft3"]
    training = entry["training"]
    assert not training.get("hold_out_val", False) and training["images"] is None and training["drop_rate"] == 0.3
    assert entry["shortcut"] == "A" and entry["width"] == 1  # it counts with ResNet20 option A at width 1
    assert "resnet20-dc30-ft3" in placement.NOT_CHOSEN and "(*)" in placement.NOTE
    folder = RESULTS / "placement"
    early = losses.read(folder / "pretrained.placed-cal.json")["config"]["calibrate_sha256"]
    later = {losses.read(f)["config"]["calibrate_sha256"] for arch in placement.HEADINGS
             for f in placement.files(RESULTS, arch)
             if losses.read(f)["config"].get("calibrate") and f.name != "pretrained.placed-cal.json"}
    assert later and early not in later


def test_the_placement_folder_s_other_files_are_not_rows():
    """The evidence file (measured targets on a per-rate artifact, a misuse validate now refuses) is
    no method of the study: neither in the table nor in the status or the targets."""
    evidence = "resnet20-dc30-ft3.placed-cal-measured-per-rate-bn.json"
    assert (RESULTS / "placement" / evidence).is_file()
    assert evidence not in [f.name for f in placement.files(RESULTS)]
    assert evidence not in study_tables.tables() + study_tables.status() + study_tables.targets_table()


def test_every_row_of_a_model_not_chosen_on_the_validation_split_says_so():
    """Wherever the generated blocks show resnet20-dc30-ft3 (the placement table, the quick table,
    the targets, the status), its row carries the (*) that the note explains."""
    blocks = study_tables.tables() + "\n" + study_tables.targets_table() + "\n" + study_tables.status()
    shown = [ln for ln in blocks.splitlines() if ln.startswith(("|", "- ")) and "`resnet20-dc30-ft3`:" in ln]
    assert len(shown) >= 10
    assert all("(*)" in ln for ln in shown), [ln for ln in shown if "(*)" not in ln]
    assert all("chosen before the validation split existed" in ln
               for ln in study_tables.status().splitlines() if "`resnet20-dc30-ft3`:" in ln)


def test_the_choice_on_the_validation_split_is_the_smallest_largest_loss_there(copy):
    """issue 36: the candidates (two models x two calibration targets) ran on the validation split;
    the chosen one has the smallest largest loss against its own plain accuracy there, and a changed
    figure changes the choice."""
    folder = copy / placement.VAL_FOLDER
    found = placement.val_files(copy)  # ResNet20's (VGG13-BN's choice is its own: test below)
    assert len(found) == len(placement.candidates("resnet20a")) == 8
    for f in found:
        doc = losses.read(f)
        assert doc["info"]["split"] == "val" and doc["config"]["images"] == 5000 and doc["config"]["place"]
        assert losses.plain_file(f).name == f"{losses.stem(f)}.plain.json"
    worst = {(losses.stem(f), f.name.split(".")[1]): max(losses.losses(f)[0].values()) for f in found
             if placement.eligible(losses.stem(f))}
    # only models trained with the validation images held out are eligible: not the one trained on them
    assert {m for m, _ in worst} == {"resnet20-dc30-ft10", "resnet20-dc40-ft10"}
    assert not placement.eligible("resnet20-dc30-ft3")
    # today: p = 0.4 with measured targets loses least at its worst rate, by more than a standard error
    assert placement.chosen(copy) == min(worst, key=worst.get) == ("resnet20-dc40-ft10", "placed-cal-measured")
    # the one-standard-error rule, with p = 0.4 two points worse at 30%: N = 1,024 calibration images
    # lose least, by less than one standard error of that mean, so the cheaper N = 256 is chosen
    _edit(folder / "resnet20-dc40-ft10.placed-cal-measured.json",
          lambda doc: doc["rates"][3]["summary"].update(mean=doc["rates"][3]["summary"]["mean"] - 0.02))
    worst[("resnet20-dc40-ft10", "placed-cal-measured")] += 2
    choice = placement.chosen(copy)
    best = min(worst, key=worst.get)
    assert best == ("resnet20-dc30-ft10", "placed-cal1024-measured")
    assert choice == ("resnet20-dc30-ft10", "placed-cal-measured")
    margin = worst[choice] - worst[best]
    big = folder / "resnet20-dc30-ft10.placed-cal1024-measured.json"
    se = placement.standard_error(losses.Best(big, *losses.losses(big)))
    assert 0 < margin <= se
    # 1,024 images a standard error better still: then it is worth its cost
    _edit(big, lambda doc: doc["rates"][3]["summary"].update(mean=doc["rates"][3]["summary"]["mean"] + 2 * se / 100))
    assert placement.chosen(copy) == best
    shutil.copyfile(RESULTS / placement.VAL_FOLDER / big.name, big)
    assert placement.chosen(copy) == choice
    text = placement.validation_table(copy).split("### Chosen on the validation split, per method")[0]
    assert sum("| yes |" in ln for ln in text.splitlines()) == 1
    # a candidate that trained on the validation images is not chosen, however well it does there
    ft3 = folder / "resnet20-dc30-ft3.placed-cal.json"
    ft3_plain = losses.plain_accuracy(ft3)
    _edit(ft3, lambda doc: [e["summary"].update(mean=ft3_plain) for e in doc["rates"]])
    assert placement.chosen(copy) == choice
    # another eligible candidate that loses nothing at any rate: the choice moves to it
    other = next(k for k in worst if k != choice)
    plain = losses.plain_accuracy(folder / f"{other[0]}.{other[1]}.json")
    _edit(folder / f"{other[0]}.{other[1]}.json",
          lambda doc: [e["summary"].update(mean=plain) for e in doc["rates"]])
    assert placement.chosen(copy) == other
    # a candidate not committed: no choice yet, and the table says so
    (folder / f"{other[0]}.{other[1]}.json").unlink()
    missing = f"| `{other[0]}` | {placement.METHODS.get(other[1], other[1])} | {placement.NOT_RUN} |"
    assert placement.chosen(copy) is None and missing in placement.validation_table(copy)



@pytest.mark.parametrize("model", ["resnet20-dc30-ft10", "resnet20-dc40-ft10", "vgg13-dc30"])
def test_the_retrained_model_s_campaigns_name_its_zoo_checkpoint(model):
    """Provenance (issue 36): every campaign of a model retrained with the validation split held
    out, on the validation and the test split, records the sha256 of the checkpoint its artifact was
    exported from, and it is the zoo's file (zoo/manifest.json)."""
    zoo_sha = json.loads((ROOT / "zoo" / "manifest.json").read_text())["models"][model]["sha256"]
    found = sorted((RESULTS / placement.VAL_FOLDER).glob(f"{model}.*.json")) + sorted(
        (RESULTS / placement.FOLDER).glob(f"{model}.*.json"))
    assert len(found) >= 4
    for f in found:
        prov = losses.read(f)["info"]["provenance"]
        assert prov["checkpoint_sha256"] == zoo_sha, f.name


def test_the_protocol_campaigns_are_headline_rows_and_their_first_20_chips_are_the_20_chip_campaign_s():
    """The paper's 100 chips ran for headline rows only (``protocol_rows``: the eligible placement
    candidates on the validation split, among them the chosen one and one chosen before a later
    candidate moved the choice; each other method's row, chosen per method on the validation split
    or a one-model table's); the same seed draws the same chips, so each one's first 20 chips give
    its 20-chip campaign's accuracies exactly; it stands in for that campaign in the status and the
    targets."""
    choice = placement.chosen(RESULTS)
    assert choice is not None
    full = placement.path(RESULTS, *choice, protocol=True)
    assert full in sorted(RESULTS.joinpath("placement").glob(f"*.{placement.PROTOCOL}.json"))
    assert "chosen on the validation split" in placement.caveat(full)
    for full in sorted(RESULTS.joinpath("placement").glob(f"*.{placement.PROTOCOL}.json")):
        model, method = full.name.split(".")[:2]
        assert (model, method) in placement.protocol_rows(RESULTS, placement.ARCH[model]), full.name
        twenty = placement.path(RESULTS, model, method)
        assert twenty.is_file()
        a, b = losses.read(full), losses.read(twenty)
        assert a["config"]["runs"] == 100 and b["config"]["runs"] == 20
        same = {k: v for k, v in a["config"].items() if k != "runs"}
        assert same == {k: v for k, v in b["config"].items() if k != "runs"}
        for ra, rb in zip(a["rates"], b["rates"]):
            assert ra["sa1"] == rb["sa1"] and len(ra["runs"]) == 100
            for run, chip in rb["runs"].items():
                assert ra["runs"][run]["accuracy"] == chip["accuracy"], (ra["sa1"], run)
        table = placement.files(RESULTS, placement.ARCH[model])
        assert full in table and twenty not in table
        assert f"(results/placement/{full.name})" in study_tables.tables()


def test_the_headline_rows_are_the_eligible_candidates_and_each_other_method_s_chosen_row():
    """ResNet20 (four models, two eligible): its eligible placement candidates on the validation
    split that the test table runs (not placement on the rate-0 artifact or 1,024 calibration
    images, which are validation-only candidates), and each other method's row chosen there
    (``chosen_for``); VGG13-BN's one model has a headline row per method with nothing to choose."""
    resnet = placement.protocol_rows(RESULTS, "resnet20a")
    per_method = [placement.chosen_for(RESULTS, "resnet20a", v) for v in placement.PER_METHOD]
    assert None not in per_method and [v for _, v in per_method] == ["fixed", "fixed-cal", "placed"]
    assert resnet == [(m, v) for m, v in placement.candidates("resnet20a")
                      if placement.eligible(m) and v in ("placed-cal", "placed-cal-measured")] + per_method
    assert all(placement.eligible(m) for m, _ in resnet)
    assert not any(m == "resnet20-dc30-ft3" for m, _ in resnet)  # not eligible: trained on the validation images
    assert sorted(placement.protocol_rows(RESULTS, "vgg13")) == sorted(
        [("vgg13-dc30", v) for v in ("fixed", "fixed-cal", "placed", "placed-cal", "placed-cal-measured")])


def test_each_other_method_s_row_is_chosen_on_the_validation_split(copy):
    """issue 36, each model's best row under each method: for ResNet20 (two eligible models) each
    PER_METHOD method's model has the smallest largest loss against its own plain accuracy on the
    validation split (by the one-standard-error rule), each candidate run there with the options of
    the method's test-split campaigns; a changed figure moves the choice, a missing file leaves none."""
    options = {"fixed": {}, "fixed-cal": {"calibrate": 256}, "placed": {"place": True}}
    for method in placement.PER_METHOD:
        candidates = placement.method_candidates("resnet20a", method)
        assert candidates == [("resnet20-dc30-ft10", method), ("resnet20-dc40-ft10", method)]
        worst = {}
        for model, _ in candidates:
            f = placement.val_path(copy, model, method)
            cfg, test = losses.read(f)["config"], losses.read(placement.path(copy, model, method))["config"]
            assert losses.read(f)["info"]["split"] == "val" and cfg["runs"] == 10 and cfg["images"] == 5000
            for key in ("sa1", "seed", "stats_rate", "device", "calibrate", "calibration_targets"):
                assert cfg.get(key) == test.get(key), (method, model, key)
            assert bool(cfg.get("place")) == bool(test.get("place")) == bool(options[method].get("place"))
            assert cfg.get("calibrate") == options[method].get("calibrate")
            assert losses.plain_file(f).name == f"{model}.plain.json"
            worst[model] = max(losses.losses(f)[0].values())
        model, _ = placement.chosen_for(copy, "resnet20a", method)
        best = min(worst, key=worst.get)
        best_file = placement.val_path(copy, best, method)
        se = placement.standard_error(losses.Best(best_file, *losses.losses(best_file)))
        assert worst[model] <= worst[best] + se and (model == best or model == candidates[0][0]), method
        other = next(m for m in worst if m != model)
        f = placement.val_path(copy, other, method)
        plain = losses.plain_accuracy(f)
        _edit(f, lambda doc, plain=plain: [e["summary"].update(mean=plain) for e in doc["rates"]])  # loses nothing
        assert placement.chosen_for(copy, "resnet20a", method) == (other, method)
        assert (other, method) in placement.protocol_rows(copy, "resnet20a")
        f.unlink()
        assert placement.chosen_for(copy, "resnet20a", method) is None
        assert all(v != method for _, v in placement.protocol_rows(copy, "resnet20a"))
    text = placement.validation_table(copy)
    assert "per method (ResNet20, width 1)" in text and placement.NOT_RUN in text
    assert "per method" not in placement.validation_table(copy, "vgg13")  # one model: nothing to choose
    assert placement.chosen_for(copy, "vgg13", "fixed") == ("vgg13-dc30", "fixed")


def test_the_per_method_table_marks_each_method_s_choice_once():
    """The generated table says "yes" on exactly one row per method: the row of chosen_for's model."""
    lines = placement.validation_table(RESULTS).split("per method (ResNet20, width 1)")[1].splitlines()
    for method in placement.PER_METHOD:
        model = placement.chosen_for(RESULTS, "resnet20a", method)[0]
        rows = [ln for ln in lines if ln.startswith("| ") and f"results/val/{model}.{method}.json" in ln]
        assert len(rows) == 1 and "| yes |" in rows[0], method
        assert sum("| yes |" in ln and f".{method}.json" in ln for ln in lines) == 1, method


def test_each_architecture_has_its_own_placement_table_and_its_own_choice(copy):
    """VGG13-BN at width 1 (`vgg13-dc30`) has a table with placement of its own after VGG13-BN's, and
    its choice on the validation split is made among its own candidates: its files never move
    ResNet20's choice, and its chosen row's test-split campaign becomes VGG13-BN's status at width 1."""
    assert placement.models_of("vgg13") == ["vgg13-dc30"]
    assert set(placement.ARCH) == set(placement.MODELS) and set(placement.ARCH.values()) == set(placement.HEADINGS)
    assert "vgg13-dc30" not in placement.models_of("resnet20a")
    text = study_tables.tables()
    assert text.index("### VGG13-BN\n") < text.index("### VGG13-BN, with placement") \
        < text.index("### Chosen on the validation split (VGG13-BN, width 1, with placement)")
    resnet = placement.chosen(copy)
    val, test = copy / placement.VAL_FOLDER, copy / placement.FOLDER
    # stand-ins for VGG13-BN's files as placement_table.py and `rram validate --split val` write them
    for method in ("plain", "placed-cal", "placed-cal-measured"):
        shutil.copyfile(val / f"resnet20-dc40-ft10.{method}.json", val / f"vgg13-dc30.{method}.json")
    for method in ("fixed", "placed-cal", "placed-cal-measured"):
        shutil.copyfile(test / f"resnet20-dc30-ft10.{method}.json", test / f"vgg13-dc30.{method}.json")
    assert placement.chosen(copy, "vgg13") == ("vgg13-dc30", "placed-cal-measured")
    assert placement.chosen(copy) == resnet  # ResNet20's choice is untouched
    plain = losses.plain_accuracy(val / "vgg13-dc30.placed-cal.json")
    _edit(val / "vgg13-dc30.placed-cal.json", lambda doc: [e["summary"].update(mean=plain) for e in doc["rates"]])
    assert placement.chosen(copy, "vgg13") == ("vgg13-dc30", "placed-cal") and placement.chosen(copy) == resnet
    line = _status_line("VGG13-BN", "1")
    assert "(results/placement/vgg13-dc30.placed-cal.json)" in line and "chosen on the validation split" in line
    assert "(results/placement/vgg13-dc30.placed-cal.json)" not in _status_line()
    (val / "vgg13-dc30.placed-cal.json").unlink()
    assert placement.chosen(copy, "vgg13") is None

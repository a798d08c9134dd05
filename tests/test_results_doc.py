"""docs/RESULTS.md (issue 16) and docs/runtime.md's calibration table (issue 12): their tables are
what the committed campaign files give, and each file's summaries are what its own per-chip
accuracies give."""
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from runtime.results import summarize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import study_tables  # noqa: E402  (benchmarks/study_tables.py)

# every study-protocol `rram validate` results file (sensitivity/ holds `rram sensitivity` reports,
# sweep/ `rram eval --json` outputs, quick/ smaller campaigns that the text quotes, nonideal/ the
# device non-ideality table's campaigns, checked by tests/test_nonideal_doc.py, bench/ benchmark
# records, checked by the test of their document's block, training/ a stopped training's log, checked
# by the claim that quotes it)
FILES = sorted(p for p in (ROOT / "docs" / "results").glob("*/*.json")
               if p.parent.name not in ("sensitivity", "sweep", "quick", "nonideal", "bench", "training"))


def test_the_tables_in_the_documents_match_the_results_files(capsys):
    assert FILES, "no campaign files under docs/results/"
    assert study_tables.main(["check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("which", [0, -1])
def test_a_changed_figure_is_caught(tmp_path, monkeypatch, which):
    """The check can fail: in a copy of docs/results/ that passes, one rate's mean moved by one
    point in one file makes it fail."""
    copy = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", copy)
    monkeypatch.setattr(study_tables, "RESULTS", copy)
    assert study_tables.main(["check"]) == 0
    target = copy / FILES[which].relative_to(ROOT / "docs" / "results")
    doc = json.loads(target.read_text())
    next(r for r in doc["rates"] if r["sa1"] > 0)["summary"]["mean"] -= 0.01
    target.write_text(json.dumps(doc))
    assert study_tables.main(["check"]) == 1


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_each_file_is_a_complete_study_campaign_whose_summaries_re_derive(path):
    doc = json.loads(path.read_text())
    assert doc["format"] == "rram-validate-results" and doc["complete"]
    cfg = doc["config"]
    if path.parent.name == "val":  # the choice on the validation split (study_placement.validation_table)
        assert cfg["images"] == 5000 and doc["info"]["split"] == "val" and cfg["device"]["name"] == "paper"
        assert cfg["runs"] == (1 if path.name.endswith(".plain.json") else 10)
    else:
        assert cfg["images"] == 10000 and cfg["runs"] >= 20 and cfg["device"]["name"] == "paper"
    plain_only = path.parent.name == "val" and path.name.endswith(".plain.json")  # SA1 0 alone
    assert [round(r["sa1"], 6) for r in doc["rates"]] == ([0.0] if plain_only else [0.0, 0.1, 0.2, 0.3])
    if path.parent.name in ("placement", "val"):  # benchmarks/placement_table.py's names: MODEL.VARIANT.json
        assert ("-cal" in path.name) == bool(cfg.get("calibrate"))
        assert (".placed" in path.name) == bool(cfg.get("place"))
    else:
        assert (".calibrated" in path.name) == bool(cfg.get("calibrate"))
    if path.parent.name in study_tables.MODELS:  # the tables' folders: the name says the method
        assert (".placed" in path.name) == bool(cfg.get("place"))
    for r in doc["rates"]:
        again = summarize([run["accuracy"] for _, run in sorted(r["runs"].items(), key=lambda kv: int(kv[0]))])
        for key in ("n", "mean", "std", "min", "max"):
            assert again[key] == pytest.approx(r["summary"][key], abs=1e-12), (r["sa1"], key)


def figure_commands() -> list[str]:
    """The `rram plot` blocks of docs/RESULTS.md, continuation lines joined."""
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    blocks = re.findall(r"```sh\n(rram plot .*?)```", text, re.S)
    return [b.replace("\\\n", " ").strip() for b in blocks]


def test_the_figures_are_drawn_by_their_commands_as_written(tmp_path):
    """Each figure's command, as RESULTS.md shows it, runs from the checkout on the committed
    files, and names a figure that is committed (drawn here into a temporary folder instead)."""
    from toolchain.cli import main

    commands = figure_commands()
    assert len(commands) >= 2
    for i, command in enumerate(commands):
        argv = shlex.split(command)[1:]
        out = argv.index("--out") + 1
        assert (ROOT / argv[out]).is_file(), f"{argv[out]} is not committed"
        argv[out] = str(tmp_path / f"figure-{i}.png")
        argv = [str(ROOT / a) if a.startswith("docs/") else a for a in argv]
        assert main(argv) == 0
        assert (tmp_path / f"figure-{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ the figures of the prose (issue 36)

import study_losses as losses  # noqa: E402  (benchmarks/study_losses.py)

# drop-connect rates and widths, and the boxes' whiskers (1.5 IQR): settings, not measurements
PARAMETERS = {"0.1", "0.2", "0.3", "0.4", "0.25", "0.35", "0.5", "1.5"}  # drop-connect rates, widths


def _mean(rel: str, rate: float) -> float:
    return 100 * losses.means(study_tables.RESULTS / rel)[rate]


def _losses(rel: str, which: int) -> str:
    """'a / b / c': the losses at 10 / 20 / 30% of a file, against plain (0) or its own chips (1)."""
    return losses.fmt_losses(losses.losses(study_tables.RESULTS / rel)[which], losses.RATES)


def _placement_claim(variant: str) -> str:
    """The zoo model's full-split losses with placement and calibration (docs/results/placement/),
    against the SA1 0 mean of its fixed-mapping campaign, and where they stand against the target."""
    folder = study_tables.RESULTS / "placement"
    docs = {v: json.loads((folder / f"resnet20-dc30-ft3.{v}.json").read_text()) for v in ("fixed", variant)}
    assert not docs["fixed"]["config"].get("calibrate") and not docs["fixed"]["config"].get("place")
    mean = {v: [100 * e["summary"]["mean"] for e in doc["rates"]] for v, doc in docs.items()}
    lost = [mean["fixed"][0] - m for m in mean[variant][1:]]
    inside = [f"{r}" for r, x in zip((10, 20, 30), lost) if x <= 1]
    over = [(r, x - 1) for r, x in zip((10, 20, 30), lost) if x > 1]
    return (f"loses {' / '.join(f'{x:.2f}' for x in lost)} points against its plain fault-free accuracy: inside the "
            f"target at {' and '.join(inside)}% SA1, " + ", ".join(f"{x:.2f} points over it at {r}%" for r, x in over))


def _protocol_claim(model: str = "resnet20-dc40-ft10", chips: int = 100) -> str:
    """A row chosen on the validation split, on the paper's 100 chips (or its 20-chip campaign): its
    losses against its plain fault-free accuracy, where they stand against the target, and its worst
    chip at 30%."""
    folder = study_tables.RESULTS / "placement"
    full = folder / f"{model}.placed-cal-measured{'.100-chips' if chips == 100 else ''}.json"
    assert losses.read(full)["config"]["runs"] == chips
    plain, lost = losses.plain_accuracy(full), losses.losses(full)[0]
    inside = [f"{100 * r:g}" for r in losses.RATES if lost[r] <= 1]
    over = [(r, lost[r] - 1) for r in losses.RATES if lost[r] > 1]
    worst = next(e["summary"]["min"] for e in losses.read(full)["rates"] if e["sa1"] == 0.3)
    return (f"loses {losses.fmt_losses(lost, losses.RATES)} points against its plain fault-free accuracy "
            f"({100 * plain:.2f}%): inside the target at {' and '.join(inside)}% SA1"
            + "".join(f", {x:.2f} points over it at {100 * r:g}%" for r, x in over)
            + f" (worst of the {chips} chips at 30%: {100 * worst:.2f}%)")


def _kept_at_30(model: str) -> str:
    """A chosen row's mean accuracy at 30% SA1 on the paper's 100 chips."""
    return f"{_mean(f'placement/{model}.placed-cal-measured.100-chips.json', 0.3):.2f}%"


def _val_worst(model: str, method: str) -> str:
    """A validation-split candidate's loss at 30% SA1 against its plain accuracy there."""
    return f"{losses.losses(study_tables.RESULTS / 'val' / f'{model}.{method}.json')[0][0.3]:.2f}"


def _inside(rel: str) -> bool:
    """A file's losses against plain are within the target at every rate (study_losses' verdict)."""
    path = study_tables.RESULTS / rel
    return losses.Best(path, *losses.losses(path)).met == "yes"


def _first_epochs() -> str:
    """MobileNetV2's stopped p = 0.3 run against VGG13-BN's zoo model: training accuracy (drop-connect
    on) after each of the first three epochs, from the committed log and the zoo checkpoint's history."""
    from toolchain.checkpoints import load_checkpoint

    log = json.loads((study_tables.RESULTS / "training" / "mobilenetv2-dc30-stopped.log.json").read_text())
    vgg = load_checkpoint("vgg13-dc30").meta["history"]  # by its zoo name: the file's sha256 checked

    def fmt(epochs):
        return " / ".join(f"{100 * e['train_acc']:.0f}" for e in epochs[:3])
    return f"{fmt(log['epochs'])}% after its first three epochs against VGG13-BN's {fmt(vgg)}%"


# (document, the text as written, the same text made from the files)
WIDE, WIDE_CAL = "resnet20a/wide-dc30-scratch.json", "resnet20a/wide-dc30-scratch.calibrated.json"
CLAIMS = [
    ("docs/RESULTS.md", "19 / 29 / 34% after its first three epochs against VGG13-BN's 23 / 37 / 48%", _first_epochs),
    ("docs/RESULTS.md", "calibration alone (to its BN targets) loses 0.92 / 1.75 / 2.88 points",
     lambda: f"calibration alone (to its BN targets) loses {_losses('placement/vgg13-dc30.fixed-cal.json', 0)} points"),
    ("docs/RESULTS.md", "calibration to the BN targets loses 0.38 / 0.56 / 0.96 points, inside the target too",
     lambda: f"calibration to the BN targets loses {_losses('placement/vgg13-dc30.placed-cal.json', 0)} points, "
             + ("inside the target too" if _inside('placement/vgg13-dc30.placed-cal.json') else "over the target")),
    ("docs/RESULTS.md", "with the per-rate BN, loses -0.07 / 57.83 / 48.66 points",
     lambda: f"with the per-rate BN, loses {_losses('placement/vgg13-dc30.placed.json', 0)} points"),
    ("docs/RESULTS.md", "84.37% to 83.95%", lambda: f"{_mean(WIDE, 0.0):.2f}% to {_mean(WIDE_CAL, 0.0):.2f}%"),
    ("README.md", "loses 1.07 / 1.87 / 3.02 points", lambda: f"loses {_losses(WIDE_CAL, 0)} points"),
    ("README.md", "(0.65 / 1.45 / 2.60 against", lambda: f"({_losses(WIDE_CAL, 1)} against"),
    ("README.md", "per-rate BN 2.77 / 7.76 / 11.86", lambda: f"per-rate BN {_losses(WIDE, 0)}"),
    ("docs/RESULTS.md", "loses 0.47 / 0.96 / 1.73 points against its plain fault-free accuracy: inside the target at "
                        "10 and 20% SA1, 0.73 points over it at 30%", lambda: _placement_claim("placed-cal")),
    ("docs/RESULTS.md", "loses -0.03 / 0.39 / 1.18 points against its plain fault-free accuracy: inside the target at "
                        "10 and 20% SA1, 0.18 points over it at 30%", lambda: _placement_claim("placed-cal-measured")),
    ("README.md", "loses 0.14 / 0.61 / 1.32 points against its plain fault-free accuracy (83.16%)",
     lambda: _protocol_claim("resnet20-dc30-ft10").split(": inside")[0]),
    ("README.md", "loses 0.08 / 0.32 / 0.71 points against its plain fault-free accuracy (79.94%)",
     lambda: _protocol_claim().split(": inside")[0]),
    ("README.md", "(81.84% against 79.23% at 30% SA1)",
     lambda: f"({_kept_at_30('resnet20-dc30-ft10')} against {_kept_at_30('resnet20-dc40-ft10')} at 30% SA1)"),
    ("docs/RESULTS.md", "loses 0.14 / 0.61 / 1.32 points against its plain fault-free accuracy (83.16%): inside the "
                        "target at 10 and 20% SA1, 0.32 points over it at 30% (worst of the 100 chips at 30%: 81.35%)",
     lambda: _protocol_claim("resnet20-dc30-ft10")),
    ("docs/RESULTS.md", "loses 0.08 / 0.32 / 0.71 points against its plain fault-free accuracy (79.94%): inside the "
                        "target at 10 and 20 and 30% SA1 (worst of the 100 chips at 30%: 78.51%)",
     _protocol_claim),
    ("docs/RESULTS.md", "loses 0.02 / 0.30 / 0.56 points against its plain fault-free accuracy (83.89%): inside the "
                        "target at 10 and 20 and 30% SA1 (worst of the 20 chips at 30%: 82.85%)",
     lambda: _protocol_claim("vgg13-dc30", chips=20)),
    ("docs/RESULTS.md", "loses 0.04 / 0.27 / 0.58 points against its plain fault-free accuracy (83.89%): inside the "
                        "target at 10 and 20 and 30% SA1 (worst of the 100 chips at 30%: 82.74%)",
     lambda: _protocol_claim("vgg13-dc30")),
    ("docs/RESULTS.md", "With the paper's per-rate BN alone it loses 13.23 / 22.64 / 8.86 points",
     lambda: f"With the paper's per-rate BN alone it loses {_losses('placement/vgg13-dc30.fixed.json', 0)} points"),
    ("docs/RESULTS.md", "keeps 81.84% at 30% SA1 against 79.23% for p = 0.4",
     lambda: f"keeps {_kept_at_30('resnet20-dc30-ft10')} at 30% SA1 against {_kept_at_30('resnet20-dc40-ft10')} "
             f"for p = 0.4"),
    ("docs/RESULTS.md", "1.08 at 30% SA1 with measured targets",
     lambda: f"{_val_worst('resnet20-dc40-ft10', 'placed-cal-measured')} at 30% SA1 with measured targets"),
    ("docs/RESULTS.md", "10 epochs instead of 3: 1.45 at 30% SA1 against 1.38",
     lambda: f"10 epochs instead of 3: {_val_worst('resnet20-dc30-ft10', 'placed-cal-measured')} at 30% SA1 "
             f"against {_val_worst('resnet20-dc30-ft3', 'placed-cal-measured')}"),
    ("docs/RESULTS.md", "measured targets instead of BN targets: 1.45 against 1.84",
     lambda: f"measured targets instead of BN targets: {_val_worst('resnet20-dc30-ft10', 'placed-cal-measured')} "
             f"against {_val_worst('resnet20-dc30-ft10', 'placed-cal')}"),
    ("docs/RESULTS.md", "every chip on the rate-0 artifact: 4.24",
     lambda: f"every chip on the rate-0 artifact: {_val_worst('resnet20-dc30-ft10', 'placed-rate0')}"),
    ("docs/RESULTS.md", "1,024 calibration images instead of 256: 1.37",
     lambda: f"1,024 calibration images instead of 256: {_val_worst('resnet20-dc30-ft10', 'placed-cal1024-measured')}"),
]



def test_the_loss_is_taken_against_the_plain_campaign_of_the_same_model():
    cal = study_tables.RESULTS / WIDE_CAL
    assert losses.plain_file(cal) == study_tables.RESULTS / WIDE
    plain, own = losses.losses(cal)
    for r in losses.RATES:
        assert plain[r] == pytest.approx(_mean(WIDE, 0.0) - _mean(WIDE_CAL, r))
        assert own[r] == pytest.approx(_mean(WIDE_CAL, 0.0) - _mean(WIDE_CAL, r))
    quick = study_tables.RESULTS / "quick" / "resnet20-dc30-ft3.placed-cal-2000.json"
    assert losses.plain_file(quick).name == "resnet20-dc30-ft3.fixed-2000.json"
    assert losses.method(quick) == "placement + per-chip calibration (256 images)"


def prose(doc: str) -> str:
    """The hand-written text of a document, whitespace collapsed: RESULTS.md without its generated
    blocks, code blocks and link targets; README.md's study paragraph only."""
    text = (ROOT / doc).read_text()
    if doc == "README.md":
        text = text[text.index("**The paper's study, reproduced"):text.index("![ResNet20: per-rate BN")]
    text = re.sub(r"<!-- study-(\w+):begin.*?<!-- study-\1:end -->", " ", text, flags=re.S)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("doc, written, make", CLAIMS, ids=[c[1] for c in CLAIMS])
def test_each_figure_of_the_prose_is_what_the_files_give(doc, written, make):
    assert make() == written
    assert written in prose(doc), f"{doc} no longer says {written!r}"


@pytest.mark.parametrize("doc", ["docs/RESULTS.md", "README.md"])
def test_the_prose_states_no_figure_that_is_not_checked(doc):
    """Every number with a decimal point in the hand-written text is in a checked claim or is a
    parameter (a drop-connect rate, a width): the figures come from the tables or from CLAIMS."""
    text = prose(doc)
    for d, written, _ in CLAIMS:
        if d == doc:
            text = text.replace(written, " ")
    loose = [n for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text) if n not in PARAMETERS]
    assert not loose, f"{doc}: figures not generated nor checked against the files: {loose}"


def test_the_status_names_the_zoo_as_it_is():
    from toolchain import zoo

    status = prose("docs/RESULTS.md").split("## Status of the study")[1].split("## Set-up")[0]
    named = re.findall(r"\*\*In the zoo\*\*.*?: (.*?)\. (?:It is|They are)", status)[0]
    assert sorted(re.findall(r"`([\w-]+)`", named)) == zoo.names()


def test_the_status_is_what_the_files_say():
    """'ResNet20 at width 1 meets the target on the study protocol ... VGG13-BN at width 1 meets it on
    20 chips per rate': the study campaigns that lose at most 1 point against plain at every rate
    are the p = 0.4 ResNet20's placement + calibration to measured targets (its 100 chips and their
    first 20) and VGG13-BN's `vgg13-dc30` with the same method (100 chips and their first 20) and with
    placement + calibration to its BN targets (20 chips; not the method chosen on the validation split,
    the prose says it is inside too), on the test split; the one
    quick row inside it at every rate it measured is the zoo model's placement + calibration campaign."""
    text = prose("docs/RESULTS.md")
    assert "ResNet20 at width 1 meets the target on the study protocol, by the target's own measure; VGG13-BN at " \
           "width 1 meets it too, on the paper's 100 chips per rate; MobileNetV2's width-1 model is still " \
           "training." in text
    met = [f.relative_to(study_tables.RESULTS).as_posix() for f in FILES  # the test split's (val/ chooses)
           if f.parent.name != "val" and losses.Best(f, *losses.losses(f)).met == "yes"]
    assert met == ["placement/resnet20-dc40-ft10.placed-cal-measured.100-chips.json",
                   "placement/resnet20-dc40-ft10.placed-cal-measured.json",
                   "placement/vgg13-dc30.placed-cal-measured.100-chips.json",
                   "placement/vgg13-dc30.placed-cal-measured.json",
                   "placement/vgg13-dc30.placed-cal.json"], met
    inside = [f.name for f in study_tables.quick_files() if losses.Best(f, *losses.losses(f)).worst <= losses.TARGET]
    assert inside == ["resnet20-dc30-ft3.placed-cal-2000.json"]

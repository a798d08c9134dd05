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
# sweep/ `rram eval --json` outputs, quick/ smaller campaigns that the text quotes)
FILES = sorted(p for p in (ROOT / "docs" / "results").glob("*/*.json")
               if p.parent.name not in ("sensitivity", "sweep", "quick"))


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
    assert cfg["images"] == 10000 and cfg["runs"] >= 20 and cfg["device"]["name"] == "paper"
    assert [round(r["sa1"], 6) for r in doc["rates"]] == [0.0, 0.1, 0.2, 0.3]
    assert (".calibrated" in path.name) == bool(cfg.get("calibrate"))
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

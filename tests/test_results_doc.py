"""docs/RESULTS.md (issue 16): its tables are what the committed campaign files give, and each
file's summaries are what its own per-chip accuracies give."""
import json
import sys
from pathlib import Path

import pytest

from runtime.results import summarize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import study_tables  # noqa: E402  (benchmarks/study_tables.py)

FILES = sorted((ROOT / "docs" / "results").glob("*/*.json"))


def test_the_tables_in_results_md_match_the_results_files(capsys):
    assert FILES, "no campaign files under docs/results/"
    assert study_tables.main(["check"]) == 0, capsys.readouterr().err


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    """The check can fail: one chip's accuracy changed in a copy of a file changes the table."""
    src = FILES[0]
    copy = tmp_path / "results" / src.parent.name / src.name
    copy.parent.mkdir(parents=True)
    doc = json.loads(src.read_text())
    rate = next(r for r in doc["rates"] if r["sa1"] > 0)
    rate["summary"]["mean"] -= 0.01
    copy.write_text(json.dumps(doc))
    monkeypatch.setattr(study_tables, "RESULTS", tmp_path / "results")
    assert study_tables.generated_block((ROOT / "docs" / "RESULTS.md").read_text()) != study_tables.tables()


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_each_file_is_a_complete_study_campaign_whose_summaries_re_derive(path):
    doc = json.loads(path.read_text())
    assert doc["format"] == "rram-validate-results" and doc["complete"]
    cfg = doc["config"]
    assert cfg["images"] == 10000 and cfg["runs"] >= 20 and cfg["device"]["name"] == "paper"
    assert [round(r["sa1"], 6) for r in doc["rates"]] == [0.0, 0.1, 0.2, 0.3]
    assert path.name.endswith(".calibrated.json") == bool(cfg.get("calibrate"))
    for r in doc["rates"]:
        again = summarize([run["accuracy"] for _, run in sorted(r["runs"].items(), key=lambda kv: int(kv[0]))])
        for key in ("n", "mean", "std", "min", "max"):
            assert again[key] == pytest.approx(r["summary"][key], abs=1e-12), (r["sa1"], key)

"""benchmarks/placement_table.py's 100-chip campaigns outlive a session (issue 36): ``save`` keeps a
running campaign's chips (its journal's included) in docs/results/placement/in-progress/, ``protocol``
continues from them on another machine, ``collect`` drops them once the campaign is complete."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import placement_table  # noqa: E402  (benchmarks/placement_table.py)

from runtime.results import JOURNAL_FORMAT, VERSION, config_digest, journal_path  # noqa: E402

MODEL, VARIANT = "vgg13-dc30", "fixed"


@pytest.fixture
def stopped(tmp_path, monkeypatch):
    """RUNDIR with a 100-chip campaign stopped after 20 chips per rate and one more in its journal
    (the committed 20-chip campaign's chips, its config asking for 100); docs/results/placement/ in a
    temporary folder."""
    results = tmp_path / "results"
    monkeypatch.setattr(placement_table, "RESULTS", results)
    monkeypatch.setattr(placement_table, "IN_PROGRESS", results / "in-progress")
    monkeypatch.setattr(placement_table, "ROOT", tmp_path)
    doc = json.loads((ROOT / "docs" / "results" / "placement" / f"{MODEL}.{VARIANT}.json").read_text())
    doc["config"]["runs"], doc["complete"] = 100, False
    run = placement_table.protocol_file(tmp_path / "runs", MODEL, VARIANT)
    run.parent.mkdir()
    run.write_text(json.dumps(doc))
    extra = dict(doc["rates"][1]["runs"]["0"], accuracy=0.5)
    journal_path(run).write_text(
        json.dumps({"format": JOURNAL_FORMAT, "version": VERSION, "config_sha256": config_digest(doc["config"])})
        + "\n" + json.dumps({"rate": 1, "run": 20, "record": extra}) + "\n")
    return run


def test_save_keeps_the_chips_of_the_file_and_of_its_journal(stopped):
    line = placement_table.save(stopped.parent, MODEL, VARIANT)
    assert line == f"{MODEL} {VARIANT}: 81 of 400 chips"
    saved = json.loads((placement_table.IN_PROGRESS / f"{MODEL}.{VARIANT}.100-chips.json").read_text())
    assert not saved["complete"] and saved["config"]["runs"] == 100
    assert [len(e["runs"]) for e in saved["rates"]] == [20, 21, 20, 20]
    assert saved["rates"][1]["summary"]["n"] == 21 and saved["rates"][1]["summary"]["min"] == 0.5
    assert saved["info"]["provenance"]["checkpoint_sha256"]  # the campaign's record travels with it


def test_protocol_continues_from_the_saved_chips_only_where_rundir_has_none(stopped, monkeypatch):
    placement_table.save(stopped.parent, MODEL, VARIANT)
    saved = (placement_table.IN_PROGRESS / f"{MODEL}.{VARIANT}.100-chips.json").read_bytes()
    commands = []
    monkeypatch.setattr(placement_table.subprocess, "run", lambda cmd, check: commands.append(cmd))
    stopped.unlink()
    journal_path(stopped).unlink()
    placement_table.protocol(stopped.parent, MODEL, VARIANT)  # another machine: RUNDIR is empty
    assert stopped.read_bytes() == saved
    cmd = commands[-1]
    assert cmd[cmd.index("--runs") + 1] == "100" and cmd[cmd.index("--out") + 1] == str(stopped)
    assert "--resume" in cmd and cmd[cmd.index("--seed") + 1] == "0"
    stopped.write_text("{}")  # RUNDIR's own file is never replaced by the saved one
    placement_table.protocol(stopped.parent, MODEL, VARIANT)
    assert stopped.read_text() == "{}" and len(commands) == 2


def test_collect_drops_the_saved_chips_once_the_campaign_is_complete(stopped):
    placement_table.save(stopped.parent, MODEL, VARIANT)
    saved = placement_table.IN_PROGRESS / f"{MODEL}.{VARIANT}.100-chips.json"
    placement_table.collect(stopped.parent)  # not complete yet: kept
    assert saved.is_file() and not (placement_table.RESULTS / f"{MODEL}.{VARIANT}.100-chips.json").exists()
    doc = json.loads(stopped.read_text())
    doc["complete"] = True
    stopped.write_text(json.dumps(doc))
    placement_table.collect(stopped.parent)
    assert (placement_table.RESULTS / f"{MODEL}.{VARIANT}.100-chips.json").is_file() and not saved.exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist: start it with `protocol"),
    ("twenty", "is not a 100-chip campaign"),
    ("complete", "holds every chip: `protocol"),
    ("variant", "save: unknown variant 'placed-calibrated'"),
])
def test_save_refuses_with_one_line_and_writes_nothing(stopped, case, message):
    doc = json.loads(stopped.read_text())
    variant = VARIANT
    if case == "missing":
        stopped.unlink()
    elif case == "variant":
        variant = "placed-calibrated"
    else:
        journal_path(stopped).unlink()
        doc["config"]["runs"] = 20 if case == "twenty" else 100
        doc["complete"] = case == "complete"
        if case == "complete":  # every chip of 100 per rate
            for e in doc["rates"]:
                e["runs"] = {str(r): e["runs"][str(r % 20)] for r in range(100)}
        stopped.write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as err:
        placement_table.save(stopped.parent, MODEL, variant)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not placement_table.IN_PROGRESS.exists()


def test_save_never_drops_chips_saved_before(stopped):
    """An older RUNDIR (here: the journal's chip lost) saved after a newer one keeps the newer chips."""
    placement_table.save(stopped.parent, MODEL, VARIANT)
    journal_path(stopped).unlink()
    assert placement_table.save(stopped.parent, MODEL, VARIANT) == f"{MODEL} {VARIANT}: 81 of 400 chips"


def test_a_refused_continuation_leaves_no_copy_in_rundir(stopped, monkeypatch):
    """`rram validate --resume` refusing the saved file (another artifact, another setting) before any
    chip: protocol stops with one line and RUNDIR is as it was, so the next try is not stuck on it."""
    placement_table.save(stopped.parent, MODEL, VARIANT)
    stopped.unlink()
    journal_path(stopped).unlink()

    def refuse(cmd, check):
        raise placement_table.subprocess.CalledProcessError(2, cmd)

    monkeypatch.setattr(placement_table.subprocess, "run", refuse)
    with pytest.raises(SystemExit) as err:
        placement_table.protocol(stopped.parent, MODEL, VARIANT)
    assert "rram validate failed" in str(err.value) and "\n" not in str(err.value)
    assert not stopped.exists()

"""The README is a contract: its flow block runs as written in a fresh shell (issue 13).

The block is taken from README.md itself, so the README cannot drift from the code; only the
sizes are made smaller (and the checkout's ../shared absolute, since the test runs in a temporary
folder instead of the checkout). The flow writes only into its own work/ folder (issue 35)."""
import json
import re

import pytest

from conftest import ROOT, run_readme_block

# (README text, test text): smaller sizes, same commands
SMALLER = [
    ("--epochs 3", "--epochs 1 --train-images 512 --eval-images 200"),
    ("--out ft/recalibrated.pt", "--batches 2 --out ft/recalibrated.pt"),
    ("--runs 10 --calibrate 256", "--runs 2 --calibrate 64 --images 200"),
    ("--runs 100 --seed 0", "--runs 2 --images 200 --seed 0"),
    ("--calibrate 256 --out per-chip.json", "--calibrate 64 --out per-chip.json"),
]


def flow_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The flow"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_block_holds_what_the_test_shrinks():
    block = flow_block()
    for old, _ in SMALLER:
        assert old in block, f"README flow no longer has {old!r}: update SMALLER"


@pytest.mark.slow
def test_readme_flow_runs_as_written(tmp_path, shared_data, shared_resnet20, real_data_cache):
    work = run_readme_block(flow_block(), SMALLER, tmp_path, real_data_cache)
    per_rate = json.loads((work / "per-rate.json").read_text())
    per_chip = json.loads((work / "per-chip.json").read_text())
    assert sorted(per_rate["config"]["models"]) == ["rate-0.0", "rate-0.1", "rate-0.2", "rate-0.3"]
    assert [e["model"] for e in per_rate["rates"]] == ["rate-0.0", "rate-0.1", "rate-0.2", "rate-0.3"]
    assert per_chip["config"]["calibrate"] == 64 and per_chip["complete"]
    assert (work / "fig.png").stat().st_size > 1000


def test_the_flow_writes_into_an_ignored_work_folder():
    """The flow wrote ft/, art/, r20*.onnx, per-*.json and fig.png into the checkout's root."""
    block = flow_block()
    assert "mkdir -p work && cd work" in block.splitlines()[2]  # before the first command that writes
    assert "/work/" in (ROOT / ".gitignore").read_text().splitlines()

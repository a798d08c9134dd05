"""Behaviour frozen before the architecture refactor (issue 10): the shared ResNet20 through
export, passes, quantize and validate (fp32 and int8) gives the same bytes and the same numbers.
Re-freeze with `python tests/golden/golden_flow.py --freeze` only for an intended change."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from golden_flow import cpu_int8_kind, golden_paths, run_flow  # noqa: E402


@pytest.mark.slow
def test_outputs_match_the_frozen_golden_files(tmp_path, shared_resnet20, shared_data, monkeypatch, real_data_cache):
    monkeypatch.setenv("RRAM_CACHE", str(real_data_cache))
    got = run_flow(tmp_path, shared_resnet20, shared_data)
    paths = golden_paths()
    assert got["hashes"] == json.loads(paths["hashes"].read_text())
    assert got["fp32"] == json.loads(paths["fp32"].read_text())
    if not paths["int8"].exists():
        pytest.skip(f"no int8 golden file for this kind of CPU ({cpu_int8_kind()}): int8 arithmetic differs "
                    f"between CPU kinds (docs/runtime.md); freeze one with golden_flow.py --freeze")
    assert got["int8"] == json.loads(paths["int8"].read_text())

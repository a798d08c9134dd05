"""Behaviour frozen before the architecture refactor (issue 10): the shared ResNet20 through
export, passes, quantize and validate (fp32 and int8) gives the same bytes and the same numbers.
Re-freeze with `python tests/golden/golden_flow.py --freeze` only for an intended change."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from golden_flow import REPORT_REL_TOL, cpu_int8_kind, golden_paths, report_differences, run_flow  # noqa: E402


@pytest.mark.slow
def test_outputs_match_the_frozen_golden_files(tmp_path, shared_resnet20, shared_data, monkeypatch, real_data_cache):
    monkeypatch.setenv("RRAM_CACHE", str(real_data_cache))
    got = run_flow(tmp_path, shared_resnet20, shared_data)
    paths = golden_paths()
    assert got["hashes"] == json.loads(paths["hashes"].read_text())
    # floats to REPORT_REL_TOL relative (CPU kinds sum in other orders), everything else exact
    diffs = report_differences(got["report"], json.loads(paths["report"].read_text()))
    assert not diffs, diffs[:5]
    assert got["fp32"] == json.loads(paths["fp32"].read_text())
    if not paths["int8"].exists():
        pytest.skip(f"no int8 golden file for this kind of CPU ({cpu_int8_kind()}): int8 arithmetic differs "
                    f"between CPU kinds (docs/runtime.md); freeze one with golden_flow.py --freeze")
    assert got["int8"] == json.loads(paths["int8"].read_text())


def test_report_comparison_tolerates_summation_order_and_nothing_more():
    """The golden report is compared to REPORT_REL_TOL on floats: a last-bits change passes, an SQNR
    moved by 1e-3 dB, a changed count or string, a float that became a string, or a missing key fails."""
    want = json.loads(golden_paths()["report"].read_text())

    def changed(edit):
        got = json.loads(json.dumps(want))
        edit(got)
        return report_differences(got, want)

    assert not changed(lambda d: None)
    assert not changed(lambda d: d["layers"][0].update(sqnr_db=d["layers"][0]["sqnr_db"] * (1 + 1e-9)))
    assert changed(lambda d: d["layers"][0].update(sqnr_db=d["layers"][0]["sqnr_db"] + 1e-3))
    assert changed(lambda d: d["total"].update(cells=d["total"]["cells"] + 1))
    assert changed(lambda d: d["device"].update(encoding="offset"))
    assert changed(lambda d: d["total"].update(sqnr_db=str(d["total"]["sqnr_db"])))
    assert changed(lambda d: d.pop("skipped"))
    assert REPORT_REL_TOL * want["total"]["sqnr_db"] < 1e-3  # the tolerance is below a real change

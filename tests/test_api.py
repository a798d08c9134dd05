"""toolchain.api (docs/api.md): the CLI's argument lists, its errors raised (not exit codes), and
examples/build_and_validate.py run end to end with tiny settings."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import RramError
from toolchain import api
from toolchain.cli import run
from toolchain.errors import UserError

from conftest import SHARED_DATA, SHARED_RESNET20, make_cifar

ROOT = Path(__file__).resolve().parents[1]


def test_keywords_become_the_cli_options():
    assert api.argv("validate", "art", out="r.json", sa1=[0, 0.1], runs=2, bn_rate="auto", resume=False,
                    calibrate=None) == ["validate", "art", "--out", "r.json", "--sa1", "0,0.1", "--runs", "2",
                                        "--bn-rate", "auto"]
    assert api.argv("export", Path("m.pt"), out=Path("m.onnx"), all_rates=True) == [
        "export", "m.pt", "--out", "m.onnx", "--all-rates"]
    assert api.argv("quantize", "m.onnx", "art", exclude=["fc*", "conv1*"]) == [
        "quantize", "m.onnx", "art", "--exclude", "fc*", "--exclude", "conv1*"]
    assert api.argv("train", None, out="o", pad_1x1=True) == ["train", "--out", "o", "--pad-1x1"]


def test_errors_are_raised_not_printed(tmp_path, capsys):
    with pytest.raises(UserError, match="checkpoint not found: .*nothing.pt"):
        api.export(tmp_path / "nothing.pt", tmp_path / "m.onnx")
    with pytest.raises(UserError, match="unrecognized arguments: --no-such-option"):
        api.export(tmp_path / "nothing.pt", tmp_path / "m.onnx", no_such_option=1)
    with pytest.raises(UserError, match="--runs.*must be at least 1"):
        run(["sensitivity", str(tmp_path), "--sa1", "0.1", "--runs", "0", "--out", str(tmp_path / "s.json")])
    with pytest.raises(RramError, match="is not a quantized artifact"):
        api.validate(tmp_path, tmp_path / "r.json", data=tmp_path / "absent", runs=1)
    assert capsys.readouterr().err == ""  # nothing printed: the caller gets the exception
    assert not (tmp_path / "m.onnx").exists()


def test_example_runs_end_to_end(tmp_path):
    """The example through the API: real data and the shared ResNet20 when both are here and the
    decoded images are cached ($RRAM_CACHE), else a from-scratch model on synthetic data."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    tiny = ["--images", "64", "--test-images", "32", "--runs", "2", "--bn-rates", "0,0.1", "--sa1", "0,0.1",
            "--calibrate", "16"]
    if (SHARED_DATA / "test").is_dir() and SHARED_RESNET20.is_file() and os.environ.get("RRAM_CACHE"):
        args = ["--data", str(SHARED_DATA)]
        env["RRAM_WEIGHTS"] = str(SHARED_RESNET20.parent)
    else:
        data = make_cifar(tmp_path / "data", per_batch=16, test=32)
        args = ["--data", str(data), "--init", "none", "--width", "0.25", "--drop-rate", "0.1"]
        env["RRAM_CACHE"] = str(tmp_path / "cache")
    out = tmp_path / "ex"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "build_and_validate.py"), "--out", str(out),
                           *args, *tiny], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"per-rate BN", "per-chip"}
    for label in summary:
        assert set(summary[label]) == {"0", "0.1"}
        assert all(0.0 <= v <= 1.0 for v in summary[label].values())
    assert sorted(p.name for p in (out / "art").iterdir()) == ["rate-0.0", "rate-0.1"]
    per_rate = json.loads((out / "per-rate.json").read_text())["config"]
    per_chip = json.loads((out / "per-chip.json").read_text())["config"]
    assert (per_rate.get("calibrate"), per_chip["calibrate"]) == (None, 16)
    assert per_chip["runs"] == 2 and per_chip["images"] == 32 and per_chip["stats_rate"] == "auto"

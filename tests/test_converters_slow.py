"""DAC/ADC resolution: the runtime campaign (`rram validate --adc-bits B [--dac-bits B]` on an
artifact built as docs/runtime.md shows: export, passes standard, quantize --preset paper) agrees
in distribution with the independently written PyTorch reference (`rram eval --sa1 P --adc-bits B
[--dac-bits B]`, toolchain/converters.py) on the shared pretrained ResNet20 and real CIFAR-10 test
images. The runtime's weights are rounded to the `paper` crossbar's 7-bit levels, the reference's
are not (as the variation reference): the fault-free accuracies can differ (on these 600 images by
up to about two points with 4-bit ADCs: docs/runtime.md quotes the last run)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytestmark = pytest.mark.slow

P, RUNS, IMAGES = 0.02, 6, 600


@pytest.fixture
def paper_artifact(shared_paper_artifact):
    return shared_paper_artifact()


@pytest.mark.parametrize("converters", [["--adc-bits", "6"], ["--adc-bits", "4", "--dac-bits", "8"]])
def test_runtime_agrees_with_the_torch_reference(paper_artifact, tmp_path, shared_data, shared_resnet20,
                                                 real_data_cache, capsys, converters):
    from toolchain.cli import main

    data = ["--data", str(shared_data), "--cache-dir", str(real_data_cache), "--images", str(IMAGES)]
    capsys.readouterr()
    assert main(["validate", str(paper_artifact), *data, "--sa1", f"0,{P}", "--runs", str(RUNS), "--seed", "0",
                 "--out", str(tmp_path / "c.json"), *converters]) == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["config"]["nonideal"]["adc_bits"] == int(converters[1])
    rate = next(e for e in doc["rates"] if e["sa1"] == P)
    ours = [v["accuracy"] for v in rate["runs"].values()]
    clean = doc["clean"]["."]

    capsys.readouterr()
    assert main(["eval", str(shared_resnet20), *data, "--sa1", str(P), "--runs", str(RUNS), "--seed", "1",
                 "--json", *converters]) == 0
    ref = json.loads(capsys.readouterr().out)["accuracies"]
    assert main(["eval", str(shared_resnet20), *data, "--json", *converters]) == 0
    ref_clean = json.loads(capsys.readouterr().out)["accuracy"]  # the fault-free model behind the converters

    se = math.sqrt(np.var(ours, ddof=1) / RUNS + np.var(ref, ddof=1) / RUNS)
    print(f"\n{' '.join(converters)}: fault-free runtime {100 * clean:.2f}%, reference {100 * ref_clean:.2f}%; "
          f"SA1 {P:g}, {RUNS} chips: runtime {100 * np.mean(ours):.2f}% (sd {100 * np.std(ours, ddof=1):.2f}), "
          f"reference {100 * np.mean(ref):.2f}% (sd {100 * np.std(ref, ddof=1):.2f}); 3 combined SE {300 * se:.2f}")
    assert abs(np.mean(ours) - np.mean(ref)) <= 3 * se, (ours, ref)
    # the fault-free chips: one number each (no draw), binomial standard errors on IMAGES images
    se_clean = math.sqrt(clean * (1 - clean) / IMAGES + ref_clean * (1 - ref_clean) / IMAGES)
    assert abs(clean - ref_clean) <= 3 * se_clean, (clean, ref_clean)
    if converters[1] == "4":  # 4-bit ADCs bite: both well below the unbounded model
        assert clean < 0.74 and ref_clean < 0.74, (clean, ref_clean)

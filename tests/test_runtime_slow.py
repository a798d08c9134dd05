"""The validate campaign on the real ResNet20 and CIFAR-10 agrees with a plain PyTorch reference
(drop each weight independently with probability p: what an SA1 on the active cell does under
the `paper` preset)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

P, RUNS, IMAGES = 0.05, 5, 1000


def test_campaign_mean_agrees_with_torch_reference(tmp_path, shared_data, shared_resnet20):
    from runtime.campaign import validate
    from runtime.crossbar import preset
    from toolchain.checkpoints import load_checkpoint
    from toolchain.data import Split, load_split, subset_indices
    from toolchain.evaluate import accuracy

    from _runtime_helpers import export_torch, quantize_onnx

    ckpt = load_checkpoint(str(shared_resnet20))
    model = ckpt.build()
    onx = export_torch(model, torch.zeros(1, 3, 32, 32), tmp_path / "float.onnx")
    art = quantize_onnx(onx, tmp_path / "art", preset("paper"), normalization=ckpt.normalization)
    split = load_split(str(shared_data), "test")
    idx = subset_indices(len(split), IMAGES)
    sub = Split(split.images[idx], split.labels[idx], split.classes)

    doc = validate(art, sub.images, sub.labels, sa1=[P], runs=RUNS, seed=0, progress=False)
    ours = [v["accuracy"] for v in doc["rates"][0]["runs"].values()]

    gen = torch.Generator().manual_seed(0)
    clean_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = []
    for _ in range(RUNS):
        model.load_state_dict(clean_state)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    m.weight[torch.rand(m.weight.shape, generator=gen) < P] = 0
        ref.append(accuracy(model, sub, ckpt.normalization, progress=False))
    model.load_state_dict(clean_state)
    clean_ref = accuracy(model, sub, ckpt.normalization, progress=False)

    assert abs(doc["clean"]["."] - clean_ref) <= 0.01  # int8 crossbar weights vs float
    se = math.sqrt(np.var(ours, ddof=1) / RUNS + np.var(ref, ddof=1) / RUNS)
    assert abs(np.mean(ours) - np.mean(ref)) <= 3 * se, (ours, ref)
    assert np.mean(ours) < doc["clean"]["."] - 0.02  # the faults do bite at this rate

    # chip for chip: the weights a simulated chip drops, dropped in the float PyTorch model, give
    # the same accuracy up to the crossbar quantisation
    from runtime.artifact import DeployedModel
    from runtime.engine import Engine
    from runtime.faults import run_seed, sample_chip

    dm = DeployedModel.load(art)
    engine = Engine(dm, sub.images, sub.labels)
    mods = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [tuple(m.weight.shape) for m in mods] == [tuple(lay.weight_shape) for lay in dm.cmap.layers]
    for r in range(2):
        chip = sample_chip(dm.cmap.cell_count(), 0.1, 0.0, run_seed(9, 0.1, 0.0, r))
        model.load_state_dict(clean_state)
        with torch.no_grad():
            for m, c, f in zip(mods, dm.clean_weights(), dm.chip_weights(chip)):
                m.weight[torch.from_numpy((f == 0) & (c != 0))] = 0
        assert abs(engine.chip_accuracy(chip) - accuracy(model, sub, ckpt.normalization, progress=False)) <= 0.01

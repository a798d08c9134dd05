"""Drop-connect masks and the reference SA1 fault model."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.dropconnect import (
    DropConnect,
    add_dropconnect,
    plain_state_dict,
    remove_dropconnect,
    sa1_faults,
    sample_sa1_masks,
    weight_modules,
)
from toolchain.errors import UserError
from toolchain.models import ModelSpec, build_model


def test_mask_drops_about_p_and_is_fresh_every_step():
    layer = nn.Linear(200, 100)
    original = layer.weight.detach().clone()
    add_dropconnect(layer, 0.3, torch.Generator().manual_seed(1))
    layer.train()
    w1, w2 = layer.weight.detach(), layer.weight.detach()
    for w in (w1, w2):
        dropped = w == 0
        assert abs(dropped.float().mean().item() - 0.3) < 0.02  # 20000 weights: sd 0.003
        assert torch.equal(w[~dropped], original[~dropped])  # kept weights are not rescaled
    assert not torch.equal(w1 == 0, w2 == 0)
    layer.eval()
    assert torch.equal(layer.weight, original)  # no drop at inference


def test_same_seed_same_masks_and_layer_options():
    def masks(seed):
        torch.manual_seed(0)
        m = build_model(ModelSpec("resnet20", 0.25))
        add_dropconnect(m, 0.5, torch.Generator().manual_seed(seed), include_first=False)
        m.train()
        return [(mod.weight == 0) for _, mod in weight_modules(m)]

    a, b, c = masks(7), masks(7), masks(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not a[0].any() and a[-1].any()  # first layer excluded, last included


def test_gradients_flow_only_through_kept_weights():
    layer = nn.Linear(30, 20)
    add_dropconnect(layer, 0.4, torch.Generator().manual_seed(3))
    layer.train()
    x = torch.randn(16, 30)
    w = layer.weight  # one mask draw
    F.linear(x, w, layer.bias).square().sum().backward()
    grad = layer.parametrizations.weight.original.grad
    dropped = (w == 0).detach()
    assert dropped.any() and (~dropped).any()
    assert torch.all(grad[dropped] == 0)
    # kept weights get the plain gradient of the masked forward
    w_ref = w.detach().clone().requires_grad_(True)
    F.linear(x, w_ref, layer.bias).square().sum().backward()
    assert torch.allclose(grad[~dropped], w_ref.grad[~dropped])
    assert (grad[~dropped] != 0).float().mean() > 0.9


def test_plain_state_dict_and_removal():
    m = build_model(ModelSpec("resnet20", 0.25))
    before = m.state_dict()
    add_dropconnect(m, 0.2, torch.Generator())
    sd = plain_state_dict(m)
    assert set(sd) == set(before) and all(torch.equal(sd[k], before[k]) for k in sd)
    remove_dropconnect(m.train())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_bad_rate():
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        DropConnect(1.0, torch.Generator())
    with pytest.raises(UserError):
        add_dropconnect(nn.Linear(2, 2), -0.1, torch.Generator())


def test_sa1_zeroes_exactly_the_sampled_weights_and_restores_them():
    torch.manual_seed(0)
    m = build_model(ModelSpec("resnet20", 0.25, "B")).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    masks = sample_sa1_masks(m, 0.1, torch.Generator().manual_seed(5))
    assert set(masks) == {n for n, _ in weight_modules(m)}  # every Conv2d and Linear
    frac = torch.cat([k.flatten() for k in masks.values()]).float().mean().item()
    assert abs(frac - 0.1) < 0.02
    with sa1_faults(m, masks):
        for name, mod in weight_modules(m):
            w, mask = mod.weight, masks[name]
            assert torch.all(w[mask] == 0)
            assert torch.equal(w[~mask], before[f"{name}.weight"][~mask])
        for k, v in m.state_dict().items():  # biases and BN untouched
            if not k.endswith(".weight") or "bn" in k:
                assert torch.equal(v, before[k])
    after = m.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    again = sample_sa1_masks(m, 0.1, torch.Generator().manual_seed(5))
    assert all(torch.equal(masks[k], again[k]) for k in masks)


def test_sa1_restores_after_an_exception():
    m = nn.Sequential(nn.Linear(8, 8))
    before = m[0].weight.detach().clone()
    with pytest.raises(RuntimeError), sa1_faults(m, sample_sa1_masks(m, 0.5, torch.Generator().manual_seed(0))):
        raise RuntimeError("boom")
    assert torch.equal(m[0].weight, before)

"""Function-preserving widening (toolchain/models/widen.py); `rram train --init narrow --width wide`
is tested in test_train.py."""
import pytest
import torch
import torch.nn as nn

from toolchain.models import ModelSpec, build_model
from toolchain.models.widen import WidenError, widen_into

from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _trained_looking(spec: ModelSpec) -> nn.Module:
    """A model whose BN layers hold non-trivial statistics and affine parameters (fresh ones are
    the identity, which would hide a wrongly copied channel)."""
    torch.manual_seed(0)
    model = build_model(spec)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


@pytest.mark.parametrize("spec", [ModelSpec("resnet20", 0.25, "A"), ModelSpec("resnet20", 0.25, "B"),
                                  ModelSpec("vgg13", 0.25), ModelSpec("mobilenetv2", 0.25, padded=True)],
                         ids=lambda s: s.describe())
@pytest.mark.parametrize("k", [2, 3])
def test_widened_model_computes_the_same_function(spec, k):
    narrow = _trained_looking(spec)
    wide = widen_into(narrow, build_model(ModelSpec(spec.name, spec.width * k, spec.shortcut, spec.padded))).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(wide(x), narrow(x), rtol=1e-4, atol=1e-4)
    n_params = sum(p.numel() for p in narrow.parameters())
    assert sum(p.numel() for p in wide.parameters()) > 2 * n_params  # really wider


def test_each_channel_becomes_k_copies_with_outgoing_weights_split():
    narrow = _trained_looking(ModelSpec("resnet20", 0.25))
    wide = widen_into(narrow, build_model(ModelSpec("resnet20", 0.5)))
    w, n = wide.layer1[0].conv1.weight, narrow.layer1[0].conv1.weight  # [out, in, 3, 3]
    assert w.shape == (8, 8, 3, 3)
    torch.testing.assert_close(w[0::2, 0::2], n / 2)
    torch.testing.assert_close(w[1::2, 1::2], n / 2)
    torch.testing.assert_close(wide.conv1.weight[1::2], narrow.conv1.weight)  # RGB input: not split
    torch.testing.assert_close(wide.bn1.running_var[1::2], narrow.bn1.running_var)


def test_a_factor_that_is_not_whole_is_refused():
    with pytest.raises(WidenError, match="not a whole multiple"):
        widen_into(_trained_looking(ModelSpec("resnet20", 0.25)), build_model(ModelSpec("resnet20", 0.375)))


def test_a_layout_it_does_not_preserve_fails_loudly():
    def net(c):  # a flatten over a 2x2 map: the classifier's inputs are channel-major, not copies
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(4 * c, 10)).eval()

    with pytest.raises(WidenError, match="does not compute the narrow one's function"):
        widen_into(net(4), net(8))


def test_another_layer_type_is_refused():
    narrow = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4))
    with pytest.raises(WidenError, match="LayerNorm holds weights"):
        widen_into(narrow, nn.Sequential(nn.Conv2d(3, 8, 3), nn.LayerNorm(8)))

import pytest
import torch

from toolchain.errors import UserError
from toolchain.models import MODEL_NAMES, ModelSpec, build_model, is_1x1, pad_1x1_to_3x3

SPECS = [ModelSpec("resnet20", shortcut="A"), ModelSpec("resnet20", shortcut="B"),
         ModelSpec("mobilenetv2"), ModelSpec("vgg13")]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_output_shape_at_each_width(name, width):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, width=width)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_scales_the_parameter_count():
    small = sum(p.numel() for p in build_model(ModelSpec("resnet20", width=1)).parameters())
    wide = sum(p.numel() for p in build_model(ModelSpec("resnet20", width=2)).parameters())
    assert small == 269722  # the published ResNet20 size (0.27 M)
    assert 3.5 < wide / small < 4.1


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}-{s.shortcut}")
def test_pad_1x1_to_3x3_preserves_outputs(spec):
    torch.manual_seed(0)
    model = build_model(spec)
    # non-trivial BN statistics, so a wrong centre tap would show
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    model.eval()
    n_1x1 = sum(is_1x1(m) for m in model.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        pad_1x1_to_3x3(model)
        after = model(x)
    assert not any(is_1x1(m) for m in model.modules())
    if spec.name in ("mobilenetv2",) or spec.shortcut == "B":
        assert n_1x1 > 0
    assert (before - after).abs().max().item() < 1e-5


def test_pad_handles_stride_groups_and_bias():
    conv = torch.nn.Conv2d(8, 12, 1, stride=2, groups=4, bias=True)
    net = torch.nn.Sequential(conv)
    x = torch.randn(3, 8, 9, 9)
    with torch.no_grad():
        before = net(x)
        pad_1x1_to_3x3(net)
        after = net(x)
    assert net[0].kernel_size == (3, 3) and net[0].padding == (1, 1) and net[0].groups == 4
    assert after.shape == before.shape
    assert (before - after).abs().max().item() < 1e-5


def test_padded_spec_builds_a_model_without_1x1():
    model = build_model(ModelSpec("mobilenetv2", width=0.5, padded=True))
    assert not any(is_1x1(m) for m in model.modules())


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "resnet56"}, "unknown model"),
    ({"name": "resnet20", "width": 0}, "width must be a positive"),
    ({"name": "resnet20", "width": -1}, "width must be a positive"),
    ({"name": "resnet20", "shortcut": "C"}, "shortcut"),
])
def test_bad_model_specs(kwargs, message):
    with pytest.raises(UserError, match=message):
        ModelSpec(**kwargs)

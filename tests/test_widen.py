"""Function-preserving widening (toolchain/models/widen.py) and `rram train --init narrow --width wide`."""
import pytest
import torch
import torch.nn as nn

from toolchain.checkpoints import load_checkpoint
from toolchain.cli import main
from toolchain.models import ModelSpec, build_model
from toolchain.models.widen import WidenError, widen_into
from toolchain.training import TrainConfig, train

from conftest import make_cifar, one_thread

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


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("cifar"))


def _cfg(data, out, spec, **kw):
    base = dict(spec=spec, drop_rate=0.2, epochs=1, out=str(out), data=str(data), batch_size=32, images=64,
                eval_images=64, use_cache=False, progress=False, device="cpu")
    return TrainConfig(**(base | kw))


def test_train_widens_a_narrower_init_checkpoint(data, tmp_path, capsys):
    train(_cfg(data, tmp_path / "narrow", ModelSpec("resnet20", 0.25), drop_rate=0.0))
    log = train(_cfg(data, tmp_path / "wide", ModelSpec("resnet20", 0.5), init=str(tmp_path / "narrow" / "model.pt")))
    assert "widened the --init checkpoint from width 0.25 to 0.5" in capsys.readouterr().out
    assert log["config"]["model"]["width"] == 0.5
    ck = load_checkpoint(tmp_path / "wide" / "model.pt")
    assert ck.spec.width == 0.5 and ck.state_dict["layer1.0.conv1.weight"].shape == (8, 8, 3, 3)


def test_train_refuses_a_width_that_is_not_a_whole_multiple(data, tmp_path, capsys):
    train(_cfg(data, tmp_path / "narrow", ModelSpec("resnet20", 0.25), drop_rate=0.0))
    code = main(["train", "--model", "resnet20", str(tmp_path / "narrow" / "model.pt"), "--width", "0.375",
                 "--drop-rate", "0.2", "--epochs", "1", "--data", str(data), "--images", "64",
                 "--out", str(tmp_path / "bad"), "--no-cache"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "--width 0.375 is not a whole multiple of the --init checkpoint's width 0.25" in err[0]
    assert not (tmp_path / "bad" / "model.pt").exists()


def test_a_foreign_checkpoint_of_unknown_origin_still_takes_its_width_from_width(data, tmp_path):
    foreign = tmp_path / "foreign.pth"  # a bare state dict: nothing records its width
    torch.save(build_model(ModelSpec("resnet20", 0.5)).state_dict(), foreign)
    code = main(["train", "--model", "resnet20", str(foreign), "--width", "0.5", "--drop-rate", "0.2",
                 "--epochs", "1", "--data", str(data), "--images", "64", "--batch-size", "32",
                 "--eval-images", "64", "--out", str(tmp_path / "ft"), "--no-cache", "--device", "cpu",
                 "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"])
    assert code == 0
    assert load_checkpoint(tmp_path / "ft" / "model.pt").spec.width == 0.5

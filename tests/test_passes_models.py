"""Each pass preserves what real models compute: our CIFAR models and torchvision ImageNet models
(random weights, non-trivial BN statistics), exported with the TorchScript and the dynamo exporter."""
from __future__ import annotations

import onnx
import pytest
import torch
import torchvision

import passes
from toolchain.models import ModelSpec, build_model

from _passes_util import TOL, export, foldable_bns, input_feeds, max_rel_diff, one_by_one_convs, ops, randomize_bn


def _vgg13_bn_small():
    # torchvision's VGG13-BN features; the 25088x4096 classifier (400 MB) is replaced by a small
    # head so the test stays fast. The convolutional part, which the passes rewrite, is unchanged.
    m = torchvision.models.vgg13_bn(num_classes=10)
    m.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    m.classifier = torch.nn.Sequential(torch.nn.Linear(512, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    return m


BUILDERS = {
    "cifar-resnet20A": (lambda: build_model(ModelSpec("resnet20", shortcut="A")), 32),
    "cifar-resnet20B": (lambda: build_model(ModelSpec("resnet20", shortcut="B")), 32),
    "cifar-mobilenetv2": (lambda: build_model(ModelSpec("mobilenetv2")), 32),
    "cifar-vgg13": (lambda: build_model(ModelSpec("vgg13")), 32),
    "resnet18": (lambda: torchvision.models.resnet18(), 64),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), 64),
    "vgg13_bn": (_vgg13_bn_small, 64),
}
# (builder, exporter): "ts" = torch.onnx.export(dynamo=False, do_constant_folding=False) as
# `rram export` does; "dynamo" = the default dynamo export (it folds BN itself; writes external
# data); "dynamo-raw" = dynamo with optimize=False (BN and CastLike chains stay).
CASES = [(name, "ts") for name in BUILDERS] + [
    ("resnet18", "dynamo"), ("vgg13_bn", "dynamo"), ("mobilenet_v2", "dynamo-raw")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("passes-models")
    cache = {}

    def get(name, exporter):
        if (name, exporter) not in cache:
            build, size = BUILDERS[name]
            torch.manual_seed(0)
            model = randomize_bn(build())
            path = root / f"{name}-{exporter}.onnx"
            export(model, path, size, dynamo=exporter != "ts", optimize=exporter != "dynamo-raw")
            cache[name, exporter] = path
        return cache[name, exporter]
    return get


@pytest.mark.parametrize("name,exporter", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_standard_pipeline_preserves_outputs(exported, name, exporter):
    path = exported(name, exporter)
    original = onnx.load(str(path))
    # The pipeline verifies after every pass at TOL; the comparison below is independent of it
    # (other inputs, other batch size, onnxruntime with its default optimizations).
    # pad_1x1: these models were not trained padded, so `standard` pads them only when asked to
    res = passes.run(path, "standard", verify="each" if exporter == "ts" else "end", tolerance=TOL, pad_1x1=True)
    assert res.verification["max_rel_diff"] <= TOL
    assert max_rel_diff(original, res.model, input_feeds(original)) <= TOL
    assert "BatchNormalization" not in ops(res.model)
    assert one_by_one_convs(res.model) == []
    assert ops(res.model).count("Conv") == ops(original).count("Conv")
    if exporter in ("ts", "dynamo-raw"):
        assert res.before["ops"].get("BatchNormalization", 0) > 0  # the fold really happened
        assert res.stats["fold-bn.folded"] == res.before["ops"]["BatchNormalization"]
    onnx.checker.check_model(res.model)


SINGLE = [("cifar-resnet20B", "ts"), ("cifar-mobilenetv2", "ts"), ("cifar-vgg13", "ts"),
          ("resnet18", "ts"), ("mobilenet_v2", "dynamo-raw")]


@pytest.mark.parametrize("name,exporter", SINGLE, ids=[f"{n}-{e}" for n, e in SINGLE])
@pytest.mark.parametrize("pass_name", ["fold-bn", "pad-1x1-to-3x3"])
def test_single_pass_preserves_outputs(exported, name, exporter, pass_name):
    path = exported(name, exporter)
    original = onnx.load(str(path))
    names = ["fold-constants", pass_name] if exporter == "dynamo-raw" else [pass_name]
    res = passes.run(path, names, verify="off")
    assert max_rel_diff(original, res.model, input_feeds(original)) <= TOL
    if pass_name == "fold-bn":
        assert foldable_bns(res.model) == []
        assert "BatchNormalization" not in ops(res.model)
    else:
        if "vgg" not in name:
            assert one_by_one_convs(original) != []  # these models do have 1x1 convs
        assert one_by_one_convs(res.model) == []


@pytest.mark.parametrize("pass_name", ["eliminate-identity", "fold-constants", "eliminate-dead", "summary"])
def test_cleanup_passes_preserve_outputs(exported, pass_name):
    # mobilenet_v2 from the dynamo exporter without its optimizer: Constant/Shape/Expand/CastLike
    # chains, the hardest graph here for the cleanup passes.
    path = exported("mobilenet_v2", "dynamo-raw")
    original = onnx.load(str(path))
    res = passes.run(path, [pass_name], verify="off")
    assert max_rel_diff(original, res.model, input_feeds(original)) <= TOL
    if pass_name == "fold-constants":
        assert not {"Shape", "Constant", "CastLike", "Expand"} & set(ops(res.model))
        assert res.after["nodes"] < res.before["nodes"]

"""rram export: ONNX with BN nodes kept, per-rate statistics convention, checked against PyTorch."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from toolchain.checkpoints import load_checkpoint
from toolchain.cli import main
from toolchain.data import CIFAR10_NORM
from toolchain.models import ModelSpec
from toolchain.recalibrate import apply_bn_stats, bn_stats_of

from conftest import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)
SPEC = ModelSpec("resnet20", 0.25, "B", padded=True)


def perturbed_stats(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: (v + torch.rand(v.shape, generator=g) * 0.5) for k, v in bn_stats_of(model).items()}


def trained_at_three_rates(c, m):
    c.meta = {"drop_rate": 0.2}
    c.bn_stats = {"0.0": perturbed_stats(m, 1), "0.1": perturbed_stats(m, 2), "0.3": perturbed_stats(m, 3)}


@pytest.fixture
def ckpt(tiny_checkpoint):
    return tiny_checkpoint(SPEC, trained_at_three_rates)


def run_onnx(model_proto, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.numpy()})[0]


def torch_out(ckpt_path, rate, x):
    c = load_checkpoint(ckpt_path)
    m = c.build()
    apply_bn_stats(m, c.bn_stats[rate])
    with torch.no_grad():
        return m(x).numpy()


def test_export_matches_pytorch_and_keeps_bn(ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--rate", "0.1", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_diff"] < 1e-4 and summary["bn_rate"] == "0.1"
    mp = onnx.load(str(out))
    onnx.checker.check_model(mp, full_check=True)
    assert mp.opset_import[0].version >= 17
    ops = [n.op_type for n in mp.graph.node]
    assert ops.count("BatchNormalization") == 19 + 2  # every BN kept (2 shortcut-B BNs)
    assert "Identity" not in ops
    meta = {p.key: p.value for p in mp.metadata_props}
    assert json.loads(meta["rram.model"]) == SPEC.to_dict()
    assert json.loads(meta["rram.normalization"]) == CIFAR10_NORM.to_dict()
    assert meta["rram.drop_rate"] == "0.2" and meta["rram.bn_rate"] == "0.1"
    assert meta["rram.bn_rate_default"] == "0.1" and json.loads(meta["rram.bn_stats_rates"]) == ["0.1"]
    assert [i.name for i in mp.graph.input] == ["input"] and mp.graph.output[0].name == "logits"
    assert mp.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    # any batch size, checked against PyTorch with the rate-0.1 statistics
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    assert np.abs(run_onnx(mp, x) - torch_out(ckpt, "0.1", x)).max() < 1e-4
    assert np.abs(run_onnx(mp, x) - torch_out(ckpt, "0.3", x)).max() > 1e-3


def test_all_rates_convention(ckpt, tmp_path):
    out = tmp_path / "all.onnx"
    assert main(["export", str(ckpt), "--all-rates", "--rate", "0.3", "--out", str(out)]) == 0
    mp = onnx.load(str(out))
    meta = {p.key: p.value for p in mp.metadata_props}
    assert json.loads(meta["rram.bn_stats_rates"]) == ["0.0", "0.1", "0.3"]
    assert meta["rram.bn_rate_default"] == "0.3"
    inits = {i.name: i for i in mp.graph.initializer}
    consumed = {name for n in mp.graph.node for name in n.input}
    bns = [n for n in mp.graph.node if n.op_type == "BatchNormalization"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    for rate in ("0.0", "0.1", "0.3"):
        swapped = onnx.ModelProto()
        swapped.CopyFrom(mp)
        by_name = {i.name: i for i in swapped.graph.initializer}
        for n in bns:
            for name in (n.input[3], n.input[4]):
                extra = f"{name}@rate={rate}"
                assert extra in inits and extra not in consumed
                by_name[name].CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(inits[extra]), name))
        assert np.abs(run_onnx(swapped, x) - torch_out(ckpt, rate, x)).max() < 1e-4


@pytest.mark.parametrize("args, message", [
    (["--rate", "1.0"], "[0, 1)"),
    (["--rate", "0.2"], "no BN statistics for rate 0.2"),
    ([], "choose one with --rate"),
])
def test_bad_input(ckpt, tmp_path, capsys, args, message):
    out = tmp_path / "x.onnx"
    assert main(["export", str(ckpt), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists() and list(tmp_path.glob("x.onnx*")) == []


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "corrupt" in capsys.readouterr().err


@pytest.mark.slow
def test_export_shared_akamaster_file(tmp_path, capsys, shared_resnet20):
    f = shared_resnet20
    out = tmp_path / "r20.onnx"
    assert main(["export", str(f), "--model", "resnet20", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_diff"] < 1e-4 and summary["bn_stats_rates"] == ["0.0"]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["rram.normalization"])["mean"] == [0.485, 0.456, 0.406]

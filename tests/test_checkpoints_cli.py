import json
import subprocess
import sys

import pytest
import torch

from toolchain.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from toolchain.cli import main
from toolchain.data import CIFAR10_NORM
from toolchain.errors import UserError
from toolchain.models import ModelSpec, build_model

from conftest import ROOT, write_cifar_batches


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("resnet20", width=0.5, shortcut="B", padded=True)
    model = build_model(spec)
    ckpt = Checkpoint(spec, CIFAR10_NORM, model.state_dict(), {}, {"note": "test"})
    return save_checkpoint(ckpt, tmp_path / "ck" / "model.pt"), model


def test_checkpoint_round_trip_restores_spec_norm_and_outputs(tiny_ckpt):
    path, model = tiny_ckpt
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_checkpoint(path)
    assert loaded.spec == ModelSpec("resnet20", width=0.5, shortcut="B", padded=True)
    assert loaded.normalization == CIFAR10_NORM
    assert loaded.meta["note"] == "test"
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.build()(x), model(x), rtol=0, atol=0)
    # loads with weights_only=True: nothing but plain containers and tensors inside
    torch.load(path, weights_only=True)


@pytest.mark.slow
def test_akamaster_import_strips_module_prefix(shared_resnet20):
    ckpt = load_checkpoint(shared_resnet20)
    assert ckpt.spec == ModelSpec("resnet20", 1.0, "A")
    assert ckpt.normalization.mean == (0.485, 0.456, 0.406)
    ckpt.build()


@pytest.mark.slow
def test_named_checkpoint_found_in_rram_weights(shared_resnet20, monkeypatch):
    monkeypatch.setenv("RRAM_WEIGHTS", str(shared_resnet20.parent))
    ckpt = load_checkpoint("resnet20-akamaster")
    assert ckpt.source.endswith("resnet20-12fca82f.th")


def test_named_checkpoint_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    (tmp_path / "resnet20-12fca82f.th").write_bytes(b"not the real file")
    monkeypatch.setenv("RRAM_WEIGHTS", str(tmp_path))
    with pytest.raises(UserError, match="does not match resnet20-akamaster"):
        load_checkpoint("resnet20-akamaster")


def test_mismatched_checkpoint_names_the_first_bad_key(tiny_ckpt, capsys, tmp_path):
    path, _ = tiny_ckpt
    foreign = tmp_path / "foreign.pt"
    state = torch.load(path, weights_only=True)["state_dict"]
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, foreign)
    code, _, err = run_cli(capsys, "eval", "--model", "resnet20", "--checkpoint", str(foreign),
                           "--mean", "0,0,0", "--std", "1,1,1", "--data", str(tmp_path))
    assert code == 2
    assert err.count("\n") == 1 and "conv1.weight" in err and "shape" in err


@pytest.mark.parametrize("argv_tail, message", [
    (["--model", "resnet56"], "unknown model"),
    (["--model", "resnet20", "--width", "-2"], "width"),
    (["--model", "resnet20", "--width", "0"], "width"),
])
def test_bad_model_arguments(capsys, tiny_ckpt, argv_tail, message):
    path, _ = tiny_ckpt
    with pytest.raises(SystemExit) as exc:
        code = main(["eval", "--checkpoint", str(path), *argv_tail])
        raise SystemExit(code)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_corrupt_checkpoint_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage" * 10)
    code, _, err = run_cli(capsys, "eval", "--model", "resnet20", "--checkpoint", str(bad), "--data", str(tmp_path))
    assert code == 2 and "corrupt or unreadable checkpoint" in err and err.count("\n") == 1


def test_missing_and_wrong_layout_data_folders(tiny_ckpt, tmp_path, capsys):
    path, _ = tiny_ckpt
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(path), "--data", str(tmp_path / "nope"))
    assert code == 2 and "data folder not found" in err
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(path), "--data", str(tmp_path))
    assert code == 2 and "unrecognised data layout" in err


def test_eval_json_on_torchvision_layout(tiny_ckpt, tmp_path, capsys):
    path, model = tiny_ckpt
    root = write_cifar_batches(tmp_path / "c", n_test=10)
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(path), "--data", str(root), "--json",
                           "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    result = json.loads(out)
    assert result["images"] == 10 and 0.0 <= result["accuracy"] <= 1.0


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toolchain", "eval", "--model", "resnet20",
                           "--checkpoint", str(tmp_path / "missing.pt")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    from toolchain import zoo

    known = ", ".join(["resnet20-akamaster", *zoo.names()])  # the registry's, then the model zoo's
    assert "resnet20-dc30-ft3" in known
    assert proc.stderr.strip().splitlines() == [f"rram: error: checkpoint not found: {tmp_path / 'missing.pt'}; "
                                                f"known names: {known}"]


@pytest.mark.slow
def test_eval_of_shared_resnet20_reports_81_03(shared_resnet20, shared_data, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", "--model", "resnet20", "--checkpoint", str(shared_resnet20),
                           "--data", str(shared_data), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["images"] == 10000
    assert abs(100 * result["accuracy"] - 81.03) <= 0.05


def test_damaged_own_checkpoints_are_one_line_errors(tiny_ckpt, tmp_path, capsys):
    """Every field of our format is checked on load (review: KeyErrors and silently exported
    nonsense); NaN/Inf weights are refused for our own and foreign files alike."""
    path, _ = tiny_ckpt
    good = torch.load(path, weights_only=True)
    bn = {k: v.clone() for k, v in good["state_dict"].items() if "running" in k}

    def variant(name, edit):
        obj = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good.items()}
        edit(obj)
        torch.save(obj, tmp_path / name)
        return tmp_path / name

    def nan_weight(o):
        o["state_dict"]["conv1.weight"] = o["state_dict"]["conv1.weight"].clone().fill_(float("nan"))

    cases = [
        (variant("nomodel.pt", lambda o: o.pop("model")), "no 'model' entry"),
        (variant("nonorm.pt", lambda o: o.pop("normalization")), "no 'normalization' entry"),
        (variant("badnorm.pt", lambda o: o.update(normalization={"mean": [0.5, 0.5], "std": [1, 1]})),
         "three numbers each"),
        (variant("sdint.pt", lambda o: o["state_dict"].update({"conv1.weight": 5})), "not a dict of tensors"),
        (variant("sdlist.pt", lambda o: o.update(state_dict=[1, 2])), "not a dict of tensors"),
        (variant("bnlist.pt", lambda o: o.update(bn_stats=[1])), "'bn_stats' is not a dict"),
        (variant("bnkey.pt", lambda o: o.update(bn_stats={"abc": bn})), "BN rate 'abc' is not a number"),
        (variant("bnrange.pt", lambda o: o.update(bn_stats={"1.5": bn})), "outside [0, 1)"),
        (variant("bnunk.pt", lambda o: o.update(bn_stats={"0.1": {"nope.running_mean": torch.zeros(3)}})),
         "not a buffer of the model"),
        (variant("bnshape.pt", lambda o: o.update(bn_stats={"0.1": {k: v[:1] for k, v in bn.items()}})),
         "of shape (1,)"),
        (variant("nan.pt", nan_weight), "'conv1.weight' holds NaN or Inf"),
    ]
    for bad, message in cases:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_checkpoint(bad)
    code, _, err = run_cli(capsys, "export", str(cases[0][0]), "--out", str(tmp_path / "x.onnx"))
    assert code == 2 and err.count("\n") == 1 and "no 'model' entry" in err
    assert not (tmp_path / "x.onnx").exists()
    foreign = tmp_path / "foreign.th"
    bad = good["state_dict"]["conv1.weight"] * float("inf")
    torch.save({"state_dict": {**good["state_dict"], "conv1.weight": bad}}, foreign)
    with pytest.raises(UserError, match="holds NaN or Inf"):
        load_checkpoint(foreign, model="resnet20", width=0.5, shortcut="B", padded=True,
                        normalization=CIFAR10_NORM)


def test_foreign_checkpoint_exports_with_mean_and_std(tmp_path, capsys):
    torch.manual_seed(0)
    foreign = tmp_path / "foreign.th"
    torch.save({"state_dict": build_model(ModelSpec("resnet20")).state_dict()}, foreign)
    out = tmp_path / "f.onnx"
    base = ["export", str(foreign), "--model", "resnet20", "--out", str(out)]
    code, _, err = run_cli(capsys, *base)
    assert code == 2 and "pass --mean and --std" in err and not out.exists()
    code, _, err = run_cli(capsys, *base, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert code == 0 and out.is_file(), err
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["rram.normalization"]) == {"mean": [0.5] * 3, "std": [0.25] * 3}


def test_mean_std_do_not_silently_override_a_recorded_normalisation(tiny_ckpt):
    from toolchain.data import Normalization

    path, _ = tiny_ckpt
    assert load_checkpoint(path, normalization=CIFAR10_NORM).normalization == CIFAR10_NORM  # the same: fine
    with pytest.raises(UserError, match="records its own input normalisation"):
        load_checkpoint(path, normalization=Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))

"""Bring your own model (issue 13): ``--model package.module:factory`` through the whole flow, on
an ImageFolder of 40x40 images (the model's input size is what the data holds)."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime.results import read_results
from toolchain.checkpoints import load_checkpoint
from toolchain.cli import main
from toolchain.models import ModelSpec

HERE = Path(__file__).resolve().parent
RESNET18 = "own_models:resnet18_cifar"


@pytest.fixture(autouse=True)
def own_models_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # where own_models.py lives


def write_sized_imagefolder(root: Path, size=(40, 40), classes=10, train=2, test=1, seed=0) -> Path:
    """``root/{train,test}/cN/i.png``: each class its own mean colour, images of ``size`` (H, W)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(classes, 3))
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = colours[c] + rng.normal(0, 30, (*size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def rram(*argv) -> int:
    return main([str(a) for a in argv])


def test_spec_of_a_factory_round_trips():
    spec = ModelSpec(RESNET18, num_classes=10, image_size=(40, 48), padded=True)
    d = spec.to_dict()
    assert d["name"] == RESNET18 and d["image_size"] == [40, 48]
    assert ModelSpec.from_dict(json.loads(json.dumps(d))) == spec
    # a 32x32 model's record is what it was before image sizes were recorded (golden metadata)
    assert "image_size" not in ModelSpec("resnet20").to_dict()
    assert ModelSpec.from_dict(ModelSpec("resnet20").to_dict()).image_size == (32, 32)


def test_resnet18_through_the_whole_flow(tmp_path, capsys):
    """train -> recalibrate -> export -> passes standard -> quantize paper -> validate, all through
    the CLI; a checkpoint of the factory model records the factory for checking only, so every
    command that builds it is given --model (issue 33: no code from a checkpoint)."""
    data = write_sized_imagefolder(tmp_path / "data")
    common = ["--data", data, "--no-cache"]
    ft = tmp_path / "ft"
    assert rram("train", "--model", RESNET18, "--drop-rate", "0.1", "--epochs", "1", "--batch-size", "10",
                "--eval-images", "10", "--out", ft, *common) == 0
    ckpt = load_checkpoint(ft / "model.pt")  # no --model: the checkpoint records the factory
    assert ckpt.spec == ModelSpec(RESNET18, num_classes=10, image_size=(40, 40))
    assert type(load_checkpoint(ft / "model.pt", model=RESNET18).build()).__name__ == "ResNet"

    rec = tmp_path / "rec.pt"
    assert rram("recalibrate", ft / "model.pt", "--model", RESNET18, "--bn-rate", "0,0.1", "--batch-size", "10",
                "--out", rec, *common) == 0
    assert sorted(load_checkpoint(rec).bn_stats) == ["0.0", "0.1"]

    onx = tmp_path / "m.onnx"
    assert rram("export", rec, "--model", RESNET18, "--all-rates", "--out", onx) == 0
    model = onnx.load(str(onx))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 40, 40]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["rram.model"])["name"] == RESNET18

    folded = tmp_path / "m.r0.1.onnx"
    assert rram("passes", onx, folded, "--passes", "standard", "--bn-rate", "0.1") == 0
    art = tmp_path / "art"
    assert rram("quantize", folded, art, "--preset", "paper") == 0
    res = tmp_path / "res.json"
    capsys.readouterr()
    assert rram("validate", art, "--sa1", "0,0.1", "--runs", "2", "--images", "10", "--out", res, *common) == 0
    doc = read_results(res)
    assert doc["config"]["images"] == 10
    assert [e["sa1"] for e in doc["rates"]] == [0.0, 0.1]
    assert all(len(e["runs"]) == 2 for e in doc["rates"])
    assert 0.0 <= doc["clean"]["."] <= 1.0


@pytest.fixture
def small_data(tmp_path):
    return write_sized_imagefolder(tmp_path / "data", size=(24, 24), classes=4, train=2, test=1)


@pytest.mark.parametrize("model, message", [
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    ("own_models:missing", "own_models has no attribute 'missing'"),
    ("own_models:not_a_module", "returned a str, not a torch.nn.Module"),
    ("own_models:fails", "the factory failed (ValueError: no weights here)"),
    ("own_models:NOT_CALLABLE", "is not callable"),
    ("own_models", "unknown model"),
])
def test_bad_factories_are_one_line_errors_before_any_output(tmp_path, small_data, capsys, model, message):
    out = tmp_path / "out"
    assert rram("train", "--model", model, "--drop-rate", "0", "--epochs", "1", "--out", out,
                "--data", small_data, "--no-cache") == 2
    err = capsys.readouterr().err
    assert err.startswith("rram: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_width_and_shortcut_are_refused_for_a_factory(tmp_path, small_data, capsys):
    for flag in (["--width", "2"], ["--shortcut", "B"]):
        assert rram("train", "--model", "own_models:tiny_cnn", *flag, "--drop-rate", "0", "--epochs", "1",
                    "--out", tmp_path / "out", "--data", small_data) == 2
        assert "--width and --shortcut are for the built-in models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_class_count_comes_from_the_model_and_is_checked(tmp_path, small_data, capsys):
    """tiny_cnn has 4 outputs: 4 class folders train; 3 are refused before --out exists."""
    out = tmp_path / "ok"
    assert rram("train", "--model", "own_models:tiny_cnn", "--drop-rate", "0", "--epochs", "1",
                "--batch-size", "4", "--out", out, "--data", small_data, "--no-cache") == 0
    spec = load_checkpoint(out / "model.pt").spec
    assert (spec.num_classes, spec.image_size) == (4, (24, 24))
    three = write_sized_imagefolder(tmp_path / "three", size=(24, 24), classes=3)
    assert rram("train", "--model", "own_models:tiny_cnn", "--drop-rate", "0", "--epochs", "1",
                "--out", tmp_path / "bad", "--data", three) == 2
    assert "3 class folders" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # evaluated on data of another size: refused, naming both sizes
    other = write_sized_imagefolder(tmp_path / "other", size=(32, 32), classes=4)
    assert rram("eval", out / "model.pt", "--model", "own_models:tiny_cnn", "--data", other, "--no-cache") == 2
    assert "takes images of 3x24x24" in capsys.readouterr().err


def test_model_that_cannot_take_the_data_size_is_refused(tmp_path, small_data, capsys):
    """fixed_32 flattens a 32x32 feature map: 24x24 images are refused before --out exists."""
    assert rram("train", "--model", "own_models:fixed_32", "--drop-rate", "0", "--epochs", "1",
                "--out", tmp_path / "o", "--data", small_data) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not take 3x24x24 images" in err, err
    assert not (tmp_path / "o").exists()


def test_foreign_state_dict_of_a_factory_model(tmp_path, small_data, capsys):
    """A bare state dict of the user's model: --model names its factory (export, eval);
    a factory that does not import is refused before the file is read."""
    import own_models
    import torch

    torch.manual_seed(0)
    foreign = tmp_path / "foreign.pt"
    torch.save(own_models.tiny_cnn().state_dict(), foreign)
    norm = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    assert rram("export", foreign, "--model", "own_models:tiny_cnn", *norm, "--out", tmp_path / "m.onnx") == 0
    capsys.readouterr()
    assert rram("eval", foreign, "--model", "own_models:tiny_cnn", *norm, "--data", small_data,
                "--no-cache", "--json") == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4
    assert rram("export", foreign, "--model", "no_such_module_xyz:f", *norm, "--out", tmp_path / "n.onnx") == 2
    assert "cannot import no_such_module_xyz" in capsys.readouterr().err
    assert rram("eval", foreign, "--model", "own_models:tiny_cnn", "--width", "2", *norm,
                "--data", small_data) == 2
    assert "--width and --shortcut are for the built-in models" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()


def test_labels_beyond_the_models_outputs_are_one_line_before_any_output(tmp_path, capsys):
    """CIFAR batch files (no class folders to count): a 4-output model on 10-class labels failed
    with an IndexError mid-epoch; now one line, and no --out folder."""
    from conftest import make_cifar, one_line_error, run_cli

    make_cifar(tmp_path / "data", per_batch=8, test=16)
    code, _, err = run_cli(capsys, "train", "--model", "own_models:tiny_cnn", "--drop-rate", "0.1", "--epochs",
                           "1", "--data", tmp_path / "data", "--no-cache", "--out", tmp_path / "out")
    assert code == 2 and "outputs" in one_line_error(err)
    assert not (tmp_path / "out").exists()

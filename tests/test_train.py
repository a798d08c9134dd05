"""rram train: outputs, determinism, resume after an interruption, torchrun (2 processes), bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from toolchain.checkpoints import load_checkpoint
from toolchain.cli import main
from toolchain.errors import UserError
from toolchain.models import ModelSpec, build_model
from toolchain.training import LAST, TrainConfig, bf16_is_slow_here, train

from conftest import ROOT as REPO, one_thread, x86_cpu_flags

SPEC = ModelSpec("resnet20", 0.25)
_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture
def data(coloured_cifar):
    return coloured_cifar()


def cfg(data, out, **kw):
    base = dict(spec=SPEC, drop_rate=0.2, epochs=2, out=str(out), data=str(data), batch_size=32,
                images=128, eval_images=64, use_cache=False, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_cli_train_writes_checkpoints_and_log(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.2", "--epochs",
                 "2", "--images", "128", "--eval-images", "64", "--batch-size", "32", "--data",
                 str(data), "--no-cache", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    log = json.loads((out / "log.json").read_text())
    assert printed["epochs"] == log["epochs"]
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert log["config"]["drop_rate"] == 0.2 and log["config"]["rescale"] is False
    for e in log["epochs"]:
        assert 0 <= e["test_acc"] <= 1 and e["train_loss"] > 0 and e["test_sa1"] == 0.2
    ck = load_checkpoint(out / "model.pt")
    assert ck.spec == SPEC and ck.meta["drop_rate"] == 0.2 and "train_state" not in ck.meta
    assert not any("parametrizations" in k for k in ck.state_dict)
    assert load_checkpoint(out / LAST).meta["train_state"]["epoch"] == 2
    # eval reads it
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--data", str(data), "--no-cache",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 128


def test_training_learns_and_same_seed_same_weights(data, tmp_path):
    a = train(cfg(data, tmp_path / "a", epochs=3, drop_rate=0.1, lr=0.05))
    b = train(cfg(data, tmp_path / "b", epochs=3, drop_rate=0.1, lr=0.05))
    assert a["epochs"][-1]["train_loss"] < a["epochs"][0]["train_loss"]
    sa = load_checkpoint(tmp_path / "a" / "model.pt").state_dict
    sb = load_checkpoint(tmp_path / "b" / "model.pt").state_dict
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    train(cfg(data, tmp_path / "c", epochs=1, drop_rate=0.1, lr=0.05, seed=1))  # another seed
    sc = load_checkpoint(tmp_path / "c" / "model.pt").state_dict
    train(cfg(data, tmp_path / "a1", epochs=1, drop_rate=0.1, lr=0.05))
    assert not torch.equal(sc["conv1.weight"], load_checkpoint(tmp_path / "a1" / "model.pt").state_dict["conv1.weight"])


def test_resume_after_interruption_repeats_the_run_exactly(data, tmp_path):
    full = train(cfg(data, tmp_path / "full", epochs=3))

    def crash(epoch, step):
        if epoch == 1 and step == 1:  # in the middle of the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(data, tmp_path / "cut", epochs=3), step_callback=crash)
    kept = load_checkpoint(tmp_path / "cut" / LAST)
    assert kept.meta["train_state"]["epoch"] == 1  # the finished epoch is not lost
    with pytest.raises(UserError, match="--resume"):
        train(cfg(data, tmp_path / "cut", epochs=3))
    resumed = train(cfg(data, tmp_path / "cut", epochs=3, resume=True))
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    s1 = load_checkpoint(tmp_path / "full" / "model.pt").state_dict
    s2 = load_checkpoint(tmp_path / "cut" / "model.pt").state_dict
    for k in s1:
        assert torch.allclose(s1[k].float(), s2[k].float(), atol=1e-6), k
    assert full["epochs"][-1]["train_loss"] == pytest.approx(resumed["epochs"][-1]["train_loss"],
                                                              rel=1e-5)


def test_resume_folder_of_another_model(data, tmp_path):
    train(cfg(data, tmp_path / "r", epochs=1))
    with pytest.raises(UserError, match="belongs to another model"):
        train(cfg(data, tmp_path / "r", epochs=1, resume=True, spec=ModelSpec("resnet20", 0.5)))
    with pytest.raises(UserError, match="drop_rate"):
        train(cfg(data, tmp_path / "r", epochs=1, resume=True, drop_rate=0.3))
    with pytest.raises(UserError, match="nothing to resume"):
        train(cfg(data, tmp_path / "none", epochs=1, resume=True))


def test_fine_tune_from_own_checkpoint_with_padding(data, tmp_path):
    spec_b = ModelSpec("resnet20", 0.25, "B")
    train(cfg(data, tmp_path / "base", spec=spec_b, epochs=1, drop_rate=0.0))
    log = train(cfg(data, tmp_path / "ft", spec=ModelSpec("resnet20", 0.25, "B", padded=True),
                    epochs=1, init=str(tmp_path / "base" / "model.pt")))
    assert log["config"]["model"]["padded"] is True and log["config"]["lr"] == 0.01
    ck = load_checkpoint(tmp_path / "ft" / "model.pt")
    assert ck.spec.padded and ck.state_dict["layer2.0.shortcut.0.weight"].shape[-1] == 3


@pytest.mark.parametrize("args, message", [
    (["--drop-rate", "1.0"], "drop rate must be in [0, 1)"),
    (["--drop-rate", "-0.1"], "drop rate must be in [0, 1)"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--momentum", "-1"], "momentum must be a finite number >= 0"),
    (["--weight-decay", "nan"], "weight decay must be a finite number >= 0"),
    (["--device", "foo"], "--device must be auto, cpu, cuda, cuda:N or another torch device"),
    pytest.param(["--device", "cuda"], "no CUDA device is available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_bad_input_one_line_error(data, tmp_path, capsys, args, message):
    base = {"--drop-rate": "0.2", "--epochs": "1"}
    base.update(dict(zip(args[::2], args[1::2])))
    code = main(["train", "--model", "resnet20", "--width", "0.25", "--data", str(data), "--no-cache",
                 "--out", str(tmp_path / "x"), *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("rram: error: ")
    assert message in err[0]
    assert not (tmp_path / "x").exists()


def test_empty_data_split(tmp_path, capsys):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
    code = main(["train", "--model", "resnet20", "--drop-rate", "0.1", "--epochs", "1", "--data",
                 str(tmp_path / "d"), "--no-cache", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "empty" in err[0]
    assert not (tmp_path / "x").exists()


def test_torchrun_two_processes_on_cpu(data, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "toolchain", "train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.2",
         "--epochs", "2", "--images", "128", "--eval-images", "64", "--batch-size", "32", "--data",
         str(data), "--no-cache", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    log = json.loads((out / "log.json").read_text())
    assert log["world_size"] == 2
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert all(e["images"] == 128 for e in log["epochs"])  # both ranks' batches counted
    ck = load_checkpoint(out / "model.pt")
    assert ck.spec == SPEC and ck.meta["epoch"] == 2


def test_killed_process_resumes_from_the_last_finished_epoch(data, tmp_path):
    import signal
    import time

    out = tmp_path / "k"
    args = ["-m", "toolchain", "train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.2",
            "--epochs", "12", "--images", "64", "--eval-images", "32", "--batch-size", "32", "--data",
            str(data), "--no-cache", "--device", "cpu", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "log.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    done = load_checkpoint(out / LAST).meta["train_state"]["epoch"]
    assert 1 <= done < 12
    log = train(cfg(data, out, epochs=12, images=64, eval_images=32, resume=True))
    assert [e["epoch"] for e in log["epochs"]] == list(range(1, 13))
    assert json.loads((out / "log.json").read_text())["epochs"] == log["epochs"]


def test_a_resume_without_eval_images_measures_on_the_runs_own_number(data, tmp_path, monkeypatch):
    """--eval-images shapes no weight, so a resume need not repeat it; the resumed epochs are then
    measured on the recorded number of images, as the uninterrupted run's are (not on all of them)."""
    from toolchain.training import loop

    measured = []  # images each epoch's accuracy is measured on
    accuracy = loop._test_accuracy
    monkeypatch.setattr(loop, "_test_accuracy", lambda model, split, *a: measured.append(len(split))
                        or accuracy(model, split, *a))
    whole = train(cfg(data, tmp_path / "whole", images=64, eval_images=16))

    def cut(epoch, step):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(data, tmp_path / "cut", images=64, eval_images=16), step_callback=cut)
    resumed = train(cfg(data, tmp_path / "cut", images=64, eval_images=None, resume=True))

    def figures(log):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in log["epochs"]]

    assert figures(resumed) == figures(whole) and len(figures(whole)) == 2
    assert measured == [16, 16, 16, 16]  # the whole run's two epochs, the cut run's first, the resumed one


def test_auto_resume_continues_same_options_and_replaces_others(data, tmp_path, capsys):
    out = tmp_path / "run"

    def crash(epoch, step):
        if epoch == 1 and step == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(data, out, epochs=2), step_callback=crash)
    # an unrelated failure (here: the data is gone) keeps the run to resume
    with pytest.raises(UserError):
        train(cfg(tmp_path / "nodata", out, epochs=2, auto_resume=True))
    assert (out / LAST).exists()
    log = train(cfg(data, out, epochs=2, auto_resume=True))  # same options: continues at epoch 2
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    full = train(cfg(data, tmp_path / "straight", epochs=2))
    assert [e["train_loss"] for e in log["epochs"]] == [e["train_loss"] for e in full["epochs"]]
    other = train(cfg(data, out, epochs=2, drop_rate=0.1, auto_resume=True, progress=True))
    assert "starting afresh" in capsys.readouterr().err
    assert load_checkpoint(out / LAST).meta["config"]["drop_rate"] == 0.1 and len(other["epochs"]) == 2


def test_a_finished_run_copied_in_with_last_pt_alone_gets_model_pt_and_log_back(data, tmp_path):
    """benchmarks/study_on_gpu.py ships a finished run's last.pt only (one copy of the weights):
    auto-resume rebuilds model.pt (same weights and meta) and log.json without training."""
    out = tmp_path / "run"
    train(cfg(data, out, epochs=1))
    model_before = load_checkpoint(out / "model.pt")
    log_before = json.loads((out / "log.json").read_text())
    (out / "model.pt").unlink()
    (out / "log.json").unlink()
    log = train(cfg(data, out, epochs=1, auto_resume=True))
    assert log["epochs"] == log_before["epochs"]
    rebuilt = load_checkpoint(out / "model.pt")
    assert rebuilt.meta == model_before.meta and rebuilt.spec == model_before.spec
    assert rebuilt.state_dict.keys() == model_before.state_dict.keys()
    assert all(torch.equal(rebuilt.state_dict[k], model_before.state_dict[k]) for k in rebuilt.state_dict)
    assert json.loads((out / "log.json").read_text()) == log_before


def test_train_widens_a_narrower_init_checkpoint(data, tmp_path, capsys):
    train(cfg(data, tmp_path / "narrow", epochs=1, drop_rate=0.0))  # SPEC: width 0.25
    log = train(cfg(data, tmp_path / "wide", spec=ModelSpec("resnet20", 0.5), epochs=1,
                    init=str(tmp_path / "narrow" / "model.pt")))
    assert "widened the --init checkpoint from width 0.25 to 0.5" in capsys.readouterr().out
    assert log["config"]["model"]["width"] == 0.5
    ck = load_checkpoint(tmp_path / "wide" / "model.pt")
    assert ck.spec.width == 0.5 and ck.state_dict["layer1.0.conv1.weight"].shape == (8, 8, 3, 3)


def test_train_refuses_a_width_that_is_not_a_whole_multiple(data, tmp_path, capsys):
    train(cfg(data, tmp_path / "narrow", epochs=1, drop_rate=0.0))  # SPEC: width 0.25
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


def test_bf16_precision_trains_float32_weights_and_is_part_of_the_run(data, tmp_path):
    """--train-precision bf16 runs the forward pass under bfloat16 autocast: the saved weights stay
    float32, the record says bf16, a resume at fp32 is refused, and the same seed repeats it."""
    a = train(cfg(data, tmp_path / "a", epochs=1, precision="bf16"))
    b = train(cfg(data, tmp_path / "b", epochs=1, precision="bf16"))
    fp = train(cfg(data, tmp_path / "fp", epochs=1))
    ck = load_checkpoint(tmp_path / "a" / "model.pt")
    assert all(t.dtype == torch.float32 for t in ck.state_dict.values() if t.is_floating_point())
    assert ck.meta["config"]["precision"] == "bf16" and fp["config"]["precision"] == "fp32"
    assert a["epochs"][0]["train_loss"] == b["epochs"][0]["train_loss"]
    assert a["epochs"][0]["train_loss"] != fp["epochs"][0]["train_loss"]  # bf16 really ran
    with pytest.raises(UserError, match="precision='bf16', not 'fp32'"):
        train(cfg(data, tmp_path / "a", epochs=1, resume=True))
    with pytest.raises(UserError, match="--precision must be one of fp32, bf16"):
        train(cfg(data, tmp_path / "c", epochs=1, precision="fp16"))


def test_bf16_warns_exactly_on_a_cpu_without_bf16_hardware(data, tmp_path, capsys, monkeypatch):
    """The probe agrees with the CPU's own flags; a bf16 training warns (and still runs bf16) exactly
    when the probe says bf16 has no hardware, both ways on any machine; fp32 never warns."""
    import toolchain.training.loop as training  # train() looks bf16_is_slow_here up there

    flags = x86_cpu_flags()
    if flags is not None and os.uname().machine == "x86_64":  # the 64-bit x86 that torch builds for
        assert bf16_is_slow_here("cpu") == (not flags & {"amx_tile", "avx512_bf16"}), sorted(flags)
    assert not bf16_is_slow_here("cuda")
    warning = "--train-precision bf16 on a CPU without AMX or AVX512-BF16"
    monkeypatch.setattr(training, "bf16_is_slow_here", lambda device_type: True)
    train(cfg(data, tmp_path / "fp", epochs=1))
    assert warning not in capsys.readouterr().err
    for slow in (True, False):
        monkeypatch.setattr(training, "bf16_is_slow_here", lambda device_type, slow=slow: slow)
        log = train(cfg(data, tmp_path / f"bf-{slow}", epochs=1, precision="bf16"))
        assert (warning in capsys.readouterr().err) == slow
        assert log["config"]["precision"] == "bf16"


def test_a_run_recorded_before_the_precision_option_resumes_as_fp32(data, tmp_path):
    out = tmp_path / "old"

    def crash(epoch, step):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a run cut after its first epoch
        train(cfg(data, out, epochs=2), step_callback=crash)
    raw = torch.load(out / LAST, weights_only=True)
    del raw["meta"]["config"]["precision"]  # as written before --precision existed
    torch.save(raw, out / LAST)
    with pytest.raises(UserError, match="precision='fp32', not 'bf16'"):
        train(cfg(data, out, epochs=2, resume=True, precision="bf16"))
    log = train(cfg(data, out, epochs=2, resume=True))
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]


def test_progress_lines_off_a_terminal_and_the_epoch_line_says_what_test_measures(data, tmp_path, capsys,
                                                                                 monkeypatch):
    """`make demo > log` showed nothing for 8.5 minutes of training, and `test 60.80%` did not say it
    is the accuracy of a simulated faulty chip (issue 35). Off a terminal (capsys is not one), a
    line every RRAM_PROGRESS_SECONDS (0 here: every step)."""
    import runtime.progress

    monkeypatch.setattr(runtime.progress, "PROGRESS_SECONDS", 0.0)
    assert main(["train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0.2", "--epochs", "1",
                 "--train-images", "128", "--eval-images", "64", "--batch-size", "32", "--data", str(data),
                 "--no-cache", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("train epoch 1/1: ")]
    assert [s.split()[3] for s in steps] == ["1/4", "2/4", "3/4", "4/4"] and "ETA" in steps[0]
    assert "loss" in steps[-1] and "train accuracy" in steps[-1]
    epoch = next(line for line in err.splitlines() if line.startswith("epoch 1/1: "))
    assert "(on one simulated faulty chip, 20% of weights stuck at 0)" in epoch
    assert main(["train", "--model", "resnet20", "--width", "0.25", "--drop-rate", "0", "--epochs", "1",
                 "--train-images", "64", "--eval-images", "32", "--batch-size", "32", "--data", str(data),
                 "--no-cache", "--out", str(tmp_path / "plain")]) == 0
    assert "(fault-free)" in next(line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/1"))

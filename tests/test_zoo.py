"""The model zoo (zoo/, toolchain/zoo.py; issue 36): the manifest matches the files, every model
loads by name, and (slow, on the real test split) gives exactly its recorded fault-free accuracy."""
import hashlib
import json
import os
import re
import shutil

import pytest

from toolchain import zoo

from conftest import ROOT, one_thread

ENTRIES = zoo.manifest()


def test_the_manifest_matches_the_files():
    assert ENTRIES, "the zoo is empty"
    files = {p.name for p in zoo.ZOO_DIR.glob("*.pt")}
    assert files == {e["file"] for e in ENTRIES.values()}  # no file without an entry, nor the reverse
    for name, entry in ENTRIES.items():
        data = (zoo.ZOO_DIR / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert all(k in entry for k in zoo.REQUIRED)
        assert entry["training_sha256"] == hashlib.sha256(json.dumps(entry["training"], sort_keys=True)
                                                          .encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_each_model_loads_by_name(name):
    from toolchain.checkpoints import load_checkpoint

    entry = ENTRIES[name]
    ckpt = load_checkpoint(name)
    assert ckpt.spec.name == entry["arch"] and ckpt.spec.width == entry["width"]
    assert sorted(ckpt.bn_stats, key=float) == entry["bn_rates"]
    ckpt.build()  # the weights fit the architecture


def test_a_changed_file_is_refused(tmp_path):
    import shutil

    from toolchain.errors import UserError

    copy = tmp_path / "zoo"
    shutil.copytree(zoo.ZOO_DIR, copy)
    name, entry = next(iter(ENTRIES.items()))
    with open(copy / entry["file"], "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(UserError, match="sha256"):
        zoo.zoo_path(name, copy)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_each_model_gives_its_recorded_fault_free_accuracy(name, shared_data, capsys, monkeypatch, real_data_cache):
    from toolchain.cli import main

    monkeypatch.setenv("RRAM_CACHE", str(real_data_cache))
    entry = ENTRIES[name]
    bn = entry["fault_free"].get("bn_rate")
    assert main(["eval", name, "--data", str(shared_data), "--json", *(["--bn-rate", bn] if bn else [])]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == entry["fault_free"]["accuracy"]


def test_the_zoo_readme_quotes_the_manifest():
    text = (zoo.ZOO_DIR / "README.md").read_text()
    for name, entry in ENTRIES.items():
        assert f"| `{name}` |" in text and f"{100 * entry['fault_free']['accuracy']:.2f}%" in text


def test_the_trainings_in_progress_match_their_files():
    for name, entry in zoo.in_progress().items():
        data = zoo.state_bytes(entry)
        assert entry["file"] == f"{zoo.STATE_DIR}/{name}/last.pt"
        parts = entry.get("parts", [])
        assert parts == [f"{entry['file']}.{i}" for i in range(len(parts))] and len(parts) != 1
        assert all((zoo.ZOO_DIR / part).stat().st_size == zoo.PART_BYTES for part in parts[:-1])
        held = sorted(f.relative_to(zoo.ZOO_DIR).as_posix() for f in (zoo.ZOO_DIR / zoo.STATE_DIR / name).iterdir())
        assert held == sorted(parts or [entry["file"]]), name  # no stray file or part beside them
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert entry["status"] == f"in progress, epoch {entry['epoch']} of {entry['epochs']}"
        assert entry["epoch"] < entry["epochs"] and name not in ENTRIES
    state = zoo.ZOO_DIR / zoo.STATE_DIR
    folders = {f.name for f in state.iterdir()} if state.is_dir() else set()
    assert folders == set(zoo.in_progress())  # a finished training's state folder goes (zoo_add.py)


def test_the_zoo_readme_names_the_trainings_in_progress():
    line = re.search(r"In progress now.*?(?:\n\n|$)", (zoo.ZOO_DIR / "README.md").read_text(), re.S).group(0)
    named = set(re.findall(r"`([a-z][a-z0-9.-]+)`", line))
    assert named == set(zoo.in_progress()) or (not zoo.in_progress() and "none" in line), named


single_thread = pytest.fixture(one_thread)


def test_a_training_saved_to_the_zoo_continues_elsewhere_exactly(coloured_cifar, tmp_path, monkeypatch, capsys,
                                                                single_thread):
    """benchmarks/zoo_checkpoint.py: a run cut after its first epoch is saved into a zoo, restored
    into another folder, and the command the zoo records finishes it with the weights of an
    uninterrupted run."""
    import shlex
    import sys

    import torch

    from toolchain.checkpoints import load_checkpoint
    from toolchain.cli import main
    from toolchain.models import ModelSpec
    from toolchain.training import TrainConfig, train

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import zoo_checkpoint

    data = coloured_cifar()
    monkeypatch.setenv("RRAM_DATA", str(data))
    monkeypatch.setenv("RRAM_CACHE", str(tmp_path / "cache"))
    cfg = dict(spec=ModelSpec("resnet20", 0.25), drop_rate=0.2, epochs=2, data=str(data), batch_size=32,
               images=64, eval_images=32, progress=False, device="cpu")
    train(TrainConfig(out=str(tmp_path / "whole"), **cfg))

    def cut(epoch, step):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "run"), **cfg), step_callback=cut)
    own = tmp_path / "zoo"
    shutil.copytree(zoo.ZOO_DIR, own, ignore=shutil.ignore_patterns("*.pt"))
    assert zoo_checkpoint.main(["save", "tiny", str(tmp_path / "run"), "--zoo", str(own)]) == 0
    entry = zoo.in_progress(own)["tiny"]
    assert entry["status"] == "in progress, epoch 1 of 2" and (own / "state" / "tiny" / "last.pt").is_file()
    assert "parts" not in entry
    # a resume point over the git host's limit per file is kept in parts (here: made small), which
    # replace the single file; restore joins them (the resumed weights below equal the whole run's)
    size = (tmp_path / "run" / "last.pt").stat().st_size
    monkeypatch.setattr(zoo_checkpoint, "PART_BYTES", size // 3 + 1)
    assert zoo_checkpoint.main(["save", "tiny", str(tmp_path / "run"), "--zoo", str(own)]) == 0
    entry = zoo.in_progress(own)["tiny"]
    assert entry["parts"] == [f"state/tiny/last.pt.{i}" for i in range(3)]
    assert sorted(p.name for p in (own / "state" / "tiny").iterdir()) == ["last.pt.0", "last.pt.1", "last.pt.2"]
    assert zoo.state_bytes(entry, own) == (tmp_path / "run" / "last.pt").read_bytes()
    # back to one file when it fits (exactly the limit): the parts go
    monkeypatch.setattr(zoo_checkpoint, "PART_BYTES", size)
    assert zoo_checkpoint.main(["save", "tiny", str(tmp_path / "run"), "--zoo", str(own)]) == 0
    single = zoo.in_progress(own)["tiny"]
    assert "parts" not in single and [p.name for p in (own / "state" / "tiny").iterdir()] == ["last.pt"]
    assert zoo.state_bytes(single, own) == (tmp_path / "run" / "last.pt").read_bytes()
    # a part missing from a checkout: one line, nothing restored
    manifest = json.loads((own / "manifest.json").read_text())
    manifest["in_progress"]["tiny"] = entry
    (own / "manifest.json").write_text(json.dumps(manifest))
    assert zoo_checkpoint.main(["restore", "tiny", str(tmp_path / "nowhere"), "--zoo", str(own)]) == 2
    assert "last.pt.0, state/tiny/last.pt.1, state/tiny/last.pt.2 missing" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
    monkeypatch.setattr(zoo_checkpoint, "PART_BYTES", size // 3 + 1)  # saved in parts again: restore joins them
    assert zoo_checkpoint.main(["save", "tiny", str(tmp_path / "run"), "--zoo", str(own)]) == 0
    assert zoo.in_progress(own)["tiny"]["parts"] == entry["parts"]
    capsys.readouterr()
    assert zoo_checkpoint.main(["restore", "tiny", str(tmp_path / "elsewhere"), "--zoo", str(own)]) == 0
    command = capsys.readouterr().out.splitlines()[-1].strip()
    argv = shlex.split(command.replace('"$RRAM_DATA"', str(data)))
    assert argv[:2] == ["rram", "train"] and argv[-1] == "--resume"
    assert "--eval-images 32" in command  # the epochs' check on as many images as the run began with
    assert main(argv[1:]) == 0
    whole = load_checkpoint(tmp_path / "whole" / "model.pt").state_dict
    resumed = load_checkpoint(tmp_path / "elsewhere" / "model.pt").state_dict
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    logs = [[{k: v for k, v in e.items() if k != "seconds"} for e in json.loads((tmp_path / run / "log.json")
             .read_text())["epochs"]] for run in ("whole", "elsewhere")]
    assert logs[0] == logs[1]  # the same per-epoch figures, the last one measured after the resume
    assert zoo_checkpoint.main(["restore", "tiny", str(tmp_path / "elsewhere"), "--zoo", str(own)]) == 2


def _per_rate_bn(ckpt, model):
    """Two empty per-rate BN tables (rates 0 and 0.3), as `rram recalibrate --bn-rate 0,0.3` leaves."""
    ckpt.bn_stats.update({"0.0": {}, "0.3": {}})


@pytest.mark.parametrize("bn_rate, says", [(None, "give --bn-rate"), ("0.1", "no BN statistics for rate 0.1")])
def test_zoo_add_refuses_a_per_rate_bn_checkpoint_without_the_rate_it_has(tiny_checkpoint, tmp_path, bn_rate, says):
    """A recalibrated drop-connect checkpoint measured without --bn-rate would be judged with its
    training-time BN statistics (gathered under masks: VGG13-BN's read 20.83% so); without a rate it
    has statistics for, zoo_add stops in one line before the zoo changes."""
    import subprocess
    import sys

    path = tiny_checkpoint(edit=_per_rate_bn)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(path, run / "model.pt")
    (run / "log.json").write_text('{"config": {}, "epochs": []}')
    before = sorted(p.name for p in zoo.ZOO_DIR.iterdir())
    manifest = (zoo.ZOO_DIR / zoo.MANIFEST).read_bytes()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zoo_add.py"), "tiny-test", str(run),
                           "--data", str(tmp_path / "no-data"), *(["--bn-rate", bn_rate] if bn_rate else [])],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in zoo.ZOO_DIR.iterdir()) == before
    assert (zoo.ZOO_DIR / zoo.MANIFEST).read_bytes() == manifest

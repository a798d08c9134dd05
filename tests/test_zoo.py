"""The model zoo (zoo/, toolchain/zoo.py; issue 36): the manifest matches the files, every model
loads by name, and (slow, on the real test split) gives exactly its recorded fault-free accuracy."""
import hashlib
import json

import pytest

from toolchain import zoo

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

"""Shared test set-up: where the real data lives (one definition of ``../shared``), fixtures that
skip without it, and the synthetic data sets the tests write (one writer per format)."""
import os
import pickle
import platform
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# absolute: make exports RRAM_DATA/RRAM_WEIGHTS relative to the checkout (../shared/...), and the
# end-to-end tests run their shell blocks from a temporary folder
SHARED = Path(os.environ.get("RRAM_SHARED", ROOT.parent / "shared")).resolve()
SHARED_DATA = Path(os.environ.get("RRAM_DATA", SHARED / "data" / "cifar10-jpeg")).resolve()
SHARED_MODELS = Path(os.environ.get("RRAM_WEIGHTS", SHARED / "models")).resolve()
SHARED_RESNET20 = SHARED_MODELS / "resnet20-12fca82f.th"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def run_readme_block(script: str, smaller: list[tuple[str, str]], tmp_path: Path, cache: Path) -> Path:
    """Run a README shell block as written, in a fresh shell in ``tmp_path``: smaller sizes
    (``smaller``: (README text, test text)), this checkout's venv, ``../shared`` made absolute (the
    block must give data paths as ``"$PWD/../shared/..."``, which survive its ``cd``); no RRAM_*
    variable but the data cache. Asserts it succeeded and wrote nothing beside its ``work/``
    folder (and the test's own cache); returns that folder."""
    import subprocess

    for old, new in smaller:
        script = script.replace(old, new)
    script = script.replace("source .venv/bin/activate", f"source {ROOT / '.venv' / 'bin' / 'activate'}")
    assert '"$PWD/../shared/' in script  # absolute data paths: they survive the block's cd
    script = script.replace("$PWD/../shared", str(SHARED))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRAM_")}  # a fresh shell
    env["RRAM_CACHE"] = str(cache)
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    beside = {p for p in tmp_path.iterdir()} - {tmp_path / "work", cache}
    assert not beside  # nothing beside the flow's work folder (and this test's own data cache)
    return tmp_path / "work"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "test").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def shared_resnet20() -> Path:
    if not SHARED_RESNET20.is_file():
        pytest.skip(f"pretrained ResNet20 not found at {SHARED_RESNET20}")
    return SHARED_RESNET20


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def real_data_cache(tmp_path) -> Path:
    """Where the slow end-to-end tests keep the decoded real CIFAR-10: $RRAM_CACHE when set (CI
    sets one per checkout: decoding 60k JPEGs once, not once per test), else a fresh folder."""
    return Path(os.environ["RRAM_CACHE"]) if os.environ.get("RRAM_CACHE") else tmp_path / "cache"


# --- session-scoped factories ----------------------------------------------------------------
# Each input below is built once per test session for each set of arguments and shared by every
# module that asks for it. Shared means read-only: a test that edits, adds or removes a file in
# one works on its own copy (``shutil.copytree(art, tmp_path / ...)``), never on the shared folder.

def _fingerprint(path: Path) -> dict:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in ([path] if path.is_file() else sorted(path.rglob("*")))}


class _Once:
    """``build(*key)`` called once per key; later calls return the first result. ``check()`` (at
    the session's end) fails if a file or folder it built was changed: shared inputs are read-only."""

    def __init__(self, build):
        self.build, self.made, self.prints = build, {}, {}

    def __call__(self, *key, **data):  # data: passed to build, not part of the key
        if key not in self.made:
            self.made[key] = self.build(*key, **data)
            if isinstance(self.made[key], Path):
                self.prints[key] = _fingerprint(self.made[key])
        return self.made[key]

    def check(self) -> None:
        changed = [str(self.made[k]) for k, fp in self.prints.items() if _fingerprint(self.made[k]) != fp]
        assert not changed, f"a test changed a shared input (copy it first): {', '.join(changed)}"


@pytest.fixture(scope="session")
def make_tiny_artifact(tmp_path_factory):
    """``make_tiny_artifact(device="paper", seed=0, bn_rate=None, size=32)``: the tiny model
    (``_runtime_helpers.make_artifact``) through the real quantizer for ``device`` (a preset's name
    or a DeviceConfig), one folder per arguments."""
    from runtime.crossbar import preset

    from _runtime_helpers import make_artifact  # it imports this module: imported when used

    def artifact(device="paper", seed=0, bn_rate=None, size=32):
        return once(preset(device) if isinstance(device, str) else device, seed, bn_rate, size)

    once = _Once(lambda device, seed, bn_rate, size: make_artifact(
        tmp_path_factory.mktemp("art") / "a", device, seed=seed, bn_rate=bn_rate, size=size))
    yield artifact
    once.check()


@pytest.fixture(scope="session")
def make_bn_artifact(tmp_path_factory):
    """``make_bn_artifact(seed=0, bn_rate=None)``: the tiny model with its BN kept through export, the
    standard passes and quantize (``_runtime_helpers.bn_artifact``): its periphery can be calibrated."""
    from _runtime_helpers import bn_artifact

    once = _Once(lambda seed, bn_rate: bn_artifact(tmp_path_factory.mktemp("bn-art") / "a", seed=seed,
                                                   bn_rate=bn_rate))
    yield lambda seed=0, bn_rate=None: once(seed, bn_rate)
    once.check()


@pytest.fixture(scope="session")
def small_images():
    """``small_images(n, seed=0)``: (images, labels) of ``_runtime_helpers.make_images`` (labelled by
    the float tiny model); each call returns fresh arrays, so a test may change them."""
    from _runtime_helpers import make_images

    once = _Once(lambda n, seed: make_images(n, seed=seed))
    return lambda n, seed=0: tuple(a.copy() for a in once(n, seed))


@pytest.fixture(scope="session")
def cifar_test_batch(tmp_path_factory):
    """``cifar_test_batch(images, labels)``: a data folder holding only ``test_batch`` with these
    (N, H, W, 3) uint8 images (``write_test_batch``), one folder per content."""
    import hashlib

    def folder(images, labels):
        digest = hashlib.sha256()
        for a in (np.ascontiguousarray(images), np.ascontiguousarray(labels)):
            digest.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
        return once(digest.hexdigest(), images=images, labels=labels)

    once = _Once(lambda _, images, labels: write_test_batch(tmp_path_factory.mktemp("cifar"), images, labels))
    yield folder
    once.check()


@pytest.fixture(scope="session")
def coloured_cifar(tmp_path_factory):
    """``coloured_cifar(per_batch=64, test=128, seed=0)``: ``make_cifar``'s class-coloured CIFAR-10
    batches (a few training steps learn them), one folder per arguments."""
    once = _Once(lambda per_batch, test, seed: make_cifar(tmp_path_factory.mktemp("cifar"), per_batch=per_batch,
                                                          test=test, seed=seed))
    yield lambda per_batch=64, test=128, seed=0: once(per_batch, test, seed)
    once.check()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(spec=None, edit=None)``: an untrained model of ``spec`` (default ResNet20 of
    width 0.25) built after ``torch.manual_seed(0)``, saved as a checkpoint with CIFAR-10
    normalisation and no BN statistics or meta; ``edit(checkpoint, model)``, a module-level
    function, may fill those in before it is saved. One file per (spec, edit)."""
    def build(spec, edit):
        import torch

        from toolchain.checkpoints import Checkpoint, save_checkpoint
        from toolchain.data import CIFAR10_NORM
        from toolchain.models import build_model

        torch.manual_seed(0)
        model = build_model(spec).eval()
        ckpt = Checkpoint(spec, CIFAR10_NORM, model.state_dict(), {}, {})
        if edit is not None:
            edit(ckpt, model)
        return save_checkpoint(ckpt, tmp_path_factory.mktemp("ck") / "m.pt")

    def checkpoint(spec=None, edit=None):
        from toolchain.models import ModelSpec

        return once(spec or ModelSpec("resnet20", 0.25), edit)

    once = _Once(build)
    yield checkpoint
    once.check()


@pytest.fixture(scope="session")
def self_labelled():
    """``self_labelled(art, n=64, seed=3)``: images the artifact's fault-free model classifies as
    labelled (``_runtime_helpers.self_labelled_images``); fresh arrays on each call."""
    from _runtime_helpers import self_labelled_images

    once = _Once(lambda art, n, seed: self_labelled_images(art, n=n, seed=seed))
    return lambda art, n=64, seed=3: tuple(a.copy() for a in once(Path(art), n, seed))


@pytest.fixture(scope="session")
def shared_paper_artifact(tmp_path_factory):
    """The shared pretrained ResNet20 deployed as docs/runtime.md shows (`rram export`, `rram passes
    --passes standard`, `rram quantize --preset paper`), built once per session for the slow
    cross-checks against the PyTorch reference (read it, never change it); skipped without the file."""
    from toolchain.cli import main

    def build():
        tmp = tmp_path_factory.mktemp("r20-paper")
        assert main(["export", str(SHARED_RESNET20), "--model", "resnet20", "--out", str(tmp / "r20.onnx")]) == 0
        assert main(["passes", str(tmp / "r20.onnx"), str(tmp / "r20.passes.onnx"), "--passes", "standard"]) == 0
        assert main(["quantize", str(tmp / "r20.passes.onnx"), str(tmp / "art"), "--preset", "paper"]) == 0
        return tmp / "art"

    once = _Once(build)

    def artifact() -> Path:
        if not SHARED_RESNET20.is_file():
            pytest.skip(f"pretrained ResNet20 not found at {SHARED_RESNET20}")
        return once()
    yield artifact
    once.check()


@pytest.fixture(scope="session")
def paper_art(make_tiny_artifact) -> Path:
    """The small deployed artifact on the `paper` preset (shared: read it, never change it)."""
    return make_tiny_artifact()


@pytest.fixture(scope="session")
def paper_data(paper_art, self_labelled):
    """(images, labels) that ``paper_art`` classifies as labelled when fault-free."""
    return self_labelled(paper_art)


def one_thread(request):
    """Generator fixture body (``pytest.fixture(autouse=True)(one_thread)``): tiny models run
    fastest (and never oversubscribe a busy machine) on one thread. A test on the real CIFAR-10
    (it asks for ``shared_data``) keeps every core: its full-size models run about twice as fast
    on two (the zoo's VGG13-BN on 10,000 images: 131 s on one AVX2 core, 70 s on two)."""
    import torch

    if "shared_data" in request.fixturenames:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- synthetic data sets ------------------------------------------------------------------------

def write_cifar_python(folder: Path, batches: dict, label_names=None) -> Path:
    """The one writer of torchvision's CIFAR-10 python layout: ``batches`` maps a file name
    (data_batch_1.., test_batch) to (uint8 rows of 3072 CHW values, labels); ``batches.meta`` is
    written when ``label_names`` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": [int(x) for x in labels]}, fh)
    if label_names is not None:
        with open(folder / "batches.meta", "wb") as fh:
            pickle.dump({"label_names": list(label_names)}, fh)
    return folder


def write_cifar_batches(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """A tiny ``root/cifar-10-batches-py`` of uniform random images (for the data-loading tests)."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_train // 5
        batches[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n))
    write_cifar_python(root / "cifar-10-batches-py", batches, CIFAR10_CLASSES)
    return root


def make_cifar(root: Path, per_batch: int = 64, test: int = 128, seed: int = 0) -> Path:
    """A small ``root/cifar-10-batches-py`` in which each class has its own mean colour, so a few
    steps of training do learn something (training, recalibration, export, eval tests)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(10, 3))

    def batch(n):
        labels = rng.integers(0, 10, size=n)
        img = colours[labels][:, :, None, None] + rng.normal(0, 40, size=(n, 3, 32, 32))
        return np.clip(img, 0, 255).astype(np.uint8).reshape(n, -1), labels

    batches = {f"data_batch_{i}": batch(per_batch) for i in range(1, 6)}
    batches["test_batch"] = batch(test)
    write_cifar_python(root / "cifar-10-batches-py", batches)
    return root


def write_test_batch(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """``root/test_batch`` only, holding these (N, H, W, 3) uint8 images (for the runtime tests)."""
    return write_cifar_python(root, {"test_batch": (images.transpose(0, 3, 1, 2).reshape(len(images), -1),
                                                    labels)})


def write_imagefolder(root: Path, per_class: int = 2, classes=("cat", "dog", "ship"), seed: int = 0) -> Path:
    """``root/{train,test}/<class>/NNNN.png`` of uniform random 32x32 images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


def x86_cpu_flags() -> set[str] | None:
    """The CPU's feature flags (/proc/cpuinfo) on an x86 Linux machine; None where they cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``rram ARGV`` in-process: (exit code, stdout, stderr)."""
    from toolchain.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The one ``rram: error:`` line a bad input must give (and nothing else on stderr)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rram: error: "), err
    return lines[0]

import numpy as np
import pytest
import torch

import toolchain.data.load as data_load
from toolchain.data import CIFAR10_NORM, augment, detect_layout, iterate_batches, load_split
from toolchain.errors import UserError

from conftest import write_cifar_batches, write_imagefolder


def test_torchvision_layout_reads_pixels_and_labels(tmp_path, cache_dir):
    root = write_cifar_batches(tmp_path / "c", n_train=20, n_test=10)
    layout, _ = detect_layout(root)
    assert layout == "cifar-batches"
    test = load_split(root, "test", cache_dir=cache_dir)
    assert test.images.shape == (10, 32, 32, 3) and test.images.dtype == np.uint8
    assert test.labels.dtype == np.int64 and len(test.labels) == 10
    assert test.classes[0] == "airplane"
    # CHW rows in the batch file become HWC pixels
    import pickle
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        raw = pickle.load(fh, encoding="latin1")
    np.testing.assert_array_equal(test.images[3], raw["data"][3].reshape(3, 32, 32).transpose(1, 2, 0))
    assert test.labels.tolist() == raw["labels"]
    assert len(load_split(root, "train", cache_dir=cache_dir)) == 20


def test_imagefolder_layout_labels_follow_sorted_class_folders(tmp_path, cache_dir):
    root = write_imagefolder(tmp_path / "f", per_class=2, classes=("ship", "cat", "dog"))
    split = load_split(root, "test", cache_dir=cache_dir)
    assert split.classes == ["cat", "dog", "ship"]
    assert split.labels.tolist() == [0, 0, 1, 1, 2, 2]
    from PIL import Image
    np.testing.assert_array_equal(split.images[2], np.asarray(Image.open(root / "test" / "dog" / "0000.png")))


def test_second_load_comes_from_cache_without_decoding(tmp_path, cache_dir, monkeypatch):
    root = write_imagefolder(tmp_path / "f")
    first = load_split(root, "train", cache_dir=cache_dir)
    assert list(cache_dir.glob("*.npz"))

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_load, "decode_imagefolder", no_decoding)
    second = load_split(root, "train", cache_dir=cache_dir)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_cache_is_invalidated_when_a_source_file_changes(tmp_path, cache_dir):
    root = write_imagefolder(tmp_path / "f")
    load_split(root, "test", cache_dir=cache_dir)
    from PIL import Image
    target = root / "test" / "cat" / "0000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(target)
    other = write_imagefolder(tmp_path / "g")  # another data folder keeps its own entry
    load_split(other, "test", cache_dir=cache_dir)
    again = load_split(root, "test", cache_dir=cache_dir)
    assert again.images[0].max() == 0
    # the superseded entry of the first folder is gone; the other folder's stays
    entries = sorted(cache_dir.glob("*.npz"))
    assert len(entries) == 2 and len({e.name.rsplit("-", 1)[0] for e in entries}) == 2
    assert np.array_equal(load_split(other, "test", cache_dir=cache_dir).images,
                          load_split(other, "test", use_cache=False).images)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "data folder not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "unrecognised data layout"),
])
def test_bad_data_folders(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load_split(make(tmp_path), "test", use_cache=False)


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "d" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "d" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="empty"):
        load_split(tmp_path / "d", "test", use_cache=False)


def test_augment_is_a_padded_crop_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    out = augment(x, g)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(64):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    flipped = sum(not any(torch.equal(out[i], w) for w in
                          [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)])
                  for i in range(64))
    assert 10 < flipped < 54  # about half are mirrored


def test_iterate_batches_normalises_and_covers_every_image_once(tmp_path, cache_dir):
    split = load_split(write_cifar_batches(tmp_path / "c", n_test=10), "test", cache_dir=cache_dir)
    seen = []
    for x, y in iterate_batches(split, 4, CIFAR10_NORM, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        seen += y.tolist()
    assert sorted(seen) == sorted(split.labels.tolist())
    x, _ = next(iterate_batches(split, 10, CIFAR10_NORM))
    expected = (torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255
                - torch.tensor(CIFAR10_NORM.mean).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_NORM.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)

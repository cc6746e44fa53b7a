"""Tests for bench/data/: data set loading, the decode cache, and the deterministic device-side loader.

All tests run on the CPU in seconds, except the one marked ``slow`` that decodes the real CIFAR-10 JPEG archive.
Every data set except ``digits`` is built here in miniature under ``tmp_path``; nothing touches the network.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import bench.data.cifar as cifar
from bench.data import DATASETS, Batch, DataError, Loader, Split, load_dataset
from bench.data.cifar import CIFAR10_CLASSES
from bench.data.loader import augment_crop_flip

REPO_ROOT = Path(cifar.__file__).resolve().parents[2]  # bench/data/cifar.py -> the repository
SHARED_CIFAR10_JPEG = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _random_split(n=50, c=3, size=8, num_classes=5, seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=g, dtype=torch.int64)
    return Split(images, labels)


def _save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _solid(color, size=(8, 8)) -> np.ndarray:
    """A solid-colour RGB image; survives JPEG almost exactly, so labels can be checked from pixel values."""
    h, w = size
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (h, w, 3)).copy()


def _make_folder(root: Path, size=(8, 8), ext="png") -> Path:
    """ImageFolder with 2 classes: 'cat' images are red, 'dog' images are blue (train 3+2, test 1+1)."""
    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    counts = {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 1}}
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            for i in range(n):
                _save_image(root / split / cls / f"{i:03d}.{ext}", _solid(colors[cls], size))
    return root


def _batches_equal(a: Batch, b: Batch) -> bool:
    def same(u, v):
        return (u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))

    return all(same(getattr(a, f), getattr(b, f)) for f in ("x", "y", "idx", "dx", "dy", "flip"))


# ----------------------------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------------------------


def test_digits_shapes_and_determinism():
    train, test, info = load_dataset("digits")
    assert train.images.shape == (1497, 1, 32, 32)
    assert test.images.shape == (300, 1, 32, 32)
    assert train.images.dtype == torch.uint8 and test.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.labels.shape == (1497,)
    assert train.images.is_contiguous() and test.images.is_contiguous()
    assert info.num_classes == 10 and info.channels == 1 and info.image_size == 32 and len(info.classes) == 10
    # 0..16 is scaled to the full 0..255 range.
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    # Both splits contain every class (the fixed permutation mixes them).
    assert set(test.labels.tolist()) == set(range(10))

    train2, test2, info2 = load_dataset("digits")
    assert torch.equal(train.images, train2.images) and torch.equal(train.labels, train2.labels)
    assert torch.equal(test.images, test2.images) and torch.equal(test.labels, test2.labels)
    assert info == info2


def test_digits_split_is_fixed_permutation_of_sklearn():
    from sklearn.datasets import load_digits

    train, test, _ = load_dataset("digits")
    target = torch.as_tensor(load_digits().target, dtype=torch.int64)
    perm = torch.randperm(len(target), generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([train.labels, test.labels]), target[perm])


def test_split_subset_and_to():
    split = _random_split(n=10)
    sub = split.subset(4)
    assert len(sub) == 4
    assert torch.equal(sub.images, split.images[:4]) and torch.equal(sub.labels, split.labels[:4])
    assert len(split.subset(1000)) == 10
    assert len(split.subset(0)) == 0
    moved = split.to("cpu")
    assert torch.equal(moved.images, split.images)
    with pytest.raises(DataError):
        Split(split.images.float(), split.labels)  # images must be uint8


# ----------------------------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------------------------


def test_loader_same_epoch_is_identical_and_epochs_differ():
    split = _random_split(n=50)
    loader = Loader(split, 16, device="cpu", shuffle=True, augment=True, seed=7)
    first = list(loader.epoch(3))
    again = list(loader.epoch(3))
    assert len(first) == len(again) == len(loader) == 4
    assert all(_batches_equal(a, b) for a, b in zip(first, again))

    # A fresh loader with the same seed reproduces the epoch too (what resume after a kill relies on).
    fresh = list(Loader(split, 16, device="cpu", shuffle=True, augment=True, seed=7).epoch(3))
    assert all(_batches_equal(a, b) for a, b in zip(first, fresh))

    other = list(loader.epoch(4))
    assert not torch.equal(torch.cat([b.idx for b in first]), torch.cat([b.idx for b in other]))
    other_seed = list(Loader(split, 16, device="cpu", shuffle=True, augment=True, seed=8).epoch(3))
    assert not torch.equal(torch.cat([b.idx for b in first]), torch.cat([b.idx for b in other_seed]))


def test_loader_covers_every_index_once_and_matches_labels():
    split = _random_split(n=50)
    loader = Loader(split, 16, device="cpu", shuffle=True, augment=True, seed=1)
    batches = list(loader.epoch(0))
    assert [len(b.idx) for b in batches] == [16, 16, 16, 2]  # no drop_last: last batch is partial
    idx = torch.cat([b.idx for b in batches])
    assert sorted(idx.tolist()) == list(range(50))
    for b in batches:
        assert b.x.dtype == torch.float32 and b.x.shape[1:] == (3, 8, 8)
        assert float(b.x.min()) >= 0.0 and float(b.x.max()) <= 1.0
        assert b.idx.dtype == torch.int64 and b.y.dtype == torch.int64
        assert torch.equal(b.y, split.labels[b.idx])
        assert b.dx.dtype == torch.int64 and b.flip.dtype == torch.bool
        assert int(b.dx.min()) >= 0 and int(b.dx.max()) <= 8 and int(b.dy.max()) <= 8


def test_loader_drop_last_and_len():
    split = _random_split(n=50)
    loader = Loader(split, 16, device="cpu", shuffle=True, augment=False, seed=1, drop_last=True)
    batches = list(loader.epoch(0))
    assert len(loader) == 3 and [len(b.idx) for b in batches] == [16, 16, 16]
    assert len(Loader(split, 16, device="cpu", shuffle=False, augment=False, seed=0)) == 4


def test_loader_without_shuffle_or_augment_is_plain_order():
    split = _random_split(n=20)
    batches = list(Loader(split, 8, device="cpu", shuffle=False, augment=False, seed=123).epoch(5))
    assert torch.equal(torch.cat([b.idx for b in batches]), torch.arange(20))
    assert all(b.dx is None and b.dy is None and b.flip is None for b in batches)
    x = torch.cat([b.x for b in batches])
    assert torch.equal(x, split.images.float() / 255)


def test_loader_does_not_touch_global_rng():
    split = _random_split(n=40)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    for shuffle, augment in ((True, True), (False, False), (True, False)):
        loader = Loader(split, 8, device="cpu", shuffle=shuffle, augment=augment, seed=3)
        for _ in loader.epoch(0):
            pass
    assert torch.equal(torch.get_rng_state(), state)


def test_loader_start_batch_resumes_exactly():
    split = _random_split(n=50)
    loader = Loader(split, 16, device="cpu", shuffle=True, augment=True, seed=9)
    full = list(loader.epoch(2))
    resumed = list(loader.epoch(2, start_batch=2))
    assert len(resumed) == 2
    assert all(_batches_equal(a, b) for a, b in zip(full[2:], resumed))


def test_crop_and_flip_match_manual_reconstruction():
    pad = 4
    split = _random_split(n=64, c=3, size=12, seed=5)
    loader = Loader(split, 64, device="cpu", shuffle=True, augment=True, seed=11, pad=pad)
    batch = next(iter(loader.epoch(0)))
    # The check is only meaningful if both branches and a range of offsets occur.
    assert batch.flip.any() and (~batch.flip).any()
    assert len(set(batch.dx.tolist())) > 3 and len(set(batch.dy.tolist())) > 3
    h = w = 12
    for i in range(len(batch.idx)):
        img = split.images[int(batch.idx[i])]
        padded = torch.zeros(3, h + 2 * pad, w + 2 * pad, dtype=torch.uint8)
        padded[:, pad:pad + h, pad:pad + w] = img
        dy, dx = int(batch.dy[i]), int(batch.dx[i])
        crop = padded[:, dy:dy + h, dx:dx + w]
        if bool(batch.flip[i]):
            crop = crop.flip(-1)
        assert torch.equal(batch.x[i], crop.float() / 255), f"sample {i} differs"


def test_crop_is_like_torchvision_zero_padding():
    """With dx = dy = 0 and no flip the output is the top-left window of the zero-padded image."""
    img = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    z = torch.zeros(1, dtype=torch.int64)
    out = augment_crop_flip(img, z, z, torch.zeros(1, dtype=torch.bool), 2)
    expected = F.pad(img, (2, 2, 2, 2))[:, :, :4, :4]
    assert torch.equal(out, expected)
    assert int(out[0, 0, 0, 0]) == 0 and int(out[0, 0, 2, 2]) == 1


# ----------------------------------------------------------------------------------------------------------------
# Image folders and the decode cache
# ----------------------------------------------------------------------------------------------------------------


def test_image_folder_loads_with_labels_and_classes(tmp_path):
    _make_folder(tmp_path / "data" / "pets")
    cache = tmp_path / "cache"
    # A relative folder: path is taken relative to data_root.
    train, test, info = load_dataset("folder:pets", data_root=tmp_path / "data", cache_dir=cache)
    assert info.classes == ("cat", "dog") and info.num_classes == 2
    assert info.channels == 3 and info.image_size == 8 and info.name == "folder:pets"
    assert train.images.shape == (5, 3, 8, 8) and test.images.shape == (2, 3, 8, 8)
    # the splits come in a fixed shuffled order (so "the first n" is a sample of every class)
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1] and sorted(test.labels.tolist()) == [0, 1]
    again, _, _ = load_dataset("folder:pets", data_root=tmp_path / "data", cache_dir=cache)
    assert torch.equal(again.labels, train.labels) and torch.equal(again.images, train.images)
    # Label matches content: cat = red, dog = blue.
    red = train.images[:, 0].float().mean(dim=(1, 2))
    blue = train.images[:, 2].float().mean(dim=(1, 2))
    assert ((red > blue) == (train.labels == 0)).all()
    assert len(list(cache.glob("*.pt"))) == 2  # one per split


def test_image_folder_cache_is_used_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    root = _make_folder(tmp_path / "pets", ext="jpg")
    cache = tmp_path / "cache"
    train, test, _ = load_dataset(f"folder:{root}", cache_dir=cache)

    # Second load must not decode anything: make decoding impossible.
    def no_decoding(*args, **kwargs):
        raise AssertionError("PIL.Image.open called although a cache exists")

    monkeypatch.setattr(Image, "open", no_decoding)
    train2, test2, _ = load_dataset(f"folder:{root}", cache_dir=cache)
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)

    # Corrupt the train cache: the load must ignore it (decoding again) and write a good file back.
    monkeypatch.undo()
    train_cache = next(p for p in cache.glob("*.pt") if "-train-" in p.name)
    train_cache.write_bytes(b"this is not a torch file")
    with pytest.warns(RuntimeWarning, match="cache"):
        train3, _, _ = load_dataset(f"folder:{root}", cache_dir=cache)
    assert torch.equal(train.images, train3.images)
    rebuilt = torch.load(train_cache, weights_only=True)
    # the cache holds the decoded files in folder order; the loader then applies its fixed shuffle
    assert torch.equal(Split(rebuilt["images"], rebuilt["labels"]).shuffled(0).images, train.images)
    assert rebuilt["classes"] == ["cat", "dog"]


def test_image_folder_cache_invalidated_when_files_change(tmp_path):
    root = _make_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    train, _, _ = load_dataset(f"folder:{root}", cache_dir=cache)
    _save_image(root / "train" / "dog" / "999.png", _solid((0, 0, 255)))
    train2, _, _ = load_dataset(f"folder:{root}", cache_dir=cache)
    assert len(train2) == len(train) + 1


def test_image_folder_size_mismatch_names_file(tmp_path):
    root = _make_folder(tmp_path / "pets")
    _save_image(root / "train" / "dog" / "bad.png", _solid((0, 0, 255), size=(9, 8)))
    with pytest.raises(DataError, match="bad.png"):
        load_dataset(f"folder:{root}", cache_dir=tmp_path / "cache")


def test_image_folder_layout_errors(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}", cache_dir=cache)

    no_test = tmp_path / "no_test"
    _save_image(no_test / "train" / "a" / "0.png", _solid((1, 2, 3)))
    with pytest.raises(DataError, match=r"no test/ folder"):
        load_dataset(f"folder:{no_test}", cache_dir=cache)

    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images") as err:
        load_dataset(f"folder:{empty}", cache_dir=cache)
    assert "\n" not in str(err.value)


def test_grayscale_images_become_rgb(tmp_path):
    root = tmp_path / "gray"
    for split in ("train", "test"):
        path = root / split / "a" / "0.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 77, dtype=np.uint8), mode="L").save(path)
    train, _, info = load_dataset(f"folder:{root}", cache_dir=tmp_path / "cache")
    assert info.channels == 3 and train.images.shape == (1, 3, 8, 8) and int(train.images.min()) == 77


# ----------------------------------------------------------------------------------------------------------------
# cifar10-jpeg
# ----------------------------------------------------------------------------------------------------------------


def test_cifar10_jpeg_archive_in_data_root_uses_cifar_class_order(tmp_path):
    # A miniature archive with the real class names. (CIFAR-10's order happens to be alphabetical, so this checks
    # the class -> label mapping via pixel content rather than a difference from sorted order.)
    src = tmp_path / "src" / "cifar10-jpeg"
    for label, cls in enumerate(CIFAR10_CLASSES):
        for split in ("train", "test"):
            _save_image(src / split / cls / "0000.png", _solid((label * 20, 0, 0), (32, 32)))
    data_root = tmp_path / "data"
    data_root.mkdir()
    with tarfile.open(data_root / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar10-jpeg")
    cache = tmp_path / "cache"
    train, test, info = load_dataset("cifar10-jpeg", data_root=data_root, cache_dir=cache)
    assert info.classes == CIFAR10_CLASSES
    assert train.images.shape == (10, 3, 32, 32) and len(test) == 10
    # Red channel encodes the CIFAR-10 label index.
    assert torch.equal(train.images[:, 0, 0, 0].long() // 20, train.labels)
    # Extracted into the cache, not next to the archive.
    assert not (data_root / "cifar10-jpeg").exists()
    assert any(p.is_dir() and p.name.startswith("extract-") for p in cache.iterdir())


def test_cifar10_jpeg_other_class_names_are_sorted(tmp_path):
    root = tmp_path / "cifar10-jpeg"
    for cls in ("zebra", "apple"):
        for split in ("train", "test"):
            _save_image(root / split / cls / "0.png", _solid((5, 5, 5), (32, 32)))
    _, _, info = load_dataset("cifar10-jpeg", data_root=tmp_path, cache_dir=tmp_path / "cache")
    assert info.classes == ("apple", "zebra")


def test_cifar10_jpeg_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "_REPO_ROOT", tmp_path / "nowhere" / "repo")
    with pytest.raises(DataError, match="cifar10-jpeg"):
        load_dataset("cifar10-jpeg", data_root=tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR10_JPEG.is_file(), reason=f"{SHARED_CIFAR10_JPEG} not present")
def test_cifar10_jpeg_shared_archive(tmp_path):
    # data_root has neither the folder nor the archive, so the shared copy next to the repository is used.
    train, test, info = load_dataset("cifar10-jpeg", data_root=tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert info.num_classes == 10 and info.classes == CIFAR10_CLASSES
    assert torch.bincount(train.labels, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert not (REPO_ROOT / "cifar10-jpeg").exists() and not (REPO_ROOT / "data" / "cifar10-jpeg").exists()


# ----------------------------------------------------------------------------------------------------------------
# tiny-imagenet
# ----------------------------------------------------------------------------------------------------------------


def _make_tiny_imagenet(root: Path) -> Path:
    base = root / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # deliberately unsorted in wnids.txt: classes must come out sorted
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    value = {"n01": 40, "n02": 200}
    for wnid in wnids:
        for i in range(2):
            _save_image(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", _solid((value[wnid],) * 3, (64, 64)))
    lines = []
    for i, wnid in enumerate(["n02", "n01", "n01"]):
        name = f"val_{i}.JPEG"
        _save_image(base / "val" / "images" / name, _solid((value[wnid],) * 3, (64, 64)))
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tiny_imagenet_miniature_loads(tmp_path):
    _make_tiny_imagenet(tmp_path)
    train, test, info = load_dataset("tiny-imagenet", data_root=tmp_path, cache_dir=tmp_path / "cache")
    assert info.classes == ("n01", "n02") and info.num_classes == 2 and info.image_size == 64
    assert train.images.shape == (4, 3, 64, 64) and test.images.shape == (3, 3, 64, 64)
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert test.labels.tolist() == [1, 0, 0]  # val_0 is n02, val_1/val_2 are n01
    # Content agrees with labels: n01 images are dark, n02 bright.
    for split in (train, test):
        bright = split.images.float().mean(dim=(1, 2, 3)) > 120
        assert torch.equal(bright, split.labels == 1)


def test_tiny_imagenet_missing_annotations_or_folder(tmp_path):
    with pytest.raises(DataError, match="tiny-imagenet-200"):
        load_dataset("tiny-imagenet", data_root=tmp_path, cache_dir=tmp_path / "cache")
    base = _make_tiny_imagenet(tmp_path)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val_annotations.txt"):
        load_dataset("tiny-imagenet", data_root=tmp_path, cache_dir=tmp_path / "cache")


def test_tiny_imagenet_missing_train_class_folder(tmp_path):
    base = _make_tiny_imagenet(tmp_path)
    (base / "wnids.txt").write_text("n01\nn02\nn03\n")
    with pytest.raises(DataError, match="n03"):
        load_dataset("tiny-imagenet", data_root=tmp_path, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 in torchvision's pickle format
# ----------------------------------------------------------------------------------------------------------------


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(labels: list[int]) -> np.ndarray:
    """Rows in CIFAR's layout (3072 bytes: R plane, G plane, B plane); pixel value y*2+c encodes label y and channel c."""
    rows = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    for i, y in enumerate(labels):
        for c in range(3):
            rows[i, c] = y * 2 + c  # <= 200 for CIFAR-100's labels 0..99
    return rows.reshape(len(labels), 3072)


def _make_fake_cifar10(root: Path) -> None:
    base = root / "cifar-10-batches-py"
    for b in range(1, 6):
        labels = [(b + k) % 10 for k in range(2)]
        _pickle(base / f"data_batch_{b}", {"data": _cifar_rows(labels), "labels": labels, "batch_label": f"b{b}"})
    _pickle(base / "test_batch", {"data": _cifar_rows([3, 9, 0]), "labels": [3, 9, 0]})
    _pickle(base / "batches.meta", {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 2})


def _make_fake_cifar100(root: Path) -> None:
    base = root / "cifar-100-python"
    names = [f"class{i:02d}" for i in range(100)]
    _pickle(base / "train", {"data": _cifar_rows([0, 99, 42]), "fine_labels": [0, 99, 42], "coarse_labels": [0, 1, 2]})
    _pickle(base / "test", {"data": _cifar_rows([7]), "fine_labels": [7], "coarse_labels": [3]})
    _pickle(base / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]})


@pytest.fixture
def offline_torchvision(monkeypatch):
    """Accept our fake files (torchvision checks real md5s) but still fail for missing ones; never download."""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())

    def no_download(self):
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(tvd.CIFAR10, "download", no_download)  # CIFAR100 inherits it


def test_cifar10_fake_files_load(tmp_path, offline_torchvision):
    _make_fake_cifar10(tmp_path)
    train, test, info = load_dataset("cifar10", data_root=tmp_path)
    assert info.classes == CIFAR10_CLASSES and info.num_classes == 10 and info.image_size == 32
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]  # batches 1..5 in order
    assert test.labels.tolist() == [3, 9, 0]
    # NCHW conversion is right: channel c of an image with label y is y*2+c everywhere.
    for split in (train, test):
        for c in range(3):
            assert torch.equal(split.images[:, c, 5, 7].long(), split.labels * 2 + c)
        assert split.images.is_contiguous()


def test_cifar100_fake_files_load(tmp_path, offline_torchvision):
    _make_fake_cifar100(tmp_path)
    train, test, info = load_dataset("cifar100", data_root=tmp_path)
    assert info.num_classes == 100 and info.classes[42] == "class42"
    assert train.labels.tolist() == [0, 99, 42] and test.labels.tolist() == [7]
    assert torch.equal(train.images[:, 1, 0, 0].long(), train.labels * 2 + 1)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_names_folder(tmp_path, offline_torchvision, name, folder):
    with pytest.raises(DataError) as err:
        load_dataset(name, data_root=tmp_path / "nothing")
    msg = str(err.value)
    assert folder in msg and str(tmp_path / "nothing") in msg and "\n" not in msg


# ----------------------------------------------------------------------------------------------------------------
# names
# ----------------------------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(DataError) as err:
        load_dataset("imagenet-21k")
    msg = str(err.value)
    assert "imagenet-21k" in msg
    for known in DATASETS:
        assert known in msg
    assert set(DATASETS) >= {"digits", "cifar10", "cifar100", "tiny-imagenet", "cifar10-jpeg"}


def test_data_root_and_cache_dir_from_environment(tmp_path, monkeypatch):
    _make_folder(tmp_path / "env_root" / "pets")
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "env_root"))
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "env_cache"))
    train, _, _ = load_dataset("folder:pets")
    assert len(train) == 5
    assert len(list((tmp_path / "env_cache").glob("*.pt"))) == 2


def test_folder_splits_interleave_classes_and_sample_is_fixed(tmp_path):
    from conftest import write_tiny_folder

    root = write_tiny_folder(tmp_path / "t", n_train=60, n_test=30)
    train, test, _ = load_dataset(f"folder:{root}", cache_dir=tmp_path / "c")
    # the first 10 test images are not all of the first class
    assert len(set(test.labels[:10].tolist())) > 1
    a, b = train.sample(20), train.sample(20)
    assert len(a) == 20 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert train.sample(1000) is train

"""``load_dataset``: a data set by name (``digits``, ``cifar10``, ``cifar100``, ``tiny-imagenet``, ``cifar10-jpeg``,
``folder:<path>``), from the source module that reads it, checked for the invariants every consumer relies on;
and where data and the decode cache live by default (``BENCH_DATA_ROOT``, ``BENCH_CACHE_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.data.cifar import load_cifar, load_cifar10_jpeg
from bench.data.digits import load_digits
from bench.data.images import load_image_folder_dataset
from bench.data.split import DataError, DatasetInfo, Split
from bench.data.tiny_imagenet import load_tiny_imagenet

__all__ = ["DATASETS", "L2_EPS", "load_dataset", "default_data_root", "default_cache_dir"]

# Names accepted by load_dataset besides the parametrised "folder:<path>".
DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "tiny-imagenet", "cifar10-jpeg")

# The default L2 radius of each data set (pixels in [0, 1], the norm over C x H x W). CIFAR-10: 0.5, RobustBench's
# L2 threat model. Elsewhere a choice, stated here: the radius with the same root-mean-square change per pixel value
# as 0.5 on a 3 x 32 x 32 image, 0.5 * sqrt(C * H * W / 3072): CIFAR-100 0.5, Tiny-ImageNet (3 x 64 x 64) 1.0,
# digits (1 x 32 x 32) 0.29. An image folder has no default: give the radius.
L2_EPS: dict[str, float] = {"cifar10": 0.5, "cifar10-jpeg": 0.5, "cifar100": 0.5, "tiny-imagenet": 1.0,
                            "digits": 0.29}


def default_data_root() -> Path:
    return Path(os.environ.get("BENCH_DATA_ROOT") or "./data").expanduser()


def default_cache_dir() -> Path:
    env = os.environ.get("BENCH_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "afd-bench"


def load_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Split, Split, DatasetInfo]:
    """Return ``(train, test, info)`` on the CPU.

    Names: ``digits`` (embedded, offline), ``cifar10``, ``cifar100`` (torchvision files under data_root),
    ``tiny-imagenet`` (``<data_root>/tiny-imagenet-200``), ``cifar10-jpeg`` (an image-folder copy of CIFAR-10),
    ``folder:<path>`` (any ``<path>/{train,test}/<class>/*`` tree; relative paths are under data_root).
    """
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name == "digits":
        result = load_digits()
    elif name in ("cifar10", "cifar100"):
        result = load_cifar(name, root)
    elif name == "tiny-imagenet":
        result = load_tiny_imagenet(root, cache)
    elif name == "cifar10-jpeg":
        result = load_cifar10_jpeg(root, cache)
    elif name.startswith("folder:"):
        path = Path(name[len("folder:"):]).expanduser()
        if not str(path) or name == "folder:":
            raise DataError("empty path in 'folder:'; use folder:<path> with <path>/train/<class>/* and <path>/test/<class>/*")
        if not path.is_absolute():
            path = root / path
        result = load_image_folder_dataset(name, path, cache)
    else:
        known = ", ".join(DATASETS)
        raise DataError(f"unknown data set {name!r}; known: {known}, or folder:<path> for an image folder")
    _validate(*result)
    return result


def _validate(train: Split, test: Split, info: DatasetInfo) -> None:
    """Check the invariants every consumer relies on; a violation is a data problem, reported as DataError."""
    if info.channels not in (1, 3):
        raise DataError(f"{info.name}: images must have 1 or 3 channels, got {info.channels}")
    if len(info.classes) != info.num_classes:
        raise DataError(f"{info.name}: {len(info.classes)} class names for {info.num_classes} classes")
    for split_name, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise DataError(f"{info.name}: the {split_name} split is empty")
        if split.images.dtype != torch.uint8:
            raise DataError(f"{info.name}: {split_name} images are {split.images.dtype}, expected uint8")
        _, c, h, w = split.images.shape
        if c != info.channels or h != info.image_size or w != info.image_size:
            raise DataError(
                f"{info.name}: {split_name} images are {c}x{h}x{w}, expected "
                f"{info.channels}x{info.image_size}x{info.image_size}"
            )
        lo, hi = int(split.labels.min()), int(split.labels.max())
        if lo < 0 or hi >= info.num_classes:
            raise DataError(f"{info.name}: {split_name} labels span {lo}..{hi}, outside 0..{info.num_classes - 1}")

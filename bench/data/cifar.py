"""CIFAR-10 and CIFAR-100 from torchvision's python-pickle release, and ``cifar10-jpeg``: an image-folder copy of
CIFAR-10, as a folder or a ``.tar.gz`` extracted into the cache (the data root's, else the one shared next to the
repository).
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import torch

from bench.data.images import extract_archive, load_image_folder_dataset
from bench.data.split import DataError, DatasetInfo, Split

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# The repository root is the parent of the ``bench/`` package; used only to find the shared archive.
_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's python-pickle release)
# --------------------------------------------------------------------------------------------------------------

_DOWNLOAD_SOCKET_TIMEOUT = 30.0  # seconds per socket operation; avoids hanging forever on a dead network


def load_cifar(name: str, root: Path) -> tuple[Split, Split, DatasetInfo]:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(f"{name} needs torchvision ({exc}); install it with pip install torchvision")
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = cls.base_folder

    def build(download: bool):
        return cls(root=str(root), train=True, download=download), cls(root=str(root), train=False, download=download)

    try:
        train_ds, test_ds = build(download=False)
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError):
        # Missing or corrupt (torchvision checks md5s): try to fetch it, with a bounded socket timeout.
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT)
        try:
            train_ds, test_ds = build(download=True)
        except Exception as exc:
            raise DataError(
                f"{pretty} not found (or corrupt) in {root.resolve()} ({folder}) and it could not be downloaded "
                f"({type(exc).__name__}: {exc}): download it on a machine with internet or pass --data-root "
                f"to a folder that has {folder}/"
            ) from exc
        finally:
            socket.setdefaulttimeout(old_timeout)

    def to_split(ds) -> Split:
        data = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))  # NHWC -> NCHW
        return Split(torch.from_numpy(data), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64))

    classes = tuple(str(c) for c in train_ds.classes)
    info = DatasetInfo(name, len(classes), 3, 32, classes)
    return to_split(train_ds), to_split(test_ds), info


# --------------------------------------------------------------------------------------------------------------
# cifar10-jpeg (folder, or a .tar.gz extracted into the cache)
# --------------------------------------------------------------------------------------------------------------


def _find_split_root(folder: Path) -> Path | None:
    """The folder holding train/ and test/: ``folder`` itself or its only subfolder (archives add a top dir)."""
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
        return subdirs[0]
    return None


def load_cifar10_jpeg(root: Path, cache_dir: Path) -> tuple[Split, Split, DatasetInfo]:
    folder = root / "cifar10-jpeg"
    archive = root / "cifar10-jpeg.tar.gz"
    shared = _REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if folder.is_dir():
        source = folder
    else:
        for candidate in (archive, shared):
            if candidate.is_file():
                extracted = extract_archive(candidate, cache_dir)
                source = _find_split_root(extracted)
                if source is None:
                    raise DataError(
                        f"archive {candidate} does not contain cifar10-jpeg/train/<class>/*.jpg and "
                        f"cifar10-jpeg/test/<class>/*.jpg; replace it with a correct archive"
                    )
                break
        else:
            raise DataError(
                f"CIFAR-10 (JPEG) not found: neither {folder}/ nor {archive} nor {shared} exists; "
                f"put cifar10-jpeg/{{train,test}}/<class>/*.jpg or cifar10-jpeg.tar.gz under --data-root"
            )
    return load_image_folder_dataset("cifar10-jpeg", source, cache_dir, class_order=CIFAR10_CLASSES)

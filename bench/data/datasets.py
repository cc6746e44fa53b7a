"""Data sets held as uint8 tensors, plus a deterministic, device-side batch loader.

Why this design:

* Every data set is small enough to keep whole in memory (and on the GPU) as uint8: CIFAR-10 is 150 MB,
  Tiny-ImageNet 1.2 GB. Holding it on the device removes the DataLoader/worker machinery and its
  nondeterminism, and augmentation becomes a couple of batched tensor ops.
* Each epoch's permutation and augmentation parameters come from a private CPU ``torch.Generator`` seeded
  from ``(seed, epoch)``. Epoch ``e`` therefore yields exactly the same batches whenever (and on whatever
  device) it is run, which is what makes resuming a killed run exact, and the global RNG is never touched,
  so model initialisation or attack randomness elsewhere is unaffected by how much data was drawn.
* Image folders (JPEG/PNG) are slow to decode, so the decoded arrays are cached as one ``.pt`` per split,
  keyed by the source's path, file count, sizes and mtimes (a changed folder gets a new cache entry).

Public API: ``Split``, ``DatasetInfo``, ``DataError``, ``DATASETS``, ``load_dataset``, ``Batch``, ``Loader``.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Split",
    "DatasetInfo",
    "DataError",
    "DATASETS",
    "load_dataset",
    "Batch",
    "Loader",
    "default_data_root",
    "default_cache_dir",
]

# Names accepted by load_dataset besides the parametrised "folder:<path>".
DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "tiny-imagenet", "cifar10-jpeg")

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# Extensions treated as images when scanning folders (lower-cased comparison).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})

# Bump when the decoded format changes, so old cache files are not reused.
_CACHE_VERSION = 1

# The repository root is the parent of the ``bench/`` package; used only to find the shared archive.
_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------------------
# Core types
# --------------------------------------------------------------------------------------------------------------


class DataError(Exception):
    """Bad or missing data. The message is ONE line naming what is wrong and how to fix it.

    The CLI prints it and exits with status 2, so newlines are collapsed here rather than trusting every caller.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Split:
    """One split of a data set: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        # Fail early with a clear message instead of deep inside training with a dtype error.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(f"labels must be an int64 (N,) tensor, got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        # The loader's gather relies on a plain layout; contiguous() is free when it already is.
        # object.__setattr__ because the dataclass is frozen.
        object.__setattr__(self, "images", self.images.contiguous())
        object.__setattr__(self, "labels", self.labels.contiguous())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int) -> "Split":
        """The first ``n`` examples (deterministic); ``n`` >= len gives the whole split."""
        if n < 0:
            raise ValueError(f"subset size must be >= 0, got {n}")
        if n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n])

    def sample(self, n: int, seed: int = 0) -> "Split":
        """A fixed random subset of ``n`` examples (kept in their original relative order); the same for every
        run that asks for it, whatever the run's own seed. ``n`` >= len gives the whole split."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(self), generator=g)[:n].sort().values
        return Split(self.images[keep], self.labels[keep])

    def shuffled(self, seed: int = 0) -> "Split":
        """The split in a fixed random order, so that its first n examples are a random sample."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=g)
        return Split(self.images[order], self.labels[order])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Batch:
    """One batch on the loader's device.

    With pad ``p``, sample ``i`` is ``padded_image[:, dy[i]:dy[i]+H, dx[i]:dx[i]+W]``, then flipped along the
    width if ``flip[i]``. ``dx``/``dy``/``flip`` are None when the loader does not augment.
    """

    x: torch.Tensor  # float32 in [0, 1], (B, C, H, W)
    y: torch.Tensor  # int64 labels (B,)
    idx: torch.Tensor  # int64 indices into the split (B,)
    dx: torch.Tensor | None  # int64 crop offset along width, 0..2*pad
    dy: torch.Tensor | None  # int64 crop offset along height, 0..2*pad
    flip: torch.Tensor | None  # bool, horizontally flipped
    # Data-parallel runs (bench/core/distributed.py): this shard's first position within the global batch, and that
    # batch's size; one process: 0 and B.
    offset: int = 0
    global_size: int | None = None


# --------------------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    # A simple injective-enough mix of (seed, epoch); reduced mod 2**63 so manual_seed always accepts it.
    return (int(seed) * 1_000_003 + int(epoch)) % (1 << 63)


def augment_crop_flip(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Batched random crop (zero padding ``pad``) and horizontal flip, without a Python loop over samples.

    Works on any dtype (the loader calls it on uint8 to move 4x fewer bytes). All arguments must be on the same
    device. The crop and the flip are a single gather: for sample b, output pixel (r, c) reads padded pixel
    (dy[b] + r, dx[b] + c), or (dy[b] + r, dx[b] + W - 1 - c) when flipped.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images  # zero fill, like RandomCrop(padding=p)
    dev = images.device
    rows = dy.view(b, 1) + torch.arange(h, device=dev).view(1, h)  # (B, H)
    cols = torch.arange(w, device=dev).view(1, w).expand(b, w)
    cols = torch.where(flip.view(b, 1), (w - 1) - cols, cols) + dx.view(b, 1)  # (B, W)
    # Advanced indexing with four broadcast index tensors -> (B, C, H, W) in one kernel.
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class Loader:
    """Deterministic batches from a ``Split`` held entirely on ``device``.

    ``epoch(e)`` depends only on (split, batch_size, shuffle, augment, seed, pad, drop_last, e): the permutation
    and all augmentation parameters are drawn from a CPU generator seeded with ``seed * 1_000_003 + e`` and then
    moved to the device, so they are identical on every device and the global RNG is not used.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device,
        shuffle: bool,
        augment: bool,
        seed: int,
        pad: int = 4,
        drop_last: bool = False,
        pin_memory: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.pad = int(pad)
        self.drop_last = bool(drop_last)
        if not 0 <= rank < world_size or world_size > self.batch_size:
            raise ValueError(f"rank {rank} of {world_size} processes with batch size {self.batch_size}: need "
                             "0 <= rank < processes <= batch size")
        # Data-parallel: every rank draws the same epoch and keeps its contiguous share of each global batch.
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_examples = len(split)
        is_cuda = self.device.type == "cuda"
        if pin_memory is None:
            pin_memory = is_cuda
        images, labels = split.images, split.labels
        # One host->device copy for the whole split; pinned memory lets it run asynchronously.
        if pin_memory and images.device.type == "cpu" and torch.cuda.is_available():
            images, labels = images.pin_memory(), labels.pin_memory()
        self.images = images.to(self.device, non_blocking=is_cuda)
        self.labels = labels.to(self.device, non_blocking=is_cuda)

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        if self.drop_last:
            return full
        # Sharded over k processes, a last global batch of fewer than k examples would leave a rank without any
        # (a mean over nothing: NaN losses, NaN gradients averaged into every rank's): it is dropped, on every rank.
        return full + (1 if rest >= self.world_size else 0)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Yield the batches of epoch ``epoch``; ``start_batch`` skips the first batches (for mid-epoch resume)
        without computing them, and the remaining batches are identical to a full run's."""
        n, bs = self.num_examples, self.batch_size
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_epoch_seed(self.seed, epoch))
        # Draw everything for the epoch up front, in a fixed order, so the numbers never depend on how many
        # batches the caller consumes or skips.
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.augment:
            # Per position in the epoch's order (not per dataset index); either is deterministic.
            dx_all = torch.randint(0, 2 * self.pad + 1, (n,), generator=gen, dtype=torch.int64)
            dy_all = torch.randint(0, 2 * self.pad + 1, (n,), generator=gen, dtype=torch.int64)
            flip_all = torch.rand(n, generator=gen) < 0.5
        nonblock = self.device.type == "cuda"
        order = order.to(self.device, non_blocking=nonblock)
        if self.augment:
            dx_all = dx_all.to(self.device, non_blocking=nonblock)
            dy_all = dy_all.to(self.device, non_blocking=nonblock)
            flip_all = flip_all.to(self.device, non_blocking=nonblock)

        for b in range(max(0, int(start_batch)), len(self)):
            blo, bhi = b * bs, min((b + 1) * bs, n)
            n_b = bhi - blo  # the global batch; this rank keeps positions [lo, hi) of it
            lo, hi = blo + n_b * self.rank // self.world_size, blo + n_b * (self.rank + 1) // self.world_size
            idx = order[lo:hi]
            imgs = self.images[idx]  # uint8 gather
            if self.augment:
                dx, dy, flip = dx_all[lo:hi], dy_all[lo:hi], flip_all[lo:hi]
                imgs = augment_crop_flip(imgs, dx, dy, flip, self.pad)
            else:
                dx = dy = flip = None
            x = imgs.float().div_(255)
            yield Batch(x=x, y=self.labels[idx], idx=idx, dx=dx, dy=dy, flip=flip, offset=lo - blo, global_size=n_b)


# --------------------------------------------------------------------------------------------------------------
# Loading: entry point
# --------------------------------------------------------------------------------------------------------------


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
        result = _load_digits()
    elif name in ("cifar10", "cifar100"):
        result = _load_cifar(name, root)
    elif name == "tiny-imagenet":
        result = _load_tiny_imagenet(root, cache)
    elif name == "cifar10-jpeg":
        result = _load_cifar10_jpeg(root, cache)
    elif name.startswith("folder:"):
        path = Path(name[len("folder:"):]).expanduser()
        if not str(path) or name == "folder:":
            raise DataError("empty path in 'folder:'; use folder:<path> with <path>/train/<class>/* and <path>/test/<class>/*")
        if not path.is_absolute():
            path = root / path
        result = _load_image_folder_dataset(name, path, cache)
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


# --------------------------------------------------------------------------------------------------------------
# digits (scikit-learn, embedded)
# --------------------------------------------------------------------------------------------------------------

DIGITS_TRAIN = 1497  # of 1797; the remaining 300 are the test split


def _load_digits() -> tuple[Split, Split, DatasetInfo]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(f"the 'digits' data set needs scikit-learn ({exc}); install it with pip install scikit-learn")
    bunch = load_digits()
    # Values are 0..16; scale to 0..255 first so that bilinear upsampling works on the final range.
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1) * (255.0 / 16.0)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = x.round().clamp_(0, 255).to(torch.uint8).contiguous()
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    # A fixed permutation (own generator, seed 0) so the split is the same on every machine and mixes classes.
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[perm].contiguous(), labels[perm].contiguous()
    train = Split(images[:DIGITS_TRAIN], labels[:DIGITS_TRAIN])
    test = Split(images[DIGITS_TRAIN:], labels[DIGITS_TRAIN:])
    info = DatasetInfo("digits", 10, 1, 32, tuple(str(i) for i in range(10)))
    return train, test, info


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's python-pickle release)
# --------------------------------------------------------------------------------------------------------------

_DOWNLOAD_SOCKET_TIMEOUT = 30.0  # seconds per socket operation; avoids hanging forever on a dead network


def _load_cifar(name: str, root: Path) -> tuple[Split, Split, DatasetInfo]:
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
# Image folders: scanning, decoding, caching
# --------------------------------------------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so the order (and hence indices) is reproducible."""
    return sorted((p for p in folder.iterdir() if p.is_file() and _is_image(p)), key=lambda p: p.name)


def _source_key(kind: str, files: list[Path], labels: list[int], classes: tuple[str, ...], extra: list[Path] = ()) -> str:
    """Hash identifying the decoded content: absolute paths, count, sizes, mtimes, labels and classes.

    Any added, removed, replaced or touched file changes the key, so a stale cache is never used.
    """
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}|{kind}|{len(files)}|{'/'.join(classes)}\n".encode())
    total_size = 0
    for path, label in zip(list(files) + list(extra), list(labels) + [-1] * len(extra)):
        st = path.stat()
        total_size += st.st_size
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    h.update(f"total={total_size}".encode())
    return h.hexdigest()[:24]


def _decode_images(files: list[Path], mode: str) -> np.ndarray:
    """Decode all files to one (N, H, W, C) uint8 array; all must share the first file's size.

    A thread pool helps because PIL releases the GIL while decoding. A size mismatch names the first (in list
    order) offending file so the error is deterministic.
    """
    from PIL import Image

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert(mode), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot decode image {path}: {exc}; remove or replace the file") from exc

    first = read(files[0])
    out = np.empty((len(files),) + (first.shape if first.ndim == 3 else first.shape + (1,)), dtype=np.uint8)
    expected = first.shape

    def fill(i: int) -> int | None:
        arr = first if i == 0 else read(files[i])
        if arr.shape != expected:
            return i
        out[i] = arr.reshape(out.shape[1:])
        return None

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        bad = [i for i in pool.map(fill, range(len(files)), chunksize=256) if i is not None]
    if bad:
        w, h = expected[1], expected[0]
        raise DataError(
            f"images differ in size: {files[bad[0]]} is not {w}x{h} like {files[0]}; "
            f"resize all images of the data set to one size"
        )
    return out


def _cache_load(path: Path, classes: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Load a cached split, or None if absent or unusable (corrupt, truncated, wrong content)."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = obj["images"], obj["labels"]
        ok = (
            isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8 and images.dim() == 4
            and labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
            and tuple(obj["classes"]) == tuple(classes)
        )
    except Exception:  # any failure to read means: rebuild it
        ok = False
    if not ok:
        warnings.warn(f"ignoring unusable cache file {path}; rebuilding it", RuntimeWarning, stacklevel=3)
        return None
    return images, labels


def _cache_save(path: Path, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> None:
    """Write atomically (temp file in the same folder + os.replace) so readers never see a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"images": images, "labels": labels, "classes": list(classes)}, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; make the cache as readable as a normal file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        # The cache only saves time; a read-only or full disk must not stop a run.
        warnings.warn(f"could not write cache file {path}: {exc}", RuntimeWarning, stacklevel=3)


def _decode_cached(
    kind: str,
    files: list[Path],
    labels: list[int],
    classes: tuple[str, ...],
    mode: str,
    cache_dir: Path,
    split_name: str,
    extra_key_files: list[Path] = (),
) -> Split:
    """Decode ``files`` (with ``labels``) through the .pt cache."""
    key = _source_key(kind, files, labels, classes, list(extra_key_files))
    safe_kind = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in kind)[:40]
    cache_path = cache_dir / f"{safe_kind}-{split_name}-{key}.pt"
    cached = _cache_load(cache_path, classes)
    if cached is not None:
        return Split(*cached)
    arr = _decode_images(files, mode)  # (N, H, W, C)
    images = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
    label_t = torch.as_tensor(labels, dtype=torch.int64)
    _cache_save(cache_path, images, label_t, classes)
    return Split(images, label_t)


def _folder_classes(train_dir: Path) -> list[str]:
    return sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_class_folders(split_dir: Path, classes: tuple[str, ...], layout: str) -> tuple[list[Path], list[int]]:
    """Files and labels of ``split_dir/<class>/*``; class folders must be a subset of ``classes``."""
    present = _folder_classes(split_dir)
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise DataError(f"{split_dir / unknown[0]} is a class folder that train/ does not have; expected layout {layout}")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls_name in enumerate(classes):
        cls_dir = split_dir / cls_name
        if not cls_dir.is_dir():
            continue  # a test split may legitimately lack a class
        found = _list_images(cls_dir)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"no images found in {split_dir}; expected layout {layout}")
    return files, labels


def _load_image_folder_dataset(
    name: str,
    path: Path,
    cache_dir: Path,
    class_order: tuple[str, ...] | None = None,
) -> tuple[Split, Split, DatasetInfo]:
    """ImageFolder layout ``path/{train,test}/<class>/*`` decoded as RGB.

    Classes are sorted folder names, unless ``class_order`` is given and matches the folder names exactly.
    """
    layout = f"{path}/train/<class>/*.jpg|png and {path}/test/<class>/*"
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist; expected layout {layout}")
    for split_name in ("train", "test"):
        if not (path / split_name).is_dir():
            raise DataError(f"{path} has no {split_name}/ folder; expected layout {layout}")
    folder_names = _folder_classes(path / "train")
    if not folder_names:
        raise DataError(f"{path / 'train'} has no class folders; expected layout {layout}")
    if class_order is not None and sorted(class_order) == folder_names:
        classes = tuple(class_order)
    else:
        classes = tuple(folder_names)
    kind = f"folder-{path.name}"
    splits = []
    for split_name in ("train", "test"):
        files, labels = _scan_class_folders(path / split_name, classes, layout)
        splits.append(_decode_cached(kind, files, labels, classes, "RGB", cache_dir, split_name))
    train, test = splits
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"train images in {path} are {tuple(train.images.shape[2:])} but test images are "
            f"{tuple(test.images.shape[2:])}; all images must share one size"
        )
    h, w = train.images.shape[2:]
    if h != w:
        raise DataError(f"images in {path} are {w}x{h}; only square images are supported, resize them")
    info = DatasetInfo(name, len(classes), 3, int(h), classes)
    # Folders are read class by class; a fixed shuffle makes "the first n test images" (the evaluation
    # convention) a random sample of all classes instead of the first class or two.
    return train.shuffled(0), test.shuffled(0), info


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


def _extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract ``archive`` into the cache (once, keyed by its path/size/mtime) and return the extracted folder.

    Extraction goes to a temporary folder that is renamed into place, so an interrupted extraction is never
    mistaken for a complete one, and two processes racing both end up with a complete copy.
    """
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"extract-{archive.name.split('.')[0]}-{key}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".tmp", dir=cache_dir))
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..', device files
            else:  # pragma: no cover - Python < 3.11.4
                for member in tar.getmembers():
                    dest = (tmp / member.name).resolve()
                    if not str(dest).startswith(str(tmp.resolve())):
                        raise DataError(f"archive {archive} has an unsafe member path {member.name!r}")
                tar.extractall(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; make the extracted copy as readable as a normal folder
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # a real failure, not a lost race with another process
                raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {archive} into {cache_dir}: {exc}; check the archive or --cache-dir") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_cifar10_jpeg(root: Path, cache_dir: Path) -> tuple[Split, Split, DatasetInfo]:
    folder = root / "cifar10-jpeg"
    archive = root / "cifar10-jpeg.tar.gz"
    shared = _REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if folder.is_dir():
        source = folder
    else:
        for candidate in (archive, shared):
            if candidate.is_file():
                extracted = _extract_archive(candidate, cache_dir)
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
    return _load_image_folder_dataset("cifar10-jpeg", source, cache_dir, class_order=CIFAR10_CLASSES)


# --------------------------------------------------------------------------------------------------------------
# Tiny-ImageNet (tiny-imagenet-200 layout)
# --------------------------------------------------------------------------------------------------------------


def _load_tiny_imagenet(root: Path, cache_dir: Path) -> tuple[Split, Split, DatasetInfo]:
    """Standard ``tiny-imagenet-200`` tree; the val set is the test split (as in the AFD paper).

    Classes are the wnids of ``wnids.txt`` in sorted order, which equals torchvision ImageFolder's order on
    ``train/`` and so matches most published code. Images are decoded as RGB (a few originals are grayscale).
    """
    base = root / "tiny-imagenet-200"
    layout = (
        f"{base}/wnids.txt, {base}/train/<wnid>/images/*.JPEG, {base}/val/images/*.JPEG and "
        f"{base}/val/val_annotations.txt (tab-separated: file, wnid, bbox)"
    )
    if not base.is_dir():
        raise DataError(f"Tiny-ImageNet not found: {base} does not exist; download and unzip tiny-imagenet-200.zip there (expected {layout})")
    wnids_file, val_ann = base / "wnids.txt", base / "val" / "val_annotations.txt"
    for required in (wnids_file, val_ann):
        if not required.is_file():
            raise DataError(f"Tiny-ImageNet layout broken: {required} is missing; expected {layout}")
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    if not wnids:
        raise DataError(f"{wnids_file} lists no classes; expected one wnid per line")
    classes = tuple(wnids)
    index = {w: i for i, w in enumerate(classes)}

    train_files: list[Path] = []
    train_labels: list[int] = []
    for wnid in classes:
        img_dir = base / "train" / wnid / "images"
        if not img_dir.is_dir():
            raise DataError(f"Tiny-ImageNet layout broken: {img_dir} is missing; expected {layout}")
        found = _list_images(img_dir)
        train_files += found
        train_labels += [index[wnid]] * len(found)
    if not train_files:
        raise DataError(f"no training images under {base / 'train'}; expected {layout}")

    val_dir = base / "val" / "images"
    val_files: list[Path] = []
    val_labels: list[int] = []
    for lineno, line in enumerate(val_ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1].strip() not in index:
            raise DataError(f"{val_ann} line {lineno} is not 'file<TAB>wnid<TAB>...' with a wnid from wnids.txt: {line.strip()[:80]!r}")
        path = val_dir / parts[0].strip()
        if not path.is_file():
            raise DataError(f"{path} is listed in {val_ann} but missing; expected {layout}")
        val_files.append(path)
        val_labels.append(index[parts[1].strip()])
    if not val_files:
        raise DataError(f"{val_ann} lists no images; expected {layout}")
    # Sort by file name so the test order does not depend on the annotation file's line order.
    order = sorted(range(len(val_files)), key=lambda i: val_files[i].name)
    val_files = [val_files[i] for i in order]
    val_labels = [val_labels[i] for i in order]

    train = _decode_cached("tiny-imagenet", train_files, train_labels, classes, "RGB", cache_dir, "train", [wnids_file])
    test = _decode_cached("tiny-imagenet", val_files, val_labels, classes, "RGB", cache_dir, "test", [val_ann])
    for split_name, split in (("train", train), ("val", test)):
        if tuple(split.images.shape[1:]) != (3, 64, 64):
            h, w = split.images.shape[2:]
            raise DataError(f"Tiny-ImageNet {split_name} images in {base} are {w}x{h}, expected 64x64; re-download the data set")
    info = DatasetInfo("tiny-imagenet", len(classes), 3, 64, classes)
    return train, test, info

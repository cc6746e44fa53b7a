"""Image folders: scanning, decoding (PIL, a thread pool), the decode cache, archive extraction, and the
``folder:<path>`` data set (``<path>/{train,test}/<class>/*``).

Image folders (JPEG/PNG) are slow to decode, so the decoded arrays are cached as one ``.pt`` per split, keyed by
the source's path, file count, sizes and mtimes (a changed folder gets a new cache entry).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.data.split import DataError, DatasetInfo, Split

# Extensions treated as images when scanning folders (lower-cased comparison).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})

# Bump when the decoded format changes, so old cache files are not reused.
_CACHE_VERSION = 1


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
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


def decode_cached(
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
        found = list_images(cls_dir)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"no images found in {split_dir}; expected layout {layout}")
    return files, labels


def load_image_folder_dataset(
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
        splits.append(decode_cached(kind, files, labels, classes, "RGB", cache_dir, split_name))
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


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack the tar ``archive`` into ``dest``, refusing any member that would land outside it (absolute paths,
    '..', links pointing out, device files): tarfile.FilterError (a TarError) or DataError."""
    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")  # refuses absolute paths, '..', device files
        else:  # pragma: no cover - Python < 3.11.4
            for member in tar.getmembers():
                target = (dest / member.name).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise DataError(f"archive {archive} has an unsafe member path {member.name!r}")
            tar.extractall(dest)


def extract_archive(archive: Path, cache_dir: Path) -> Path:
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
        extract_tar(archive, tmp)
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

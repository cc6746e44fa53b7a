"""Common corruptions: the published CIFAR-10-C, CIFAR-100-C and Tiny-ImageNet-C files read in their own layouts
and checked against the clean test set, or the generated CIFAR-sized set (``bench.data.generated_corruptions``).

Published layouts (under the data root):

* ``CIFAR-10-C/`` and ``CIFAR-100-C/`` (Zenodo 2535967, 3555552): ``<corruption>.npy``, uint8 (5 N, 32, 32, 3),
  severities 1..5 of the N test images in test-set order, and ``labels.npy`` (5 N,).
* ``Tiny-ImageNet-C/`` (Zenodo 2536630): ``<corruption>/<severity>/<wnid>/*.JPEG``, 64 x 64; decoded once per
  corruption (all five severities together) through the decode cache.

A published folder that does not exist is downloaded first, checked against its published MD5
(``bench.data.corruption_download``); one that exists is read as it is.

Checks before any evaluation: all 15 corruptions present (else one line naming the missing ones), every file
readable and of the published shape (a truncated file is named), the labels equal to the clean test set's (CIFAR: the
test labels five times over, in order; Tiny-ImageNet-C: the same number of images of every class as the val set).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.data.corruption_download import download_published
from bench.data.images import decode_cached, list_images
from bench.data.split import DataError, DatasetInfo, Split

# RobustBench's CORRUPTIONS (robustbench/data.py), in its order: the 15 of Hendrycks & Dietterich 2019.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow",
    "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# data set -> the published set's folder under the data root
PUBLISHED: dict[str, str] = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C", "tiny-imagenet": "Tiny-ImageNet-C"}
# CIFAR-sized: make_cifar_c.py's parameters apply (cifar10-jpeg: CIFAR-10's test images from their JPEG files)
GENERATABLE: tuple[str, ...] = ("cifar10", "cifar100", "cifar10-jpeg")


def corruption_set_name(dataset: str, source: str) -> str:
    """The data-set name of ``dataset``'s corruption set from ``source``: ``cifar10-c`` (published) or
    ``cifar10-c-generated``; the two are never mistaken for each other in a result."""
    return f"{dataset}-c-generated" if source == "generated" else f"{dataset}-c"


@dataclass(frozen=True)
class CorruptionSet:
    """A corruption set ready to evaluate: ``images(c)`` gives corruption c's uint8 (5, N, C, H, W) tensor (loaded
    when asked, one corruption in memory at a time), ``labels`` the N labels shared by every severity."""

    name: str  # e.g. "cifar10-c", or "cifar10-c-generated": never the one for the other
    label: str  # how tables name it
    corruptions: tuple[str, ...]
    labels: torch.Tensor
    images: Callable[[str], torch.Tensor]


def check_corruption_dataset(dataset: str, source: str) -> None:
    """Whether ``dataset`` has a corruption set of ``source`` ("published" or "generated"); DataError otherwise."""
    known = PUBLISHED if source == "published" else GENERATABLE
    if dataset not in known:
        raise DataError(f"--threat corruptions: no {source} corruption set for data set {dataset!r}; "
                        f"{source} sets exist for {', '.join(known)}")


def load_corruption_set(dataset: str, source: str, test: Split, info: DatasetInfo, root: Path | None,
                        cache_dir: Path | None,
                        log: Callable[[str], None] = print) -> CorruptionSet:
    """The checked corruption set of ``dataset`` from ``source``; DataError in one line on anything wrong."""
    from bench.data.registry import default_cache_dir, default_data_root

    check_corruption_dataset(dataset, source)
    root = Path(root).expanduser() if root is not None else default_data_root()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if source == "generated":
        from bench.data import generated_corruptions as gen  # its generation needs scipy and PIL

        return load_cifar_c(gen.generated_folder(dataset, test, root, log=log), test,
                            dataset_name=corruption_set_name(dataset, source), label=gen.LABELS[dataset],
                            corruptions=gen.GENERATED)
    folder = root / PUBLISHED[dataset]
    if not folder.exists():  # only a missing set is downloaded: an incomplete one is named below, never repaired
        download_published(PUBLISHED[dataset], root, log=log)
    if dataset == "tiny-imagenet":
        return load_tiny_imagenet_c(folder, test, info, cache_dir)
    return load_cifar_c(folder, test, dataset_name=corruption_set_name(dataset, source), label=PUBLISHED[dataset])


def open_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 .npy of ``shape``, memory-mapped (read only where used); DataError naming a truncated or wrong file."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # a truncated file fails to map its declared length
        raise DataError(f"{path} is unreadable or truncated ({str(e).splitlines()[0][:80]}): download it again") from None
    if arr.dtype != np.uint8 or tuple(arr.shape) != tuple(shape):
        raise DataError(f"{path} holds {arr.dtype} {tuple(arr.shape)}, expected uint8 {tuple(shape)}: the published "
                        "file has severities 1..5 of every test image")
    return arr


def missing_corruptions(folder: Path, present: Callable[[str], bool], what: str) -> None:
    """DataError naming every corruption that ``present`` does not find (all 15 are needed for the mean)."""
    missing = [c for c in CORRUPTIONS if not present(c)]
    if missing:
        raise DataError(f"{folder}: {len(missing)} of the {len(CORRUPTIONS)} corruptions missing ({', '.join(missing)}): "
                        f"expected {what}; the mean over the {len(CORRUPTIONS) * len(SEVERITIES)} sets needs all")


def load_cifar_c(folder: Path, test: Split, *, dataset_name: str, label: str,
                 corruptions: tuple[str, ...] = CORRUPTIONS) -> CorruptionSet:
    """CIFAR-10-C / CIFAR-100-C layout in ``folder`` (or the generated set, which is written in the same layout)."""
    if not folder.is_dir():
        raise DataError(f"{label} not found: {folder} does not exist; put the published <corruption>.npy files and "
                        "labels.npy there (--data-root), or use --corruptions generated")
    if corruptions == CORRUPTIONS:
        missing_corruptions(folder, lambda c: (folder / f"{c}.npy").is_file(), "<corruption>.npy for each")
    n = len(test)
    _, c, h, w = test.images.shape
    labels_path = folder / "labels.npy"
    if not labels_path.is_file():
        raise DataError(f"{labels_path} is missing: the published set has the labels of all 5 x {n} images there")
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise DataError(f"{labels_path} is unreadable or truncated: download it again") from None
    want = np.tile(test.labels.numpy(), len(SEVERITIES))
    if labels.shape != want.shape or not np.array_equal(labels.astype(np.int64), want):
        bad = "shape " + str(labels.shape) if labels.shape != want.shape else \
            f"{int((labels.astype(np.int64) != want).sum())} labels"
        raise DataError(f"{labels_path} disagrees with the clean test set ({bad}): it is not this data set's "
                        "corruption set, or the test set is not in its published order")
    arrays = {cor: open_npy(folder / f"{cor}.npy", (len(SEVERITIES) * n, h, w, c)) for cor in corruptions}

    def images(cor: str) -> torch.Tensor:
        # One read of the whole file (all severities), then a view: no re-reading per severity.
        arr = np.array(arrays[cor]).reshape(len(SEVERITIES), n, h, w, c)
        return torch.from_numpy(arr).permute(0, 1, 4, 2, 3)

    return CorruptionSet(dataset_name, label, corruptions, test.labels.clone(), images)


def load_tiny_imagenet_c(folder: Path, test: Split, info: DatasetInfo, cache_dir: Path) -> CorruptionSet:
    """Tiny-ImageNet-C layout: ``<corruption>/<severity>/<wnid>/*.JPEG``; every severity must hold as many images
    of each class as the clean val set. The images are ordered by class, then file name, in every severity."""
    if not folder.is_dir():
        raise DataError(f"Tiny-ImageNet-C not found: {folder} does not exist; unpack the published Tiny-ImageNet-C "
                        "there (--data-root)")
    missing_corruptions(folder, lambda c: all((folder / c / str(s)).is_dir() for s in SEVERITIES),
                        "<corruption>/<severity 1..5>/<wnid>/*.JPEG for each")
    index = {w: i for i, w in enumerate(info.classes)}
    want = torch.bincount(test.labels, minlength=info.num_classes)
    listing: dict[str, tuple[list[Path], list[int]]] = {}
    for cor in CORRUPTIONS:
        files, labels = [], []
        for s in SEVERITIES:
            sev_files, sev_labels = scan_severity(folder / cor / str(s), index)
            counts = torch.bincount(torch.tensor(sev_labels, dtype=torch.int64), minlength=info.num_classes)
            if not torch.equal(counts, want):
                raise DataError(f"{folder / cor / str(s)}: {len(sev_files)} images, their classes disagree with the "
                                f"clean val set ({len(test)} images, {int(want[0])} of the first class): re-download")
            files += sev_files
            labels += sev_labels
        listing[cor] = (files, labels)
    first_labels = torch.tensor(listing[CORRUPTIONS[0]][1][:len(test)], dtype=torch.int64)

    def images(cor: str) -> torch.Tensor:
        files, labels = listing[cor]
        split = decode_cached("tiny-imagenet-c", files, labels, info.classes, "RGB", cache_dir, cor)
        if tuple(split.images.shape[1:]) != (3, 64, 64):
            raise DataError(f"{folder / cor}: images are not 64x64: re-download Tiny-ImageNet-C")
        return split.images.view(len(SEVERITIES), len(test), 3, 64, 64)

    return CorruptionSet("tiny-imagenet-c", "Tiny-ImageNet-C", CORRUPTIONS, first_labels, images)


def scan_severity(folder: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """The images of one severity folder, class folder by class folder in the data set's class order."""
    files, labels = [], []
    for wnid in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        if wnid not in index:
            raise DataError(f"{folder / wnid}: not a class of the clean data set (its wnids.txt)")
        found = list_images(folder / wnid)
        files += found
        labels += [index[wnid]] * len(found)
    files_labels = sorted(zip(labels, files))  # class order, then file name: the same in every severity
    return [f for _, f in files_labels], [lab for lab, _ in files_labels]


def mean_accuracy(accuracy: dict[str, list[float]]) -> float:
    """The unweighted mean over every corruption and severity (RobustBench's reported number)."""
    values = [a for accs in accuracy.values() for a in accs]
    return math.fsum(values) / len(values)

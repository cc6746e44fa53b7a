"""Tiny-ImageNet in the standard ``tiny-imagenet-200`` layout; its val set is the test split."""

from __future__ import annotations

from pathlib import Path

from bench.data.images import decode_cached, list_images
from bench.data.split import DataError, DatasetInfo, Split

def load_tiny_imagenet(root: Path, cache_dir: Path) -> tuple[Split, Split, DatasetInfo]:
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
    train_files, train_labels = _train_files(base, classes, index, layout)
    val_files, val_labels = _val_files(base, val_ann, index, layout)

    train = decode_cached("tiny-imagenet", train_files, train_labels, classes, "RGB", cache_dir, "train", [wnids_file])
    test = decode_cached("tiny-imagenet", val_files, val_labels, classes, "RGB", cache_dir, "test", [val_ann])
    for split_name, split in (("train", train), ("val", test)):
        if tuple(split.images.shape[1:]) != (3, 64, 64):
            h, w = split.images.shape[2:]
            raise DataError(f"Tiny-ImageNet {split_name} images in {base} are {w}x{h}, expected 64x64; re-download the data set")
    info = DatasetInfo("tiny-imagenet", len(classes), 3, 64, classes)
    return train, test, info


def _train_files(base: Path, classes: tuple[str, ...], index: dict[str, int],
                 layout: str) -> tuple[list[Path], list[int]]:
    """Files and labels of ``train/<wnid>/images/*``, class by class in ``classes`` order."""
    train_files: list[Path] = []
    train_labels: list[int] = []
    for wnid in classes:
        img_dir = base / "train" / wnid / "images"
        if not img_dir.is_dir():
            raise DataError(f"Tiny-ImageNet layout broken: {img_dir} is missing; expected {layout}")
        found = list_images(img_dir)
        train_files += found
        train_labels += [index[wnid]] * len(found)
    if not train_files:
        raise DataError(f"no training images under {base / 'train'}; expected {layout}")
    return train_files, train_labels


def _val_files(base: Path, val_ann: Path, index: dict[str, int], layout: str) -> tuple[list[Path], list[int]]:
    """Files and labels of ``val/images/*`` as ``val_annotations.txt`` lists them, sorted by file name."""
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
    return [val_files[i] for i in order], [val_labels[i] for i in order]

"""The names ``bench.data.datasets`` has always offered, for code that imports them from here: the data sources,
the loader and their types now live in modules of their own (``bench.data.split``, ``bench.data.loader``,
``bench.data.registry``, ``bench.data.images``, ``bench.data.cifar``, ``bench.data.digits``,
``bench.data.tiny_imagenet``); new code imports from ``bench.data`` or from those modules.
"""

from __future__ import annotations

from bench.data.cifar import CIFAR10_CLASSES
from bench.data.digits import DIGITS_TRAIN
from bench.data.images import IMAGE_EXTENSIONS
from bench.data.loader import Batch, Loader, augment_crop_flip
from bench.data.registry import DATASETS, default_cache_dir, default_data_root, load_dataset
from bench.data.split import DataError, DatasetInfo, Split

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
    "augment_crop_flip",
    "CIFAR10_CLASSES",
    "DIGITS_TRAIN",
    "IMAGE_EXTENSIONS",
]

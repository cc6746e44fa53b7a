"""Layer 1: data sets as uint8 tensors and the loader that batches and augments them on the training device.
Imports ``bench.core`` only.

One concern per module: ``split`` (``Split``, ``DatasetInfo``, ``DataError``), ``loader`` (``Loader``, ``Batch``,
the crop-and-flip augmentation), ``registry`` (``load_dataset`` by name, default folders), and the sources it
reads: ``digits``, ``cifar`` (torchvision's CIFAR-10/100, ``cifar10-jpeg``), ``tiny_imagenet`` and ``images``
(image folders, decoding, the decode cache, archive extraction); ``corruptions`` (the published CIFAR-10-C,
CIFAR-100-C and Tiny-ImageNet-C files, checked), ``corruption_download`` (those files fetched from Zenodo
with their published checksums when missing) and ``generated_corruptions`` (a seeded CIFAR-sized set for machines
without them).

The names a method plugin or a test uses are re-exported here: ``from bench.data import Loader, Split``.
"""
from bench.data.loader import Batch, Loader
from bench.data.registry import DATASETS, L2_EPS, default_data_root, load_dataset
from bench.data.split import DataError, DatasetInfo, Split

__all__ = ["DATASETS", "L2_EPS", "Batch", "DataError", "DatasetInfo", "Loader", "Split", "default_data_root", "load_dataset"]

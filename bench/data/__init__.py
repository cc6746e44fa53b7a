"""Layer 1: data sets as uint8 tensors and the loader that batches and augments them on the training device
(``bench.data.datasets``). Imports ``bench.core`` only.

The names a method plugin or a test uses are re-exported here: ``from bench.data import Loader, Split``.
"""
from bench.data.datasets import DATASETS, Batch, DataError, DatasetInfo, Loader, Split, default_data_root, load_dataset

__all__ = ["DATASETS", "Batch", "DataError", "DatasetInfo", "Loader", "Split", "default_data_root", "load_dataset"]

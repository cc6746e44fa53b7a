"""A data set's split held as uint8 tensors, what a data set is (``DatasetInfo``), and ``DataError``, the one
error every data problem is reported as. Shared by the data sources and the loader.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DataError", "Split", "DatasetInfo"]


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

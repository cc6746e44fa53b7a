"""A deterministic, device-side batch loader over a ``Split``.

Why this design:

* Every data set is small enough to keep whole in memory (and on the GPU) as uint8: CIFAR-10 is 150 MB,
  Tiny-ImageNet 1.2 GB. Holding it on the device removes the DataLoader/worker machinery and its
  nondeterminism, and augmentation becomes a couple of batched tensor ops.
* Each epoch's permutation and augmentation parameters come from a private CPU ``torch.Generator`` seeded
  from ``(seed, epoch)``. Epoch ``e`` therefore yields exactly the same batches whenever (and on whatever
  device) it is run, which is what makes resuming a killed run exact, and the global RNG is never touched,
  so model initialisation or attack randomness elsewhere is unaffected by how much data was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from bench.data.split import Split

__all__ = ["Batch", "Loader", "augment_crop_flip"]


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

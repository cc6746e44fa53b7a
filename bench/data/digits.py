"""The ``digits`` data set: scikit-learn's 8x8 digits, embedded (offline), upsampled to 32x32."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.split import DataError, DatasetInfo, Split

DIGITS_TRAIN = 1497  # of 1797; the remaining 300 are the test split


def load_digits() -> tuple[Split, Split, DatasetInfo]:
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

"""Shared fixtures: a tiny real-format image folder (written by the test, learnable by colour) and tiny runs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests are CPU, deterministic and small: one thread keeps timings stable and results bit-reproducible.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def write_tiny_folder(root: Path, classes=("red", "green", "blue"), n_train=24, n_test=12, size=16, seed=0) -> Path:
    """An ImageFolder (train/<class>/, test/<class>/) of PNGs whose class is a noisy dominant colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n // len(classes)):
                img = rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8)
                img[..., c % 3] = rng.integers(120, 256, size=(size, size), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return write_tiny_folder(tmp_path / "tiny")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # decoded-image caches of test folders go to the test's own folder, never the user's cache
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))


def tiny_run(method: str, dataset: str, *, epochs=2, parent_epochs=2, seed=0, hparams=None, **eval_kw):
    from bench.core.config import EvalConfig
    from bench.grid.runs import make_run

    ev = EvalConfig(n_clean=12, n_pgd=12, n_aa=eval_kw.pop("n_aa", 0), pgd_steps=eval_kw.pop("pgd_steps", 3),
                    batch_size=12, n_gap=12, **eval_kw)
    return make_run(method, model="small_cnn", dataset=dataset, epochs=epochs, parent_epochs=parent_epochs,
                    hparams=hparams, eval=ev, seed=seed, batch_size=8)

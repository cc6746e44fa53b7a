"""Shared set-up of the differential tests: one of our methods and the same starting point for a reference.

Each ``test_<method>.py`` beside this file feeds our method and an independent transcription of its reference's
training step (``ref_<method>.py``, written for this project from the public code, citing file and line; never
copied) identical weights, batch and attack randomness, and asserts equal losses and updated parameters. Runs are
in float64 where float32 rounding would hide a real difference.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from bench.core import schedules
from bench.core.config import TrainConfig
from bench.data import Batch, DatasetInfo, Loader, Split
from bench.models.architectures import build_model
from methods import build_method, Context, StepInfo, get_method, make_hparams, resolve_hparams

EPS = 8 / 255
C = 4  # classes
S = 16  # image side


def tiny_split(n: int = 32, seed: int = 0, size: int = S) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % C)


def info(size: int = S) -> DatasetInfo:
    return DatasetInfo(name="random", num_classes=C, channels=3, image_size=size, classes=tuple("abcd"))


def build(name: str, hp: dict | None = None, *, epochs: int = 2, batch_size: int = 8, n: int = 32,
          dtype: torch.dtype = torch.float64, train: TrainConfig | None = None, augment: bool = False,
          parent_seed: int = 0, student_seed: int = 1, perturb_student: float = 0.0):
    """Our method ``name`` on a small CNN with a random tiny split, ready to step, and its loader.

    The parent (for fine-tuning methods) is a random small CNN; the student starts from it (optionally
    perturbed by ``perturb_student`` x N(0, 1) so teacher and student differ). ``train`` defaults to the
    method's recipe with ``epochs`` and ``batch_size``."""
    cls = get_method(name)
    split = tiny_split(n)
    torch.manual_seed(parent_seed)
    parent = build_model("small_cnn", C, 3).to(dtype).eval() if cls.parent else None
    torch.manual_seed(student_seed)
    model = build_model("small_cnn", C, 3).to(dtype)
    if parent is not None:
        model.load_state_dict(parent.state_dict())
    if perturb_student:
        g = torch.Generator().manual_seed(student_seed + 100)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb_student * torch.randn(p.shape, generator=g, dtype=p.dtype))
    train = train or dataclasses.replace(cls.recipe, epochs=epochs, batch_size=batch_size)
    loader = Loader(split, batch_size, device="cpu", shuffle=True, augment=augment, seed=0)
    ctx = Context(info=info(), eps=EPS, device=torch.device("cpu"), epochs=train.epochs,
                  steps_per_epoch=len(loader), seed=0, train=split, parent_model=parent, train_cfg=train)
    m = build_method(cls, model, make_hparams(name, resolve_hparams(name, hp)), ctx, train, dtype=dtype)
    return m, loader


def as_dtype(batch: Batch, dtype: torch.dtype = torch.float64) -> Batch:
    return dataclasses.replace(batch, x=batch.x.to(dtype))


def batches(loader: Loader, epoch: int = 0, dtype: torch.dtype = torch.float64) -> list[Batch]:
    return [as_dtype(b, dtype) for b in loader.epoch(epoch)]


def step(m, batch: Batch, epoch: int = 0, i: int = 0) -> dict:
    """One step as the loop takes it (bench/train/loop.py: train mode, lr and momentum from the schedule)."""
    m.net.train()
    schedules.apply(m.ctx.train_cfg, m.optimizers, epoch, i, m.ctx.steps_per_epoch)
    return m.train_step(batch, StepInfo(epoch=epoch, step=i, global_step=epoch * m.ctx.steps_per_epoch + i))


def snapshot(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy, for the reference side to start from exactly our starting weights."""
    return copy.deepcopy(module)


def assert_same_params(ours: torch.nn.Module, ref: torch.nn.Module, *, rtol: float = 1e-10, atol: float = 1e-12,
                       prefix: str = "") -> None:
    """Every parameter and buffer of ``ours`` equals the one of the same name in ``ref``."""
    a, b = ours.state_dict(), ref.state_dict()
    assert set(a) == set(b), f"{prefix}state keys differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{prefix}{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), f"{prefix}{k} differs"


def moved(before: torch.nn.Module, after: torch.nn.Module) -> float:
    """Largest absolute parameter change: a test of equality must also show the step did something."""
    return max(float((p - q).detach().abs().max()) for p, q in zip(before.parameters(), after.parameters()))

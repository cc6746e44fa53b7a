"""Differential tests: our PGD-AT against ``ref_pgd_at.py``, a transcription of P2333/Bag-of-Tricks-for-AT
train_cifar.py (``attack_pgd`` with --BNeval and the training iteration) run as its README's baseline. Same
weights, same batches, the same random start (the global RNG seeded identically before each side's step);
float64; 3 steps; the loss, every parameter and every BatchNorm buffer compared after each step.

Each test's docstring names a mutation of our method that makes it fail (checked by applying it, running, and
reverting)."""
from __future__ import annotations

import pytest
import torch

from bench.core.schedules import lr_at
from methods.pgd_at import PGDAT
import harness
import ref_pgd_at as ref

TOL = dict(rtol=1e-10, atol=1e-12)


def test_pgd_at_step_matches_reference():
    """Mutation that fails it: an unclamped start (``clamp_start: bool = False`` as the Hparams default); also
    fails without the two clean BatchNorm passes (``clean_bn_passes = False``) and with a train-mode attack."""
    m, loader = harness.build("pgd_at")
    assert (m.hp.steps, m.hp.step_size, m.ctx.eps) == (ref.ATTACK_ITERS, ref.PGD_ALPHA, ref.EPSILON)
    theirs_model = harness.snapshot(m.model)
    opt = ref.sgd(theirs_model)
    before = harness.snapshot(m.model)
    for i, b in enumerate(harness.batches(loader, 0)[:3]):
        torch.manual_seed(700 + i)
        ours = harness.step(m, b, 0, i)
        torch.manual_seed(700 + i)
        theirs = ref.train_step(theirs_model, opt, b.x, b.y, epoch=0, i=i, n=len(loader), set_lr=True)
        assert m.optimizers[0].param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        torch.testing.assert_close(ours["loss"].detach(), theirs, **TOL)
        harness.assert_same_params(m.model, theirs_model, prefix=f"step {i}: ", **TOL)
    assert harness.moved(before, m.model) > 1e-4


def test_pgd_at_recipe_and_schedule_match_reference():
    """Every iteration's lr of the 110-epoch recipe against Bag-of-Tricks' lr_schedule(epoch + (i + 1) / n): equal
    except the two documented iterations (the last of 0-based epochs 99 and 104). Mutation that fails it:
    milestones (100/110, 106/110)."""
    r = PGDAT.recipe
    assert (r.epochs, r.lr, r.momentum, r.weight_decay, r.batch_size, r.nesterov) == (
        ref.EPOCHS, ref.LR_MAX, 0.9, ref.WEIGHT_DECAY, ref.BATCH_SIZE, False)
    n = 391
    differ = [(e, i) for e in range(r.epochs) for i in range(n)
              if lr_at(r, e, i, n) != pytest.approx(ref.lr_schedule(e + (i + 1) / n), rel=1e-12)]
    assert differ == [(99, n - 1), (104, n - 1)]

"""Differential tests: our natural training (``standard``) against ``ref_standard.py``, the plain loop of
yaodongyu/TRADES train_trades_cifar10.py with cross-entropy, and robust_overfitting's piecewise schedule. Same
weights, same batches; float64; 3 steps; the loss, every parameter, every BatchNorm buffer and every momentum
buffer compared after each step.

Each test's docstring names a mutation of our method that makes it fail (checked by applying it, running, and
reverting)."""
from __future__ import annotations

import pytest
import torch

from bench.core.schedules import lr_at
from methods.standard import Standard
import harness
import ref_standard as ref

TOL = dict(rtol=1e-10, atol=1e-12)


def test_standard_step_matches_reference():
    """Mutation that fails it: Nesterov momentum in the recipe (``TrainConfig(..., nesterov=True)``)."""
    m, loader = harness.build("standard")
    theirs_model = harness.snapshot(m.model)
    opt = ref.sgd(theirs_model)
    before = harness.snapshot(m.model)
    for i, b in enumerate(harness.batches(loader, 0)[:3]):
        ours = harness.step(m, b, 0, i)
        assert m.optimizers[0].param_groups[0]["lr"] == ref.LR
        theirs = ref.train_step(theirs_model, opt, b.x, b.y)
        torch.testing.assert_close(ours["loss"].detach(), theirs, **TOL)
        harness.assert_same_params(m.model, theirs_model, prefix=f"step {i}: ", **TOL)
        for p, q in zip(m.optimizers[0].param_groups[0]["params"], opt.param_groups[0]["params"]):
            torch.testing.assert_close(m.optimizers[0].state[p]["momentum_buffer"],
                                       opt.state[q]["momentum_buffer"], **TOL)
    assert harness.moved(before, m.model) > 1e-4


def test_standard_recipe_and_schedule_match_reference():
    """Every iteration's lr of a 100-epoch run against robust_overfitting's piecewise schedule: equal except the
    two documented iterations (the last one before each decay). Mutation that fails it: milestones (0.5, 0.8)."""
    r = Standard.recipe
    assert (r.epochs, r.lr, r.momentum, r.weight_decay, r.batch_size, r.nesterov) == (100, ref.LR, ref.MOMENTUM,
                                                                                       ref.WEIGHT_DECAY, 128, False)
    n = 391  # CIFAR-10 at batch 128
    differ = [(e, i) for e in range(r.epochs) for i in range(n)
              if lr_at(r, e, i, n) != pytest.approx(ref.piecewise_lr(e, i, n, r.epochs), rel=1e-12)]
    assert differ == [(49, n - 1), (74, n - 1)]

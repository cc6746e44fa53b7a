"""Differential tests: our TRADES against ``ref_trades.py``, a transcription of yaodongyu/TRADES trades.py
``trades_loss`` and the step, optimizer and schedule of train_trades_cifar10.py. Same weights, same batches, the
same start noise (the global RNG seeded identically before each side's step); float64; 3 steps; the loss, every
parameter and every BatchNorm buffer (running statistics and batch counts) compared after each step.

Each test's docstring names a mutation of our method that makes it fail (checked by applying it, running, and
reverting)."""
from __future__ import annotations

import pytest
import torch

from bench.core.schedules import lr_at
from methods.trades import TRADES
import harness
import ref_trades as ref

TOL = dict(rtol=1e-10, atol=1e-12)


def test_trades_step_matches_reference():
    """Mutation that fails it: a clamped start (``clamp_start: bool = True`` as the Hparams default); also fails
    with one train-mode forward of x shared by the CE and the KL target (BatchNorm buffers differ)."""
    m, loader = harness.build("trades")
    assert (m.hp.beta, m.hp.steps, m.hp.step_size) == (ref.BETA, ref.NUM_STEPS, ref.STEP_SIZE)
    theirs_model = harness.snapshot(m.model)
    opt = ref.sgd(theirs_model)
    before = harness.snapshot(m.model)
    for i, b in enumerate(harness.batches(loader, 0)[:3]):
        torch.manual_seed(500 + i)
        ours = harness.step(m, b, 0, i)
        assert m.optimizers[0].param_groups[0]["lr"] == ref.adjust_learning_rate(1)
        torch.manual_seed(500 + i)
        theirs = ref.train_step(theirs_model, opt, b.x, b.y, epsilon=harness.EPS)
        torch.testing.assert_close(ours["loss"].detach(), theirs, **TOL)
        harness.assert_same_params(m.model, theirs_model, prefix=f"step {i}: ", **TOL)
    assert harness.moved(before, m.model) > 1e-4


def test_trades_unclamped_start_matters_on_these_batches():
    """The batches above do exercise the start: with ``clamp_start=True`` the first step's loss already differs
    (so the test above can see the mutation). Mutation that fails it: the attack ignores the hyperparameter and
    never clamps (``clamp_start=False`` hard-coded in ``TRADES.loss``)."""
    m, loader = harness.build("trades", {"clamp_start": True})
    theirs_model = harness.snapshot(m.model)
    opt = ref.sgd(theirs_model)
    b = harness.batches(loader, 0)[0]
    torch.manual_seed(500)
    ours = harness.step(m, b, 0, 0)
    torch.manual_seed(500)
    theirs = ref.train_step(theirs_model, opt, b.x, b.y, epsilon=harness.EPS)
    assert abs(float(ours["loss"]) - float(theirs)) > 1e-8


def test_trades_recipe_and_schedule_match_reference():
    """Every iteration's lr of the 76-epoch recipe equals train_trades_cifar10.py's adjust_learning_rate (set per
    epoch, 1-based). Mutation that fails it: milestone 75/76 (the decay one epoch late)."""
    r = TRADES.recipe
    assert (r.epochs, r.lr, r.momentum, r.weight_decay, r.batch_size, r.nesterov) == (
        ref.EPOCHS, ref.LR, ref.MOMENTUM, ref.WEIGHT_DECAY, ref.BATCH_SIZE, False)
    n = 391
    for e in range(r.epochs):
        for i in (0, 1, n // 2, n - 1):
            assert lr_at(r, e, i, n) == pytest.approx(ref.adjust_learning_rate(e + 1), rel=1e-12), (e, i)

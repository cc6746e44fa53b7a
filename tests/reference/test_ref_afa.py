"""Differential tests for AFA.

1. Our ``supcon_loss`` against ``ref_afa.SupConLoss``, a transcription of HobbitLong/SupContrast losses.py: value
   and gradient in float64, on several batches (two views as AFA uses it, classes with a single sample, a
   single-view batch whose singletons have no positive at all, several temperatures).
2. Our AFA step against ``ref_afa.train_step``, a transcription of the step methods/afa.py specifies (AFA has no
   public code): same weights, batches and random start (global RNG seeded identically before each side's step);
   float64; 2 steps; losses, every parameter and BatchNorm buffer (and the projection head) compared.

Each test's docstring names a mutation of our method that makes it fail (checked by applying it, running, and
reverting)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methods.afa import supcon_loss
import harness
import ref_afa as ref

TOL = dict(rtol=1e-10, atol=1e-12)

# (labels, temperature, base_temperature): classes of one sample in every case but the first
CASES = [
    ([0, 0, 1, 1, 2, 2, 3, 3], 0.1, 0.07),
    ([0, 1, 2, 3, 4], 0.1, 0.07),  # every class a singleton: its only positive is its other view
    ([0, 0, 0, 1, 2, 2, 3], 0.07, 0.07),
    ([5, 1, 1, 5, 5, 9, 1, 0, 0, 0, 2, 7], 0.5, 0.07),
    ([3, 3, 1], 0.1, 0.1),
]


@pytest.mark.parametrize("labels,tau,base", CASES)
def test_supcon_equals_supcontrast_two_views(labels, tau, base):
    """Mutation that fails it: no ``temperature / base_temperature`` factor (the loss 0.7x SupConLoss's at 0.1)."""
    g = torch.Generator().manual_seed(len(labels))
    y = torch.tensor(labels)
    b = len(labels)
    z1 = F.normalize(torch.randn(b, 6, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    z2 = F.normalize(torch.randn(b, 6, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    ours = supcon_loss(torch.cat([z1, z2]), torch.cat([y, y]), tau, base)
    theirs = ref.SupConLoss(temperature=tau, base_temperature=base)(ref.two_views(z1, z2), y)
    torch.testing.assert_close(ours, theirs, **TOL)
    g_ours = torch.autograd.grad(ours, [z1, z2])
    g_theirs = torch.autograd.grad(theirs, [z1, z2])
    for a, c in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, c, **TOL)


def test_supcon_equals_supcontrast_single_view_with_anchors_without_positive():
    """One view: the singletons (classes 2 and 3) have no positive; SupConLoss counts them as 0 in the mean over
    all anchors (losses.py:98-104). Mutation that fails it: leaving those anchors out of the mean."""
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    z = F.normalize(torch.randn(len(y), 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    ours = supcon_loss(z, y, 0.1)
    theirs = ref.SupConLoss(temperature=0.1)(z.unsqueeze(1), y)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(theirs, z)[0], **TOL)


@pytest.mark.parametrize("hp", [{}, {"trades_beta": 6.0}, {"proj_dim": 8}])
def test_afa_step_matches_reference(hp):
    """Mutation that fails it: an unclamped attack start (``clamp_start=False`` in ``AFA.attack``); the
    trades_beta case also fails with the KL target detached."""
    m, loader = harness.build("afa", hp)
    theirs_model = harness.snapshot(m.model)
    proj = harness.snapshot(m.net["proj"]) if "proj" in m.net else None
    params = list(theirs_model.parameters()) + (list(proj.parameters()) if proj is not None else [])
    r = m.ctx.train_cfg
    opt = torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    before = harness.snapshot(m.net)
    kw = dict(eps=harness.EPS, step_size=m.hp.step_size, steps=m.hp.steps, temperature=m.hp.temperature,
              base_temperature=m.hp.base_temperature, ce_weight=m.hp.ce_weight, trades_beta=m.hp.trades_beta)
    for i, b in enumerate(harness.batches(loader, 0)[:2]):
        torch.manual_seed(900 + i)
        ours = harness.step(m, b, 0, i)
        assert m.optimizers[0].param_groups[0]["lr"] == r.lr
        torch.manual_seed(900 + i)
        theirs = ref.train_step(theirs_model, opt, b.x, b.y, proj=proj, **kw)
        for k in ("loss", "supcon", "ce"):
            torch.testing.assert_close(ours[k].detach(), theirs[k], **TOL)
        harness.assert_same_params(m.model, theirs_model, prefix=f"step {i}: ", **TOL)
        if proj is not None:
            harness.assert_same_params(m.net["proj"], proj, prefix=f"step {i} proj: ", **TOL)
    assert harness.moved(before, m.net) > 1e-4

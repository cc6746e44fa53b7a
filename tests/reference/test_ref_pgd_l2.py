"""Differential test: our L2 PGD-20 (``bench.eval.l2.pgd_l2``, step eps / 4, as ``L2Evaluator`` runs it) against
``ref_pgd_l2.py``, a transcription of locuslab/robust_overfitting ``attack_pgd`` (norm ``l_2``). Same model, images
and random draws, float64, 20 steps; the final points and the per-example flags compared.

Mutations that fail it (checked by applying, running, reverting): a step along the gradient's sign; the projection
onto the ball left out; a start on the sphere (radius eps instead of U(0, eps))."""
from __future__ import annotations

import torch
from torch import nn

from bench.eval.l2 import PGD_STEP_FRACTION, l2_norms, pgd_l2
from bench.models.architectures import build_model
import harness
import ref_pgd_l2 as ref

N, SIZE, EPS = 24, 8, 0.25


def test_pgd_l2_matches_attack_pgd_l_2():
    test = harness.tiny_split(N, seed=7, size=SIZE)
    torch.manual_seed(13)
    model = build_model("small_cnn", harness.C, 3).double().eval()
    x = test.images.double() / 255
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):  # fit the random labels a little: some examples robust at eps, some not
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), test.labels).backward()
        opt.step()
    model.eval()
    ours = pgd_l2(model, x, test.labels, eps=EPS, step_size=PGD_STEP_FRACTION * EPS, steps=20,
                  generator=torch.Generator().manual_seed(5))
    theirs = ref.attack_pgd_l2(model, x, test.labels, EPS, EPS / 4, 20, torch.Generator().manual_seed(5))
    assert (l2_norms(ours - x) <= EPS + 1e-9).all() and ours.min() >= 0 and ours.max() <= 1
    # renorm scales by eps / (norm + 1e-7), ours by eps / norm: the points agree to that much
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6), (ours - theirs).abs().max()
    with torch.no_grad():
        ok_ours, ok_theirs = model(ours).argmax(1) == test.labels, model(theirs).argmax(1) == test.labels
        clean = model(x).argmax(1) == test.labels
    assert torch.equal(ok_ours, ok_theirs)
    assert 0 < ok_ours.sum() < clean.sum()  # the attack had work to do, and robust points were left

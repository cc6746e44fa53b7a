"""Differential test: our PGD-20 evaluation (``bench.eval.evaluator.Evaluator.pgd_correct`` with the default
``EvalConfig``) against ``ref_pgd20.py``, a transcription of yaodongyu/TRADES pgd_attack_cifar10.py
``_pgd_whitebox``. Same model, same images, the same random start (drawn from a generator seeded as the
evaluator seeds each chunk's); float64 (the evaluator's image chunks are cast to float64 by a subclass, the only change);
20 steps; the final x_adv and the per-example flags compared.

The docstring names a mutation of our evaluator that makes the test fail (checked by applying it, running, and
reverting)."""
from __future__ import annotations

import torch
from torch import nn

from bench.core.config import EvalConfig
from bench.eval.evaluator import Evaluator
from bench.models.architectures import build_model
import harness
import ref_pgd20 as ref

N, SEED, SIZE = 32, 3, 8  # 8x8 images keep the 2 x 20 float64 PGD steps fast


class Evaluator64(Evaluator):
    def _chunk(self, k, n):
        x, y = super()._chunk(k, n)
        return x.double(), y


class Recorder(nn.Module):
    """The model, recording the inputs it classifies under inference mode (the evaluator's final x_adv)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.classifier = model.classifier  # the evaluator's feature gap uses features() directly: not recorded
        self.seen: list[torch.Tensor] = []

    def features(self, x):
        return self.model.features(x)

    def forward(self, x):
        if torch.is_inference_mode_enabled():
            self.seen.append(x.clone())
        return self.model(x)


def test_pgd20_matches_pgd_whitebox():
    """Mutation that fails it: a clamped start (``EvalConfig(pgd_clamp_start=True)``, or the evaluator not passing
    ``pgd_clamp_start`` to ``pgd``)."""
    test = harness.tiny_split(N, seed=5, size=SIZE)
    torch.manual_seed(11)
    model = build_model("small_cnn", harness.C, 3).double()
    x_all = test.images.double() / 255
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):  # fit the random labels a little: some examples robust at eps, some not
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_all), test.labels).backward()
        opt.step()
    model.eval()
    cfg = EvalConfig(n_clean=N, n_pgd=N, n_aa=0, batch_size=16)
    assert (cfg.pgd_steps, cfg.pgd_step_size) == (ref.NUM_STEPS, ref.STEP_SIZE)
    rec = Recorder(model)
    ours = Evaluator64(test, cfg, eps=harness.EPS, device=torch.device("cpu"), seed=SEED).pgd_correct(rec, N)
    ours_adv = torch.cat(rec.seen)

    batches = []
    for k, i in enumerate(range(0, N, cfg.batch_size)):
        gen = torch.Generator().manual_seed(SEED + 1_000_003 * k)  # as Evaluator._pgd_chunk seeds chunk k's start
        X = test.images[i:i + cfg.batch_size].float().div(255).double()
        noise = torch.empty(X.shape, dtype=X.dtype).uniform_(-harness.EPS, harness.EPS, generator=gen)  # :64
        batches.append((X, test.labels[i:i + cfg.batch_size], noise))
    theirs, theirs_adv = ref.eval_adv_test_whitebox(model, batches, epsilon=harness.EPS)

    torch.testing.assert_close(ours_adv, theirs_adv, rtol=0, atol=1e-12)
    assert torch.equal(ours, theirs)
    # not degenerate: the attack flips some examples and leaves some; the start near 0/1 does matter here
    clean = torch.cat([model(X).argmax(1) == y for X, y, _ in batches])
    assert 0 < int(theirs.sum()) < int(clean.sum())

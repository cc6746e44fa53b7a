"""Reference for the paper's PGD-20 evaluation: an independent transcription of yaodongyu/TRADES (at 6e8e11b)
pgd_attack_cifar10.py ``_pgd_whitebox`` (:54-81) and ``eval_adv_test_whitebox`` (:115-131). Written for this
project from the public code (never copied); each line cites its source.

Transcription choices (none changes what is computed):
- The random start (:63-65) is ``torch.FloatTensor(*X.shape).uniform_(-epsilon, epsilon)``, a float32 draw from
  the global CPU generator; here the caller passes it in (``random_noise``), so a test can give this function and
  our evaluator the same start in float64.
- ``Variable``, the throw-away ``optim.SGD`` (:68-69, only used to zero the gradient) and ``.to(device)`` are
  replaced by a fresh leaf tensor per step and ``torch.autograd.grad`` on it: the same gradient.
- Returns the per-example "robust" flags and the final X_pgd instead of printing error counts (:79-81).
"""
from __future__ import annotations

import torch
import torch.nn as nn

EPSILON = 0.031  # :20 (the AFD paper: 8/255)
NUM_STEPS = 20  # :22
STEP_SIZE = 0.003  # :24


def pgd_whitebox(model, X, y, random_noise, epsilon=EPSILON, num_steps=NUM_STEPS, step_size=STEP_SIZE):
    """:54-81 with args.random True (:26-28). Returns (flags: model(X_pgd).argmax == y, X_pgd)."""
    X_pgd = X.detach().clone()  # :62
    X_pgd = X_pgd + random_noise  # :63-65 (no clamp to [0, 1] before the first gradient)
    for _ in range(num_steps):  # :67
        X_pgd = X_pgd.detach().requires_grad_(True)
        with torch.enable_grad():  # :71
            loss = nn.CrossEntropyLoss()(model(X_pgd), y)  # :72 (mean over the batch)
        (grad,) = torch.autograd.grad(loss, [X_pgd])  # :73
        eta = step_size * grad.sign()  # :74
        X_pgd = X_pgd.detach() + eta  # :75
        eta = torch.clamp(X_pgd - X, -epsilon, epsilon)  # :76
        X_pgd = X + eta  # :77
        X_pgd = torch.clamp(X_pgd, 0, 1.0)  # :78
    with torch.no_grad():
        flags = model(X_pgd).argmax(1) == y  # :79 (err_pgd counts the complement)
    return flags, X_pgd.detach()


def eval_adv_test_whitebox(model, batches, **kw):
    """:115-131: eval mode (:119), batch by batch; ``batches`` yields (X, y, random_noise); ``kw`` go to
    ``pgd_whitebox`` (epsilon, num_steps, step_size)."""
    model.eval()  # :119
    flags, advs = [], []
    for X, y, noise in batches:  # :123
        f, a = pgd_whitebox(model, X, y, noise, **kw)
        flags.append(f)
        advs.append(a)
    return torch.cat(flags), torch.cat(advs)

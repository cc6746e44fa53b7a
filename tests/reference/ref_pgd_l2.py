"""L2 PGD as locuslab/robust_overfitting ``train_cifar.py`` ``attack_pgd`` runs it with ``norm == "l_2"`` (Rice et
al. 2020), written for this project from the public code, never copied; the evaluation's differences kept out:

* start: ``delta.normal_()``, scaled per image to ``r / ||delta||_2 * epsilon`` with ``r ~ U(0, 1)``, then clamped
  so that ``x + delta`` is in [0, 1] (``clamp(delta, lower_limit - X, upper_limit - X)``);
* step: ``g / (||g||_2 + 1e-10) * alpha`` added to delta, then ``renorm(p=2, dim=0, maxnorm=epsilon)`` on the
  flattened delta, then the same clamp to the pixel range;
* the model sees ``X + delta`` (this project's models hold no normalisation); cross-entropy, mean over the batch.

Left out: the script's early stop (``index``: only still-correct examples are updated) and its restarts; the
evaluation attacks every example for all steps, once. The random draws come from a ``torch.Generator`` in the
script's order (all the normal draws, then one uniform per image)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attack_pgd_l2(model, X, y, epsilon, alpha, attack_iters, generator):
    delta = torch.randn(X.shape, generator=generator, dtype=X.dtype)
    n = delta.view(delta.size(0), -1).norm(p=2, dim=1).view(delta.size(0), 1, 1, 1)
    r = torch.rand(n.shape[0], generator=generator, dtype=X.dtype).view_as(n)
    delta = delta * (r / n * epsilon)
    delta = torch.max(torch.min(delta, 1 - X), 0 - X)
    for _ in range(attack_iters):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(X + delta), y)
        (g,) = torch.autograd.grad(loss, [delta])
        d = delta.detach()
        g_norm = torch.norm(g.view(g.shape[0], -1), dim=1).view(-1, 1, 1, 1)
        d = (d + g / (g_norm + 1e-10) * alpha).view(d.size(0), -1).renorm(p=2, dim=0, maxnorm=epsilon).view_as(d)
        delta = torch.max(torch.min(d, 1 - X), 0 - X)
    return (X + delta).detach()

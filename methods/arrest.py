"""ARREST: AFKD plus noisy replay (Suzuki et al. 2023, "Adversarial Finetuning with Latent Representation
Constraint to Mitigate Accuracy-Robustness Tradeoff", ICCV 2023), the ARREST baseline of the AFD paper.

Per batch, before the attack (no gradient):
    d = 1 - mean_i cos(h_pre(x_i), h(x_i))          on the CLEAN x (student in eval mode)
    if d >= 1 - cos(theta) and the epoch lies in the first half of training:  x_train = clamp(x + U(-eps, eps))
    else:                                                                      x_train = PGD-10(x)
    loss = CE(f(x_train), y) + lambda (1 - mean cos(h_pre(x), h(x_train)))     (AFKD's loss, lambda = 50)
theta = 30 degrees. When the fine-tuned representation has drifted too far from the natural one, the batch is
replayed with random noise instead of an adversarial example, which lets the RGKD term pull it back.
Public code checked: changzhang777/AFD ARREST.py with --NR --RGKD (``ARREST()``: the distance uses the
``prejection`` features of ``model_nat`` and of ``model`` after ``model.eval()``, the batch-mean ``Cosine``,
the condition ``distance >= 1 - cos(radians(theta)) and epoch <= 10``; the noise start x + U(-eps, eps) is the
PGD start, so skipping PGD trains on it).

Fidelity notes:
- Window. The code's ``epoch <= 10`` (1-based, 20 epochs) is written as a fraction: noisy replay is allowed in
  epoch e (0-based) iff (e + 1) <= replay_fraction * epochs, replay_fraction = 0.5, i.e. epochs that END within
  the first half. At 20 epochs this is exactly epochs 1-10; a 1-epoch smoke run never replays.
- Per batch, not per sample: the code compares the batch-mean distance with the threshold (the per-sample vs
  per-batch choice of Suzuki et al.'s own code is unknown; their code is not public).
- Teacher BatchNorm mode for d and for RGKD: see methods/afkd.py (default eval; ``teacher_batch_stats=True`` is
  ARREST.py's train-mode teacher).
- The noisy input is clamped to [0, 1] (the code clamps it too, after the skipped attack loop).
- ``noise`` (1 if the batch was replayed with noise, else 0) and ``replay_dist`` (d) are logged per epoch as means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from methods.afkd import AFKD
from methods.base import angular_distance, register


def use_noisy_replay(distance: float | Tensor, epoch: int, epochs: int, theta_deg: float,
                     replay_fraction: float) -> bool:
    """ARREST.py's switch: replay with noise iff d >= 1 - cos(theta) and epoch (0-based) ends in the window.

    A tensor d is compared in its own precision, as ARREST.py's ``distance >= 1 - math.cos(...)`` does (a float32
    d equal to float32(threshold) replays).
    """
    in_window = epoch + 1 <= replay_fraction * epochs + 1e-9
    return in_window and bool(distance >= 1 - math.cos(math.radians(theta_deg)))


@register
class ARREST(AFKD):
    name = "arrest"
    summary = "AFKD + noisy replay when the features drift beyond theta (Suzuki et al. 2023)"

    @dataclass(frozen=True)
    class Hparams(AFKD.Hparams):
        theta_deg: float = 30.0  # ARREST.py --theta
        replay_fraction: float = 0.5  # ARREST.py: epoch <= 10 of 20

    @torch.no_grad()
    def replay_distance(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """d = 1 - mean cos(h_pre(x), h(x)) on clean x, the student in eval mode as in ARREST.py (``target``:
        the teacher's features h_pre(x), if already computed)."""
        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            return angular_distance(self.teacher_features(x) if target is None else target, self.feats(x).float())
        finally:
            for m, flag in modes:  # restore each submodule's own flag
                m.training = flag

    def loss(self, batch, step):
        hp = self.hp
        target = self.teacher_features(batch.x)  # once: the replay distance and the RGKD term share it
        d = self.replay_distance(batch.x, target)
        # The one host synchronisation of a step in the suite's methods, inherent to ARREST: whether this batch is
        # attacked at all depends on d (ARREST.py decides per batch in Python too).
        noise = use_noisy_replay(d, step.epoch, self.ctx.epochs, hp.theta_deg, hp.replay_fraction)
        if noise:
            u = torch.empty_like(batch.x).uniform_(-self.ctx.eps, self.ctx.eps)
            x_train = (batch.x + u).clamp(0.0, 1.0)
        else:
            x_train = self.pgd(batch.x, batch.y, steps=hp.steps, step_size=hp.step_size)
        out = self.rgkd_losses(batch.x, x_train, batch.y, target)
        out["noise"] = torch.tensor(float(noise), device=batch.x.device)
        out["replay_dist"] = d
        return out

"""Reference: the training step of changzhang777/AFD ``ARREST.py`` (the AFD authors' re-implementation of vAFT,
AFKD and ARREST, the code behind the AFD paper's baseline numbers), transcribed for the differential tests in
``test_ref_aft.py``. Written for this project from a reading of the file (repository HEAD c94cb6c); no code is
copied and nothing here imports our methods.

Modes (``ARREST.py`` flags, lines 42-43): no flag = vAFT; ``--RGKD`` = AFKD; ``--NR --RGKD`` = ARREST.

Where each piece comes from (ARREST.py line numbers):
- ``cosine``: ``Cosine`` 140-146. For the 2-D ``prejection`` features: 1 - (batch mean of the per-example cosine
  similarity), the teacher's features first.
- ``arrest_loss``: ``ARREST()`` 152-205, step by step:
  163 the student goes to eval mode (running statistics) for the distance and the attack;
  165-171 with --NR, d = Cosine(teacher(x), student(x)) on CLEAN x under no_grad, the teacher in whatever mode
  it is in (train: see ``as_run_teacher``); without --NR, d = 0;
  173 x_adv = x + U(-eps, eps), NOT clamped (the random numbers are passed in as ``noise``);
  175 no attack iff d >= 1 - cos(radians(theta)) and epoch <= 10 (``epoch`` is 1-based, main() 378);
  178-185 PGD: batch-MEAN cross-entropy (``F.cross_entropy`` default), x_adv += step_size * sign(grad), then
  projection onto the eps-ball (min/max) and clamp to [0, 1];
  187 the student goes back to train mode; 189 x_adv is clamped to [0, 1] (this is what the skipped branch
  trains on); 191 zero_grad;
  193-194 teacher features of CLEAN x under no_grad (again: a second teacher forward with --NR);
  195-196 student logits and features of x_adv (train mode: batch statistics, running statistics updated);
  198-204 loss = CE (batch mean) + beta * Cosine (with --RGKD; else 0), beta = 50 (line 44).
- ``train_step``: ``train_align_loss`` 214-233 for one batch: student in train mode (215), zero_grad (218),
  the loss (220-230), backward (232), SGD step (233).
- ``make_optimizer``: main() 376: SGD over the student's parameters, lr 0.025 (line 53), momentum 0.9 (31),
  weight decay 5e-4 (51), no Nesterov, no EMA.
- ``lr_for_epoch``: ``adjust_learning_rate`` 106-113 applied at the start of every epoch 1..epoch (main() 381).
- ``as_run_teacher``: main() 372-375: model_nat is built, loaded, deep-copied into the student; nothing ever
  calls model_nat.eval(), so it stays in train mode (its BatchNorm uses the batch's statistics and updates its
  running statistics on every forward, which nothing reads: model_nat is never evaluated or saved).

``prejection(model, x)`` stands for ``model(x, prejection=True)`` (models/resnet.py 100-114: the logits and the
pooled penultimate features they are computed from); for this suite's models it is ``classifier(features(x))``.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def prejection(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, features) as models/resnet.py:100-114 returns them with ``prejection=True``."""
    feats = model.features(x)
    return model.classifier(feats), feats


def cosine(output_nat: Tensor, output_rob: Tensor) -> Tensor:
    """ARREST.py:140-146 for 2-D features."""
    assert output_nat.dim() == 2
    return 1 - torch.cosine_similarity(output_nat, output_rob, dim=-1).mean()


def replay_decision(distance, epoch: int, theta: float = 30.0) -> bool:
    """ARREST.py:175: True = skip the attack. ``epoch`` is 1-based."""
    return bool((distance >= 1 - math.cos(math.radians(theta))) and (epoch <= 10))


def arrest_loss(model: nn.Module, model_nat: nn.Module, x_natural: Tensor, y: Tensor, optimizer, *, noise: Tensor,
                epoch: int, nr: bool, rgkd: bool, step_size: float = 2 / 255, epsilon: float = 8 / 255,
                perturb_steps: int = 10, beta: float = 50.0, theta: float = 30.0,
                forward: Callable = prejection) -> tuple[Tensor, dict]:
    """ARREST.py:152-205. ``noise``: the U(-eps, eps) tensor drawn on line 173. Returns the loss and what was
    decided (``distance``, ``skipped``: the attack was skipped, ``x_train``)."""
    model.eval()  # 163
    if nr:  # 165-169
        with torch.no_grad():
            _, out_nat = forward(model_nat, x_natural)
            _, out_rob = forward(model, x_natural)
            distance = cosine(out_nat, out_rob)
    else:  # 170-171
        distance = 0.0
    x_adv = x_natural.detach() + noise.detach()  # 173: not clamped
    skipped = replay_decision(distance, epoch, theta)  # 175
    if not skipped:
        for _ in range(perturb_steps):  # 178-185
            x_adv.requires_grad_()
            with torch.enable_grad():
                loss_attack = F.cross_entropy(forward(model, x_adv)[0], y)
            grad = torch.autograd.grad(loss_attack, [x_adv])[0]
            x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
            x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
            x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()  # 187
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()  # 189
    optimizer.zero_grad()  # 191
    with torch.no_grad():  # 193-194
        _, out_nat = forward(model_nat, x_natural)
    with torch.enable_grad():  # 195-196
        logit_rob, out_rob = forward(model, x_adv)
    loss_ce = F.cross_entropy(logit_rob, y)  # 198
    loss_rgkd = cosine(out_nat, out_rob) if rgkd else 0.0  # 199-202
    loss = loss_ce + beta * loss_rgkd  # 204
    return loss, {"distance": distance, "skipped": skipped, "x_train": x_adv, "ce": loss_ce, "rgkd": loss_rgkd}


def train_step(model: nn.Module, model_nat: nn.Module, x: Tensor, y: Tensor, optimizer, **kw) -> dict:
    """ARREST.py:214-233 for one batch; returns ``arrest_loss``'s record plus ``loss`` (detached)."""
    model.train()  # 215
    optimizer.zero_grad()  # 218
    loss, rec = arrest_loss(model, model_nat, x, y, optimizer, **kw)  # 220-230
    loss.backward()  # 232
    optimizer.step()  # 233
    return {"loss": loss.detach(), **rec}


def make_optimizer(model: nn.Module, lr: float = 0.025) -> torch.optim.Optimizer:
    """ARREST.py:376 (defaults 31, 51, 53)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def lr_for_epoch(epoch: int, base_lr: float = 0.025) -> float:
    """The lr during 1-based ``epoch``: ``adjust_learning_rate`` (106-113) applied for epochs 1..epoch."""
    lr = base_lr
    for e in range(1, epoch + 1):
        if e <= 10:
            pass
        elif e == 11:
            lr = 0.02
        elif (e + 1) % 2 == 0:
            lr /= 2
    return lr


def as_run_teacher(parent: nn.Module) -> nn.Module:
    """main() 372-375: a copy of the natural model, left in train mode (never .eval())."""
    return copy.deepcopy(parent).train()

"""Reference for TRADES: an independent transcription of yaodongyu/TRADES (at 6e8e11b) trades.py ``trades_loss``
(l_inf branch) and the training step and schedule of train_trades_cifar10.py. Written for this project from the
public code (never copied); each line cites its source.

Transcription choices (none changes what is computed):
- trades.py:31 draws the start noise in float32 from the global CPU generator (``torch.randn(shape).cuda()``);
  here it is drawn from the global generator in the input's dtype, so a float64 test and the method see the same
  noise (for float32 inputs on the CPU this is the code's draw exactly).
- ``Variable`` (trades.py:75) and ``.cuda()`` are dropped (no-ops on a current CPU tensor).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# train_trades_cifar10.py argument defaults
BATCH_SIZE = 128  # :16
EPOCHS = 76  # :20
WEIGHT_DECAY = 2e-4  # :22
LR = 0.1  # :24
MOMENTUM = 0.9  # :26
EPSILON = 0.031  # :30
NUM_STEPS = 10  # :32
STEP_SIZE = 0.007  # :34
BETA = 6.0  # :36


def trades_loss(model, x_natural, y, optimizer, step_size=0.003, epsilon=0.031, perturb_steps=10, beta=1.0):
    """trades.py:17-84, distance='l_inf'. Returns the loss (not yet backpropagated) as the code does."""
    criterion_kl = nn.KLDivLoss(reduction="sum")  # :27 size_average=False
    model.eval()  # :28
    batch_size = len(x_natural)  # :29
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape, dtype=x_natural.dtype).detach()  # :31
    for _ in range(perturb_steps):  # :33
        x_adv.requires_grad_()  # :34
        with torch.enable_grad():  # :35-37
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]  # :38
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())  # :39
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)  # :40
        x_adv = torch.clamp(x_adv, 0.0, 1.0)  # :41
    model.train()  # :73
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()  # :75
    optimizer.zero_grad()  # :77
    logits = model(x_natural)  # :79
    loss_natural = F.cross_entropy(logits, y)  # :80
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),  # :81
                                                    F.softmax(model(x_natural), dim=1))  # :82
    loss = loss_natural + beta * loss_robust  # :83
    return loss  # :84


def sgd(model: torch.nn.Module, lr: float = LR) -> torch.optim.Optimizer:
    # train_trades_cifar10.py:153
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def adjust_learning_rate(epoch: int, lr: float = LR) -> float:
    """train_trades_cifar10.py:137-147; ``epoch`` is 1-based (main() loops over range(1, epochs + 1), :155)."""
    out = lr
    if epoch >= 75:
        out = lr * 0.1
    if epoch >= 90:
        out = lr * 0.01
    if epoch >= 100:
        out = lr * 0.001
    return out


def train_step(model, optimizer, data, target, *, epsilon=EPSILON, step_size=STEP_SIZE, num_steps=NUM_STEPS,
               beta=BETA) -> torch.Tensor:
    """train_trades_cifar10.py:74-90 for one batch."""
    model.train()  # :74
    optimizer.zero_grad()  # :78
    loss = trades_loss(model=model, x_natural=data, y=target, optimizer=optimizer, step_size=step_size,
                       epsilon=epsilon, perturb_steps=num_steps, beta=beta)  # :81-88
    loss.backward()  # :89
    optimizer.step()  # :90
    return loss.detach()

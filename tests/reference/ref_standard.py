"""Reference for natural ("Standard") training: the plain supervised loop of the public adversarial-training
codes with cross-entropy in place of their robust loss. Written for this project from the public code (never
copied); each line cites its source.

- yaodongyu/TRADES train_trades_cifar10.py (at 6e8e11b): :73-90 ``train`` (model.train(), zero_grad, loss,
  backward, step), :153 ``optim.SGD(model.parameters(), lr, momentum, weight_decay)``.
- locuslab/robust_overfitting train_cifar.py (at c47a25c): :230 ``torch.optim.SGD(..., lr=0.1, momentum=0.9,
  weight_decay=5e-4)``, :248-255 the ``piecewise`` schedule, :308 evaluated at ``epoch + (i + 1) / n`` every
  iteration.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4  # robust_overfitting train_cifar.py:135 (lr-max), :230


def sgd(model: torch.nn.Module, lr: float = LR, weight_decay: float = WEIGHT_DECAY) -> torch.optim.Optimizer:
    # train_trades_cifar10.py:153 / robust_overfitting train_cifar.py:230: plain momentum SGD, coupled weight decay
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=weight_decay)


def piecewise_lr(epoch: int, i: int, n: int, epochs: int, lr_max: float = LR) -> float:
    """robust_overfitting train_cifar.py:248-255 at t = epoch + (i + 1) / n (:308); epoch and i 0-based."""
    t = epoch + (i + 1) / n
    if t / epochs < 0.5:
        return lr_max
    elif t / epochs < 0.75:
        return lr_max / 10.0
    return lr_max / 100.0


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: torch.Tensor,
               target: torch.Tensor) -> torch.Tensor:
    """One step of train_trades_cifar10.py:74-90 with the natural loss."""
    model.train()  # :74
    optimizer.zero_grad()  # :78
    loss = F.cross_entropy(model(data), target)  # :81-88, natural CE (mean) instead of trades_loss
    loss.backward()  # :89
    optimizer.step()  # :90
    return loss.detach()

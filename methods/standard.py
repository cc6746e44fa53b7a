"""Natural ("Standard") pre-training: cross-entropy on clean images. The parent of every adversarial
fine-tuning method (vAFT, AFKD, ARREST, AFD and its ablations).

Paper: AFD (Zhou et al., AAAI 2025), Table 5 row "Standard": 100 epochs. Loss: CE(f(x), y).
Public code checked: the AFD repository (changzhang777/AFD) loads a pre-trained
``checkpoint/baseline/ResNet18-Standard-CIFAR10/model-100.pth`` but does not ship the script that made it.

Fidelity notes:
- The pre-training recipe is not given by the paper or the code. We use the common CIFAR recipe: SGD lr 0.1,
  momentum 0.9, weight decay 5e-4, batch 128, crop+flip, 100 epochs (Table 5), lr x0.1 at 50% and 75%.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from bench.config import TrainConfig
from methods.base import Method, register


@register
class Standard(Method):
    name = "standard"
    parent = None
    summary = "natural training on clean images (parent of the fine-tuning methods)"
    recipe = TrainConfig(epochs=100, lr=0.1, weight_decay=5e-4, schedule="piecewise", milestones=(0.5, 0.75))

    @dataclass(frozen=True)
    class Hparams:
        pass

    def loss(self, batch, step):
        logits = self.model(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        return {"loss": loss, "acc": (logits.argmax(1) == batch.y).float().mean()}

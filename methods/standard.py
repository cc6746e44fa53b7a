"""Natural ("Standard") pre-training: cross-entropy on clean images. The parent of every adversarial
fine-tuning method (vAFT, AFKD, ARREST, AFD and its ablations).

Paper: AFD (Zhou et al., AAAI 2025), Table 5 row "Standard": 100 epochs. Loss: L = (1/B) sum_i CE(f(x_i), y_i).
Public code checked: the AFD repository (changzhang777/AFD) loads a pre-trained
``checkpoint/baseline/ResNet18-Standard-CIFAR10/model-100.pth`` but does not ship the script that made it. The
step is the plain loop of yaodongyu/TRADES train_trades_cifar10.py:73-90 (model.train(), zero_grad, mean CE,
backward, ``optim.SGD(lr, momentum=0.9, weight_decay)`` step, :153) with CE in place of trades_loss; the schedule
is locuslab/robust_overfitting train_cifar.py:248-255 (``piecewise``: lr_max until 50% of the epochs, /10 until
75%, /100 after), whose ``--attack none`` run is its natural-training baseline (SGD lr 0.1, momentum 0.9,
wd 5e-4 at :230). Checked by tests/reference/test_ref_standard.py against tests/reference/ref_standard.py
(float64, 3 steps: equal losses, parameters, BatchNorm buffers and momentum buffers).

Fidelity notes:
- Network: as the parent of the AFD code's rows (vAFT, AFKD, ARREST, AFD) the paper grids train it on the AFD code's
  ResNets (``resnet18_afd``: first convolution unpadded; ``AFD_CODE_ROWS`` in bench/grid/grids.py), elsewhere on
  the network the grid names (docs/methods.md#networks).
- The pre-training recipe is not given by the paper or the code. We use the common CIFAR recipe: SGD lr 0.1,
  momentum 0.9, weight decay 5e-4, batch 128, crop+flip, 100 epochs (Table 5), lr x0.1 at 50% and 75%.
- robust_overfitting sets the lr from ``epoch + (i + 1) / n`` (train_cifar.py:308), so the last iteration before
  each milestone already runs at the lower lr; ours changes at the milestone: 2 of 39,100 iterations (CIFAR-10,
  100 epochs, batch 128) differ, pinned by tests/reference/test_ref_standard.py.
- robust_overfitting's ``--attack none`` also forwards the clean batch once more in train mode after each update
  (train_cifar.py:339, logging), which updates BatchNorm's running statistics twice per step; the TRADES loop
  does not. Since the script behind AFD's natural model is unknown, we keep the plain TRADES loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from bench.core.config import TrainConfig
from methods.base import Method, register


@register
class Standard(Method):
    name = "standard"
    label = "Standard"
    produces = "natural"
    plan_seconds_per_epoch = 6.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
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

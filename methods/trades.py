"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, ICML 2019, "Theoretically Principled Trade-off between
Robustness and Accuracy").

Equations: the inner maximization
    x' = argmax_{||x' - x||_inf <= eps} KL(f(x) || f(x'))
by 10 sign steps of 0.007 from x + 0.001 N(0, I) (projected onto the eps-ball and [0, 1]), the model in eval mode
and f(x) fixed during the attack (``bench.attacks.pgd(loss="kl")``); then, the model in train mode,
    L = CE(f(x), y) + beta * (1/B) sum_i KL(softmax f(x_i) || softmax f(x'_i)),   beta = 6.
The KL target softmax f(x) is NOT detached: the regularizer also pulls f(x) towards f(x'), as in the code.
Public code checked: yaodongyu/TRADES trades.py (trades_loss) and train_trades_cifar10.py (76 epochs, SGD lr 0.1,
momentum 0.9, wd 2e-4, batch 128, lr x0.1 from epoch 75).

Fidelity notes:
- Schedule: the code decays when its 1-based epoch >= 75, i.e. the last TWO of 76 epochs run at lr 0.01. Our
  milestones are 0-based (the lr changes at epoch index round(m * epochs)), so the milestone is 74/76, not 75/76.
- AFD's Table 5 lists 120 epochs for TRADES; we keep the code's 76 (the grids scale the shape anyway).
- eps: the code's 0.031; we use the run's eps (8/255 = 0.0314).
- The code forwards x twice in train mode (once for CE, once for the KL target); we forward once and use the
  logits for both. Gradients are identical; only BatchNorm's running statistics see one clean batch fewer
  per step (they are updated twice by the same batch statistics in the code).
- The random start x + 0.001 N(0, 1) is clamped to [0, 1] in bench.attacks.pgd (the code does not clamp it);
  after the first projected step the two coincide.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from bench.config import TrainConfig
from methods.base import Method, register


def trades_objective(logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> dict[str, Tensor]:
    """CE(f(x), y) + beta * batch-mean KL(softmax f(x) || softmax f(x')); the target keeps its gradient."""
    ce = F.cross_entropy(logits_nat, y)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")
    return {"loss": ce + beta * kl, "ce": ce, "kl": kl}


@register
class TRADES(Method):
    name = "trades"
    parent = None
    summary = "TRADES: clean CE + beta * KL(f(x) || f(x_adv)) (Zhang et al. 2019)"
    # train_trades_cifar10.py: 76 epochs, lr 0.1 -> 0.01 for (1-based) epochs 75-76, wd 2e-4
    recipe = TrainConfig(epochs=76, lr=0.1, weight_decay=2e-4, schedule="piecewise", milestones=(74 / 76,))

    @dataclass(frozen=True)
    class Hparams:
        beta: float = 6.0  # train_trades_cifar10.py --beta (1/lambda in the paper)
        steps: int = 10  # train_trades_cifar10.py --num-steps
        step_size: float = 0.007  # train_trades_cifar10.py --step-size

    def loss(self, batch, step):
        # bench.attacks.pgd(loss="kl") is TRADES' attack: 0.001 Gaussian start, summed KL to the fixed
        # eval-mode f(x), sign steps, projection onto the ball and [0, 1].
        x_adv = self.pgd(batch.x, None, steps=self.hp.steps, step_size=self.hp.step_size, loss="kl")
        logits_nat = self.model(batch.x)
        logits_adv = self.model(x_adv)
        out = trades_objective(logits_nat, logits_adv, batch.y, self.hp.beta)
        out["adv_acc"] = (logits_adv.argmax(1) == batch.y).float().mean()
        return out

"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, ICML 2019, "Theoretically Principled Trade-off between
Robustness and Accuracy").

Equations: the inner maximization
    x' = argmax_{||x' - x||_inf <= eps} KL(f(x) || f(x'))
by 10 sign steps of 0.007 from x + 0.001 N(0, I) (each step projected onto the eps-ball, then onto [0, 1]), the
model in eval mode and the target f(x) fixed during the attack (``bench.eval.attacks.pgd(loss="kl")``); then, the
model in train mode,
    L = CE(f(x), y) + beta * (1/B) sum_i KL(softmax f(x_i) || softmax f(x'_i)),   beta = 6.
The KL target softmax f(x) is NOT detached: the regularizer also pulls f(x) towards f(x'), as in the code.

Public code checked (yaodongyu/TRADES at 6e8e11b; our own code, written from these lines):
- trades.py:17-84 ``trades_loss``, l_inf branch:
  :27 ``nn.KLDivLoss(size_average=False)`` (a SUM; the attack maximizes the summed KL);
  :28 ``model.eval()`` for the attack; :31 start ``x + 0.001 * randn`` and NO clamp before the first gradient;
  :36-37 KL(softmax f(x) || softmax f(x_adv)) with f(x) recomputed in eval mode each step (a constant: same value
  as our fixed target); :39-41 sign step, projection onto the ball, clamp to [0, 1];
  :73 ``model.train()``; :75 final clamp (a no-op after a step);
  :79-82 THREE train-mode forwards: f(x) for the CE, then f(x') and f(x) again for the KL, in that order (the
  arguments of ``criterion_kl`` at :81-82 are evaluated left to right); :81 KL sum times 1/batch_size
  (= batch mean); :83 ``loss_natural + beta * loss_robust``.
- train_trades_cifar10.py: :16 batch 128; :20 76 epochs; :22 wd 2e-4; :24 lr 0.1; :26 momentum 0.9;
  :30-36 eps 0.031, 10 steps of 0.007, beta 6.0; :59-63 RandomCrop(32, padding=4) + flip, no normalization;
  :73-90 the step (model.train(), zero_grad, trades_loss, backward, step); :137-147 lr x0.1 from (1-based)
  epoch 75, set once per epoch; :153 ``optim.SGD(lr, momentum, weight_decay)`` (no Nesterov, no dampening).
Checked by tests/reference/test_ref_trades.py against tests/reference/ref_trades.py (float64, 2+ steps: equal
losses, parameters and BatchNorm buffers).

Fidelity notes:
- Random start (fixed): trades.py:31 takes the first gradient at the UNCLAMPED x + 0.001 N(0, 1). We used to clamp
  it first (the old note said "after the first projected step the two coincide": false — a pixel at 0 with
  negative noise and a positive gradient sign lands at -|n| + 0.007 instead of 0.007, and later steps keep the
  offset until the pixel reaches the ball's edge). ``clamp_start = False`` (default) is the code's;
  ``clamp_start = True`` is the old behaviour. Measured (512 CIFAR-10 training images, only 1.8% of their pixels
  at 0 or 1; small CNN after 2 PGD-AT epochs; same noise): 13.8% of the pixels of x' differ (up to 0.063), the
  batch-mean KL at x' is 0.02116 unclamped vs 0.02121 clamped.
- BatchNorm (fixed): we used to forward x once in train mode and use those logits for both the CE and the KL
  target; gradients are identical, but the code's running statistics see the clean batch twice per step
  (x, x', x). We now forward three times in the code's order, so the evaluated (eval-mode) model matches.
  Both fixes together, measured on digits (small CNN, the recipe's shape over 4 epochs, batch 128, 300 test
  images, seed 0, same init/batches/noise): as run now clean 84.0% / PGD-20 65.3%, as before 72.7% / 46.3%
  (70 clean and 111 PGD-20 flags differ of 300). Not separated between the two fixes; one seed; digits are
  mostly background pixels at 0, where the start's clamp acts.
- Schedule: the code decays when its 1-based epoch >= 75, i.e. the last TWO of 76 epochs run at lr 0.01. Our
  milestones are fractions of the run's iterations, so the milestone is 74/76 (0-based epoch 74 = 1-based 75);
  tests/reference/test_ref_trades.py checks every epoch's lr against train_trades_cifar10.py:137-147.
- AFD's Table 5 lists 120 epochs for TRADES; we keep the code's 76 (the grids scale the shape anyway).
- eps: the code's 0.031; we use the run's eps (8/255 = 0.03137).
- The code draws the start noise in float32 from the global CPU generator; we draw it in the input's dtype on
  its device (identical on a CPU fp32 run; on a GPU, the same distribution from another stream).
- Data: crop (zero padding 4) + flip as the code (bench.data.loader); the code's torchvision loader, not ours.
- Under norm l2 (not in the paper or its code): the attack of ``bench.eval.attacks.pgd(norm="l2")``
  (docs/evaluation-threat-models.md) with the step scaled by eps / (8/255) (``Method.attack_step``); the start x +
  0.001 N(0, I) is kept, as TRADES' own L2 branch (trades.py, ``distance='l_2'``) keeps it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from bench.core.config import TrainConfig
from methods.base import COUNT, WEIGHT, Method, Range, register


def trades_objective(logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float,
                     logits_target: Tensor | None = None) -> dict[str, Tensor]:
    """CE(f(x), y) + beta * batch-mean KL(softmax f(x) || softmax f(x')); the target keeps its gradient.

    ``logits_target`` is the KL target's f(x) (trades.py:82 forwards x a second time); default ``logits_nat``.
    """
    target = logits_nat if logits_target is None else logits_target
    ce = F.cross_entropy(logits_nat, y)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(target, dim=1), reduction="batchmean")
    return {"loss": ce + beta * kl, "ce": ce, "kl": kl}


@register
class TRADES(Method):
    name = "trades"
    label = "TRADES"
    plan_seconds_per_epoch = 53.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
    parent = None
    summary = "TRADES: clean CE + beta * KL(f(x) || f(x_adv)) (Zhang et al. 2019)"
    # train_trades_cifar10.py: 76 epochs, lr 0.1 -> 0.01 for (1-based) epochs 75-76, wd 2e-4, momentum 0.9, batch 128
    recipe = TrainConfig(epochs=76, lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128, schedule="piecewise",
                         milestones=(74 / 76,))

    ranges = {"beta": WEIGHT, "steps": COUNT, "step_size": Range(0.0)}

    @dataclass(frozen=True)
    class Hparams:
        beta: float = 6.0  # train_trades_cifar10.py:36 --beta (1/lambda in the paper)
        steps: int = 10  # train_trades_cifar10.py:32 --num-steps
        step_size: float = 0.007  # train_trades_cifar10.py:34 --step-size
        clamp_start: bool = False  # trades.py:31-38: first gradient at the unclamped x + 0.001 N(0, 1)

    def loss(self, batch, step):
        # bench.eval.attacks.pgd(loss="kl") is TRADES' attack (trades.py:28-41): eval mode, 0.001 Gaussian start,
        # summed KL to the fixed eval-mode f(x), sign steps, projection onto the ball and [0, 1]; modes restored.
        x_adv = self.pgd(batch.x, None, steps=self.hp.steps, step_size=self.hp.step_size, loss="kl",
                         clamp_start=self.hp.clamp_start)
        # trades.py:79-82, in the code's order: f(x) for the CE, then f(x') and f(x) again for the KL (three
        # train-mode passes: BatchNorm's running statistics see x, x', x).
        logits_nat = self.model(batch.x)
        logits_adv = self.model(x_adv)
        logits_target = self.model(batch.x)
        out = trades_objective(logits_nat, logits_adv, batch.y, self.hp.beta, logits_target)
        out["adv_acc"] = (logits_adv.argmax(1) == batch.y).float().mean()
        return out

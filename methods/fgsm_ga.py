"""FGSM-GA: FGSM training with the GradAlign regularizer (Andriushchenko & Flammarion, NeurIPS 2020,
"Understanding and Improving Fast Adversarial Training").

Equations (model in train mode throughout, as in the code):
    g1 = grad_x CE(f(x), y)                                 (detached; also the FGSM gradient)
    delta = clip(eps * sign(g1), -eps, eps),  x + delta clamped to [0, 1]       (FGSM from a zero start)
    g2 = grad_x CE(f(x + eta), y),  eta ~ U(-eps, eps)^d     (create_graph=True: double backprop; x + eta is
                                                             NOT clamped to [0, 1], as in the code)
    L = CE(f(x + delta), y) + lambda * (1 - mean_i cos(g1_i, g2_i)),   lambda = 0.2 for eps = 8/255
where the mean runs over the examples whose g1 and g2 both have a non-zero norm.
Public code checked: tml-epfl/understanding-fast-adv-training train.py (the --attack=fgsm --attack_init=zero
branch with --grad_align_cos_lambda), utils.py (get_input_grad, get_uniform_delta, get_lr_schedule); command in
its README: --eps=8 --attack_init=zero --epochs=30 --grad_align_cos_lambda=0.2 --lr_max=0.30.

Fidelity notes:
- Mode: the code keeps the model in train mode for the FGSM gradient, the training forward and the GradAlign
  gradient (model_eval is only called around its periodic evaluation). We do the same, so BatchNorm uses batch
  statistics in all three forwards and its running statistics are updated three times per step, as in the code
  (bench.attacks' eval-mode attacks are therefore not used here).
- FGSM step: the code steps fgsm_alpha * eps = 1.25 eps from zero and clips to [-eps, eps], i.e. exactly eps * sign.
- Learning rate: the code evaluates the cyclic schedule after the step (at (i+1)/len), our loop at its start
  (lr(0) = 0): a shift of one iteration. Peak at 40% of the run: 2*epochs//5 epochs in the code (12 of 30).
- The code trains in mixed precision (apex O1, BatchNorm in fp32 for the double backprop); we train at the run's
  precision (fp32 by default).
- If every example of a batch has a zero gradient, the code's mean over an empty set is NaN; we use a zero
  regularizer for that batch instead.
- The code initialises weights with its own scheme (utils.initialize_weights); we use the project's models as built.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.config import TrainConfig
from methods.base import Method, register


def input_grad(model, x: Tensor, y: Tensor, *, create_graph: bool = False) -> Tensor:
    """grad_x of the batch-mean CE at x (in whatever mode the model is in)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, [x], create_graph=create_graph)
    return g


def grad_align_penalty(g1: Tensor, g2: Tensor) -> Tensor:
    """1 - mean cos(g1_i, g2_i) over the examples where both gradients are non-zero (0 if there are none)."""
    g1, g2 = g1.flatten(1), g2.flatten(1)
    n1, n2 = g1.norm(dim=1), g2.norm(dim=1)
    keep = (n1 != 0) & (n2 != 0)
    # Masked instead of indexed, and no `if keep.any()`: no host synchronisation inside the step. Dropped rows
    # divide by 1 (never 0/0, so no NaN reaches the gradient) and are weighted 0.
    one = torch.ones_like(n1)
    cos = ((g1 / torch.where(keep, n1, one)[:, None]) * (g2 / torch.where(keep, n2, one)[:, None])).sum(1)
    count = keep.sum()
    mean = (cos * keep).sum() / count.clamp_min(1)
    return torch.where(count > 0, 1 - mean, mean * 0)


@register
class FGSMGA(Method):
    name = "fgsm_ga"
    parent = None
    summary = "FGSM training + GradAlign regularizer (Andriushchenko & Flammarion 2020)"
    single_step = True
    # README command: 30 epochs, cyclic lr 0 -> 0.3 (at 40%) -> 0 per iteration; train.py: SGD momentum 0.9, wd 5e-4
    recipe = TrainConfig(epochs=30, lr=0.3, weight_decay=5e-4, schedule="cyclic", cyclic_peak=0.4)

    @dataclass(frozen=True)
    class Hparams:
        grad_align_lambda: float = 0.2  # README / paper Sec. 5: lambda = 0.2 for eps = 8/255 on CIFAR-10

    def loss(self, batch, step):
        x, y, eps = batch.x, batch.y, self.ctx.eps
        # FGSM from zero: its gradient at x is also GradAlign's g1 (one forward serves both, as in the code).
        g1 = input_grad(self.model, x, y).detach()
        x_adv = torch.clamp(x + eps * g1.sign(), 0.0, 1.0)
        logits = self.model(x_adv)
        ce = F.cross_entropy(logits, y)
        out = {"ce": ce, "adv_acc": (logits.argmax(1) == y).float().mean()}
        if self.hp.grad_align_lambda:
            eta = (2 * torch.rand_like(x) - 1) * eps
            g2 = input_grad(self.model, x + eta, y, create_graph=True)  # double backprop into the weights
            out["grad_align"] = grad_align_penalty(g1, g2)
            out["loss"] = ce + self.hp.grad_align_lambda * out["grad_align"]
        else:
            out["loss"] = ce
        return out

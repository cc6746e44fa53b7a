"""AFKD: adversarial fine-tuning with robustness-guided knowledge distillation (AFT + RGKD; Suzuki et al. 2023,
"Adversarial Finetuning with Latent Representation Constraint to Mitigate Accuracy-Robustness Tradeoff",
ICCV 2023), the AFKD baseline of the AFD paper.

Equation: starting from the natural model f_pre = w_pre h_pre, with the frozen natural model as teacher,
    min_theta E [ CE(f(x'), y) + lambda (1 - cos(h_pre(x), h(x'))) ],   lambda = 50,
h = the penultimate (pooled, last-hidden-layer) features, h_pre on the CLEAN x, x' = PGD-10 (step 2/255, eps 8/255,
uniform random start, model in eval mode). The cosine term is averaged over the batch. All layers are trained.
Public code checked: changzhang777/AFD ARREST.py with --RGKD (no --NR): ``ARREST()`` (attack in eval mode, loss
``loss_ce + beta * Cosine(output_nat, output_rob)`` with beta = 50 on the ``prejection`` features) and ``main()``
(20 epochs, SGD lr 0.025 momentum 0.9 wd 5e-4, batch 128, ``adjust_learning_rate``), i.e. ``AFT_RECIPE``, no EMA.

Fidelity notes:
- Teacher BatchNorm mode. ARREST.py never calls ``model_nat.eval()``, so its teacher runs in train mode: its
  features use the batch's BatchNorm statistics (and its running statistics drift, unused). AFD's tl+sl.py puts the
  same teacher in eval mode. Default: eval mode (a frozen teacher, as the paper describes it);
  ``teacher_batch_stats=True`` reproduces ARREST.py.
- The code's PGD starts from x + U(-eps, eps) without clamping to [0, 1] before the first step; ours clamps the
  start (bench.attacks.pgd). Every later iterate is clamped in both.
- Suzuki et al.'s own code is not public; the AFD authors' re-implementation is what the AFD tables use, so we
  follow it (lr 0.025, the AFT schedule; see methods/vaft.py for the text's 0.0025 typo).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.models import feature_extractor_and_head
from methods.base import Method, angular_distance, register
from methods.vaft import AFT_RECIPE


@register
class AFKD(Method):
    name = "afkd"
    parent = "natural"
    summary = "adversarial fine-tuning + robustness-guided KD to the natural features (Suzuki et al. 2023)"
    recipe = AFT_RECIPE

    @dataclass(frozen=True)
    class Hparams:
        rgkd_weight: float = 50.0  # ARREST.py --beta (default 50)
        steps: int = 10  # ARREST.py --num-steps
        step_size: float = 2 / 255  # ARREST.py --step-size
        teacher_batch_stats: bool = False  # True: teacher in train mode, as ARREST.py (never calls .eval())

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        self.feats, self.w = feature_extractor_and_head(model)
        # The teacher stays outside self.net: frozen, never checkpointed, never averaged.
        self._teacher = self.frozen_parent()
        self._teacher_feats, _ = feature_extractor_and_head(self._teacher)

    @torch.no_grad()
    def teacher_features(self, x: Tensor) -> Tensor:
        self._teacher.train(self.hp.teacher_batch_stats)
        return self._teacher_feats(x).float()

    def rgkd_losses(self, x: Tensor, x_train: Tensor, y: Tensor, target: Tensor | None = None) -> dict[str, Tensor]:
        """CE on the training input x_train (x' or a noisy x) + the RGKD distance to the teacher on clean x.

        ``target``: the teacher's features of x if the caller already has them (ARREST), so they are computed once."""
        h = self.feats(x_train)
        logits = self.w(h)
        ce = F.cross_entropy(logits, y)
        rgkd = angular_distance(h, self.teacher_features(x) if target is None else target)
        return {"loss": ce + self.hp.rgkd_weight * rgkd, "ce": ce, "rgkd": rgkd,
                "adv_acc": (logits.argmax(1) == y).float().mean()}

    def loss(self, batch, step):
        x_adv = self.pgd(batch.x, batch.y, steps=self.hp.steps, step_size=self.hp.step_size)
        return self.rgkd_losses(batch.x, x_adv, batch.y)

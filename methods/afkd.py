"""AFKD: adversarial fine-tuning with robustness-guided knowledge distillation (AFT + RGKD; Suzuki et al. 2023,
"Adversarial Finetuning with Latent Representation Constraint to Mitigate Accuracy-Robustness Tradeoff",
ICCV 2023), the AFKD baseline of the AFD paper.

Equation: starting from the natural model f_pre = w_pre h_pre, with the frozen natural model as teacher,
    min_theta E [ CE(f(x'), y) + lambda (1 - cos(h_pre(x), h(x'))) ],   lambda = 50,
h = the penultimate (pooled, last-hidden-layer) features, h_pre on the CLEAN x, x' = PGD-10 (step 2/255, eps 8/255,
uniform random start, model in eval mode). The cosine term is averaged over the batch. All layers are trained.

Public code checked: changzhang777/AFD ARREST.py (HEAD c94cb6c) with --RGKD, no --NR. As run, and as here: vAFT's
recipe and attack (methods/vaft.py), and the loss ``loss_ce + beta * Cosine(output_nat, output_rob)`` (198-204),
beta = 50 (44), ``Cosine`` = 1 - batch-mean cosine similarity of the 2-D ``prejection`` features (140-146;
models/resnet.py 100-114: the pooled features the linear layer reads), teacher features of CLEAN x under no_grad
(193-194), student features and logits of x' in train mode (187, 195-196). The teacher, ``model_nat``, is built and
loaded in main() (372-373) and never put in eval mode: its BatchNorm normalises with the batch's statistics.
Checked step by step against a transcription in float64 (tests/reference/test_ref_aft.py).

Fidelity notes (numbers from the script and setting of methods/vaft.py's notes):
- Network: the AFD code builds this row's ResNets (changzhang777/AFD models/resnet.py) with an unpadded first
  convolution, so the paper grids run it, and its natural parent, on ``resnet18_afd`` / ``resnet50_afd``
  (bench/grid/grids.py ``AFD_CODE_ROWS``); the difference from the padded ``resnet18`` is measured in
  docs/methods.md#networks.
- Teacher BatchNorm mode (as run, ``teacher_batch_stats=True``): the teacher's features use the batch's
  statistics. ``teacher_batch_stats=False`` is the frozen eval-mode teacher the paper describes (and AFD's
  tl+sl.py uses). At the first step (student = parent, x' = PGD-10) the two teachers' features of a batch differ
  by 1 - cos = 0.0059 (0.0013-0.0114 over 5 batches) and RGKD moves from 0.1760 to 0.1731 (50 x the change:
  -0.14 on average, -0.42 to +0.12, where 50 x RGKD is about 8.7); after 10 as-run iterations,
  50 |RGKD as run - RGKD eval| = 0.094 on average over 5 batches (RGKD 0.11-0.15).
- Teacher running statistics: ARREST.py's train-mode teacher also updates them on every forward (once per step,
  even without flags, twice with --NR): over one epoch by 1.2-2.9% (mean relative change of the running
  variances, per layer). It never reads them (the teacher is never evaluated or saved). Ours does not track them
  (``stop_tracking_running_stats``): the same features, and the teacher stays exactly the parent, also across a
  resume.
- The attack's unclamped start and its mean-vs-sum loss: see methods/vaft.py.
- Suzuki et al.'s own code is not public and their lambda is taken from the code's default; the AFD authors'
  re-implementation is what the AFD tables use, so we follow it (lr 0.025, the AFT schedule).
- Under norm l2 (not in the paper or its code): the attack of ``bench.eval.attacks.pgd(norm="l2")``
  (docs/evaluation-threat-models.md) with the step scaled by eps / (8/255) (``Method.attack_step``), through
  ``aft_pgd``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.architectures import feature_extractor_and_head
from methods.base import COUNT, WEIGHT, Method, angular_distance, register
from methods.vaft import AFT_RECIPE, aft_pgd


def upcast(t: Tensor) -> Tensor:
    """Half-precision features (bf16 autocast) to float32 for the cosine; float32/float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def stop_tracking_running_stats(model: nn.Module) -> None:
    """Make train mode normalise with batch statistics WITHOUT updating the running statistics.

    ARREST.py's train-mode teacher also updates its running statistics on each forward (twice per ARREST step,
    lines 167 and 194), but never reads them: ``model_nat`` is never put in eval mode, evaluated or saved
    (ARREST.py:368-398). Not tracking them keeps our teacher exactly the parent (also after a resume) at no cost
    to the features, which torch computes from the batch either way (``_BatchNorm.forward`` passes no running
    buffers when ``track_running_stats`` is False in train mode; in eval mode it still uses them)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False


@register
class AFKD(Method):
    name = "afkd"
    label = "AFKD"
    plan_seconds_per_epoch = 40.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
    parent = "natural"
    summary = "adversarial fine-tuning + robustness-guided KD to the natural features (Suzuki et al. 2023)"
    recipe = AFT_RECIPE
    ranges = {"rgkd_weight": WEIGHT, "steps": COUNT, "step_size": WEIGHT}

    @dataclass(frozen=True)
    class Hparams:
        rgkd_weight: float = 50.0  # ARREST.py --beta (default 50)
        steps: int = 10  # ARREST.py --num-steps
        step_size: float = 2 / 255  # ARREST.py --step-size
        # As run: ARREST.py never calls model_nat.eval(), so the teacher normalises with the batch's statistics.
        # False: the frozen eval-mode teacher the paper describes (AFD's tl+sl.py puts it in eval mode).
        teacher_batch_stats: bool = True
        clamp_start: bool = False  # as run: ARREST.py:173-182 takes the first gradient at the unclamped start

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        self.feats, self.w = feature_extractor_and_head(model)
        # The teacher stays outside self.net: frozen, never checkpointed, never averaged.
        self._teacher = self.frozen_parent()
        if hp.teacher_batch_stats:
            stop_tracking_running_stats(self._teacher)
        self._teacher.train(hp.teacher_batch_stats)
        self._teacher_feats, _ = feature_extractor_and_head(self._teacher)

    @torch.no_grad()
    def teacher_features(self, x: Tensor) -> Tensor:
        """h_pre(x): the teacher's features of clean x, with batch statistics if ``teacher_batch_stats`` (as
        ARREST.py:167 and 194 compute them), else with its running statistics."""
        self._teacher.train(self.hp.teacher_batch_stats)
        return upcast(self._teacher_feats(x))

    def rgkd_losses(self, x: Tensor, x_train: Tensor, y: Tensor, target: Tensor | None = None) -> dict[str, Tensor]:
        """CE on the training input x_train (x' or a noisy x) + the RGKD distance to the teacher on clean x, as
        ARREST.py:187-204 (student in train mode; CE batch mean; 1 - batch-mean cosine of the ``prejection``
        features, teacher first).

        ``target``: the teacher's features of x if the caller already has them (ARREST), so they are computed once."""
        h = self.feats(x_train)
        logits = self.w(h)
        ce = F.cross_entropy(logits, y)
        rgkd = angular_distance(self.teacher_features(x) if target is None else target, upcast(h))
        return {"loss": ce + self.hp.rgkd_weight * rgkd, "ce": ce, "rgkd": rgkd,
                "adv_acc": (logits.argmax(1) == y).float().mean()}

    def loss(self, batch, step):
        return self.rgkd_losses(batch.x, aft_pgd(self, batch.x, batch.y), batch.y)

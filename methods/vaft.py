"""vAFT: vanilla adversarial fine-tuning of a naturally pre-trained model (Jeddi, Shafiee & Wong 2020,
"A Simple Fine-tuning Is All You Need: Towards Robust Deep Learning Via Adversarial Fine-tuning").

Equation: starting from the natural model, min_theta E CE(f(x'), y) with x' = PGD-10 (step 2/255, uniform
random start, eval-mode model) — PGD-AT for a short fine-tuning schedule.

Public code checked: changzhang777/AFD ARREST.py (HEAD c94cb6c; the file is unchanged since bb84005) run without
--NR/--RGKD, the re-implementation the AFD paper's vAFT numbers come from. As run, and as here:
- recipe (main() 368-382, defaults 27-53): 20 epochs, batch 128, SGD lr 0.025 momentum 0.9 wd 5e-4 (376), the AFT
  schedule of ``adjust_learning_rate`` (106-113: 0.025 for epochs 1-10, 0.02 for 11-12, halved every two epochs),
  crop (pad 4) + flip (89-93), shuffled, last partial batch kept, no EMA;
- step (``ARREST()`` 152-205, ``train_align_loss`` 214-233): student in eval mode (163), x' = x + U(-eps, eps)
  NOT clamped (173), 10 steps (37) of x' += 2/255 sign(grad CE) (39, 178-183) each projected onto the eps-ball
  and [0, 1] (184-185); student back in train mode (187); loss = batch-mean CE(f(x'), y) (198-204); one SGD step.
``aft_pgd`` below is that attack, shared with AFKD and ARREST (tests/reference/test_ref_aft.py checks all three
against a transcription of ARREST.py, step by step, in float64).

Fidelity notes (measured with scripts/measure_aft.py on the CPU grid's setting: small_cnn, its 10,000 CIFAR-10
training images, batches of 128, a natural parent trained 4 epochs, 50.7% clean):
- Network: the AFD code builds this row's ResNets (changzhang777/AFD models/resnet.py) with an unpadded first
  convolution, so the paper grids run it, and its natural parent, on ``resnet18_afd`` / ``resnet50_afd``
  (bench/grid/grids.py ``AFD_CODE_ROWS``); the difference from the padded ``resnet18`` is measured in
  docs/methods.md#networks.
- The AAAI text says lr 0.0025; ARREST.py (53) and every run name say 0.025: we take 0.025 (a typo in the text).
- Jeddi et al.'s own "slow start, fast decay" numbers were not found; we follow ARREST.py's schedule, written as a
  fraction of the run's iterations (bench/core/schedules.py): exactly the code's lr per epoch at 20 epochs.
- Attack start (as run, ``clamp_start=False``): the first gradient is taken at the unclamped x + U(-eps, eps).
  8.1% of the start's pixels lie outside [0, 1] (7.8-8.4% over 5 batches) and 20.1% of the pixels of x'
  (19.6-20.6%) differ from a start clamped first (``clamp_start=True``, the previous default here).
- Attack loss: ARREST.py ascends the batch-MEAN cross-entropy (181), and so do we (bench.eval.attacks.pgd's default
  is the sum). Only the gradient's sign is used: with batches of 128 (and the last of 16) the mean is the sum
  times a power of two, exact in floating point, and 0 pixels of x' differ (5 batches); with batches of 100 (not a
  power of two; CIFAR's last batch has 80) 0.025% of the pixels differ (0, 0.076%, 0 over 3 batches).
- ARREST.py also runs its natural model on x without --RGKD (193-194) and discards the result: nothing to do.
- The random start is drawn on the CPU in float32 and moved to the GPU (173); ours from the run's RNG on its
  device: same distribution, other random numbers (unavoidable).
- Under norm l2 (not in the paper or its code): the attack of ``bench.eval.attacks.pgd(norm="l2")``
  (docs/evaluation-threat-models.md) with the step scaled by eps / (8/255) (``Method.attack_step``), through
  ``aft_pgd``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from bench.core.config import TrainConfig
from methods.base import COUNT, WEIGHT, Method, register

# The fine-tuning recipe shared by vAFT, AFKD, ARREST and AFD (AFD/ARREST code).
AFT_RECIPE = TrainConfig(epochs=20, lr=0.025, weight_decay=5e-4, schedule="aft")


def aft_pgd(method: Method, x: Tensor, y: Tensor) -> Tensor:
    """The training attack of vAFT, AFKD and ARREST as ARREST.py:163-189 runs it: PGD-``steps`` of sign step
    ``step_size`` on the batch-mean cross-entropy, student in eval mode, from x + U(-eps, eps) (unclamped unless
    ``clamp_start``), each iterate projected onto the eps-ball and [0, 1]."""
    hp = method.hp
    return method.pgd(x, y, steps=hp.steps, step_size=hp.step_size, clamp_start=hp.clamp_start, loss=_mean_ce)


def _mean_ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)  # ARREST.py:181 (reduction "mean")


@register
class VAFT(Method):
    name = "vaft"
    label = "vAFT"
    plan_seconds_per_epoch = 37.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
    parent = "natural"
    summary = "vanilla adversarial fine-tuning: PGD-10 CE from the natural model (Jeddi et al. 2020)"
    recipe = AFT_RECIPE
    ranges = {"steps": COUNT, "step_size": WEIGHT}

    @dataclass(frozen=True)
    class Hparams:
        steps: int = 10  # ARREST.py --num-steps
        step_size: float = 2 / 255  # ARREST.py --step-size
        clamp_start: bool = False  # as run: ARREST.py:173-182 takes the first gradient at the unclamped start

    def loss(self, batch, step):
        x_adv = aft_pgd(self, batch.x, batch.y)
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, batch.y)
        return {"loss": loss, "adv_acc": (logits.argmax(1) == batch.y).float().mean()}

"""FGSM-GA: FGSM training with the GradAlign regularizer (Andriushchenko & Flammarion, NeurIPS 2020,
"Understanding and Improving Fast Adversarial Training").

Equations (model in train mode throughout, as in the code):
    g1 = grad_x CE(f(clamp(x + 0, 0, 1)), y)                 (detached; also the FGSM gradient; see saturated pixels)
    delta = clip(1.25 eps * sign(g1), -eps, eps),  x + delta clamped to [0, 1]    (FGSM from a zero start)
    g2 = grad_x CE(f(x + eta), y),  eta ~ U(-eps, eps)^d     (create_graph=True: double backprop; x + eta is
                                                             NOT clamped to [0, 1], as in the code)
    L = CE(f(x + delta), y) + lambda * (1 - mean_i cos(g1_i, g2_i)),   lambda = 0.2 for eps = 8/255
where the mean runs over the examples whose g1 and g2 both have a non-zero norm.

Reference that defines what we run: tml-epfl/understanding-fast-adv-training (at ceed494) train.py with its
README's command (--attack=fgsm --eps=8 --attack_init=zero --epochs=30 --grad_align_cos_lambda=0.2 --lr_max=0.30
--half_prec), our own code written from these lines:
- :89-91 PreActResNet18 re-initialized by utils.initialize_weights (utils.py:317-330), model.train(); :94 SGD
  momentum 0.9 over all parameters, wd 5e-4 (:39); no Nesterov.
- :111 + utils.py:333-335 cyclic lr np.interp(t, [0, 2*epochs//5, epochs], [0, lr_max, 0]); :127-128 set every
  iteration at t = epoch - 1 + (i + 1) / n (1-based epochs: :117-125 run an "epoch 0" of one iteration without an
  optimizer step, :204).
- :141-170 FGSM from zero: :152 forward of clamp(X + delta, 0, 1) (utils.clamp = torch.max(torch.min(.)),
  utils.py:20-31); :160-162 gradient w.r.t. delta, detached; :164-169 1.25 eps sign step clipped to [-eps, eps];
  :170 box. :186-189 train-mode forward of X + delta, mean CE.
- :191-200 GradAlign: :193 utils.get_input_grad (utils.py:70-91) at X + U(-eps, eps) (uniform_, utils.py:147-151),
  unclamped, create_graph=True; :194-195 samples with a zero-norm g1 or g2 dropped; :196-199 cosine; :200
  lambda (1 - mean cos). :202-207 loss + reg, zero_grad, backward, step.
Checked by tests/reference/test_ref_fgsm_ga.py against tests/reference/ref_fgsm_ga.py (float64, augmented batches,
identical uniform draws; five iterations across the lr triangle incl. its last one, a black image dropped from
the cosine: equal CE, GradAlign, loss, parameters, BatchNorm buffers and momentum buffers; and the initial weights).

Fidelity notes (measured on 1,000 CIFAR-10 (JPEG copy) training images, batch 128, crop (zero pad 4) + flip, as
bench's Loader makes them; "trained small CNN" = the small CNN after 2 passes of FGSM-GA as run):
- Saturated pixels (fixed): the FGSM gradient is taken through utils.clamp at delta = 0, where every pixel exactly
  at 0 or 1 TIES with the bound; the code's torch (Dockerfile: torch 1.4.0; any torch <= 1.9) gives such a pixel
  NO gradient (derivatives.yaml max/min: ties go to the other argument), so FGSM leaves it unperturbed and
  GradAlign's g1 is zero there. ``saturated_grad="zero"`` (default, as run); "half" is the same code under torch
  >= 1.10 (ties split: same FGSM step as "full", g1 halved on the bounds); "full" = no clamp (what we used to do).
  14.8% of an augmented batch's pixels are on a bound (14.1% at 0, mostly padding). Versus as run, "full"/"half"
  change x_adv at 7.1% of the pixels; on the trained small CNN the CE moves by +0.2%, GradAlign's 1 - cos (0.065
  as run) by -41% ("full") / -33% ("half"), and the weight gradient of the loss by 7.1% / 6.5% of its norm
  (preact_resnet18 at the code's init: x_adv 7.6%, CE +1.6%, GradAlign -1.6% / -1.1%, weight gradient 66%).
  A sample whose pixels are all on the bounds (a black image) has g1 = 0 and is dropped from the cosine.
- Learning rate (fixed): the code evaluates the schedule at (i + 1) / n; train_step now sets the lr of iteration i
  at position i + 1. The loop's lr(i) was one iteration early: with N = 11,700 CIFAR-10 iterations, lr_max / (0.4
  N) = 6.4e-5 below the code's on the way up and lr_max / (0.6 N) = 4.3e-5 above it on the way down (at most
  0.02% of the peak); the first step 0 instead of 6.4e-5, the last 4.3e-5 instead of 0. Peak at 40% of the iterations: 2 * epochs // 5 epochs in the code, the same for multiples of 5 epochs
  (12 of 30); other counts differ (3 epochs: the code peaks after 1 epoch, 33%; we at 40%).
- Weight init (fixed): train.py:90 re-initializes the model: conv weights N(0, sqrt(2 / (k^2 out_channels))),
  linear N(0, sqrt(2 / in_features)), biases 0, BatchNorm 1/0. ``init="code"`` (default) does it at construction
  (CPU generator seeded with the run's seed); ``init="model"`` keeps the project's model as built. The difference
  in scale: preact_resnet18's conv weights std 0.0241 (torch default) vs 0.0589 (the code's) in layer1, 0.0085 vs
  0.0208 in layer4, the linear layer 0.0253 vs 0.0625: x2.4 throughout.
- Mode: train mode for the FGSM gradient, the training forward and the GradAlign gradient (model_eval is only
  called around the periodic evaluation, :225-248); BatchNorm's running statistics are updated three times per
  step, as in the code. The periodic evaluation's attacks accumulate into the weights' .grad, which :205 zeroes
  before the next backward: no effect.
- FGSM step: 1.25 eps from zero clipped to [-eps, eps] is exactly eps * sign (0 where the gradient is 0).
- Epoch 0 (not run): one iteration at init without an optimizer step (:124-125, :204); it moves only BatchNorm's
  running statistics (3 train-mode forwards of one batch, whose weight in the final statistics is 0.9^35,100) and
  the RNG.
- Last partial batch: the code drops it (data.py:39-40, drop_last=True: 390 iterations per CIFAR-10 epoch); so do
  we (``drop_last = True``, honoured by the loop's loader). Keeping it would add 30 short iterations over 30 epochs
  (+0.26% optimizer steps).
- Precision: the README command trains with --half_prec, apex O1 (fp32 weights, fp16 ops, batch_norm registered
  as a float function for the double backprop, dynamic loss scale; :102-105); we train at the run's precision
  (fp32 by default). Proxy (CPU autocast to fp16 vs fp32, trained small CNN, 4 batches): CE 1.8e-5 and GradAlign
  3.1e-3 relative; the weight gradient of the double backprop overflowed in this proxy (apex skips such steps by
  lowering its loss scale), so no number for it.
- Empty cosine: if no sample is kept, the code's mean over nothing is NaN; we use a zero regularizer. It needs a
  batch of only black/white images: never on CIFAR-10.
- Model: the code's own PreActResNet18 (models.py:89-198: identity normalization, no BatchNorm-ReLU before the
  pooling, projection shortcut from the un-normalized input); the grids train the project's models. Not measured
  (a property of the model, not of FGSM-GA).
- GradAlign's uniform draw: uniform_(-eps, eps) (= -eps + 2 eps u) there, (2u - 1) eps here: the same u from the
  global RNG, equal to rounding.
- Under norm l2: refused (``norms``): FGSM's sign step and GradAlign's U(-eps, eps) noise are an L-inf attack by
  construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core import schedules
from bench.core.config import TrainConfig
from methods.base import WEIGHT, Method, MethodError, OneOf, register


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


SATURATED_GRAD = {"zero": 0.0, "half": 0.5, "full": 1.0}


def fgsm_grad(model, x: Tensor, y: Tensor, saturated_grad: str = "zero") -> Tensor:
    """grad_x CE at x taken, as train.py:152-160 takes it, through clamp(x + delta, 0, 1) at delta = 0, written
    utils.clamp = torch.max(torch.min(., 1), 0) (utils.py:20-31). Where a pixel sits exactly on the bound the
    element-wise min/max tie, and what reaches the pixel is torch's choice at a tie: nothing in torch <= 1.9
    (the code's Dockerfile pins torch 1.4.0: the whole gradient goes to the bound), half in torch >= 1.10.
    ``saturated_grad`` = "zero" (as run), "half" (the same code under today's torch) or "full" (no clamp in the
    gradient: the paper's equations). Inputs are images in [0, 1]."""
    g = input_grad(model, x, y)
    factor = SATURATED_GRAD[saturated_grad]
    if factor == 1.0:
        return g
    return torch.where((x > 0) & (x < 1), g, g * factor)


@torch.no_grad()
def code_init(model: nn.Module, generator: torch.Generator) -> None:
    """utils.py:317-330 (applied at train.py:90): every Conv2d weight ~ N(0, sqrt(2 / (k_h k_w out_channels))),
    every Linear weight ~ N(0, sqrt(2 / in_features)), their biases 0, BatchNorm2d weight 1 and bias 0 (running
    statistics untouched). Drawn on the CPU from ``generator`` (device-independent), in module order."""
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            std = math.sqrt(2.0 / (mod.kernel_size[0] * mod.kernel_size[1] * mod.out_channels))
        elif isinstance(mod, nn.Linear):
            std = math.sqrt(2.0 / mod.in_features)
        elif isinstance(mod, nn.BatchNorm2d):
            if mod.affine:
                mod.weight.fill_(1)
                mod.bias.zero_()
            continue
        else:
            continue
        mod.weight.copy_(torch.empty(mod.weight.shape, dtype=mod.weight.dtype).normal_(0, std, generator=generator))
        if mod.bias is not None:
            mod.bias.zero_()


@register
class FGSMGA(Method):
    name = "fgsm_ga"
    label = "FGSM-GA"
    plan_seconds_per_epoch = 68.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
    parent = None
    summary = "FGSM training + GradAlign regularizer (Andriushchenko & Flammarion 2020)"
    single_step = True
    # FGSM (Goodfellow et al. 2015) from zero, eps * sign(g1) clipped to [-eps, eps] (Andriushchenko & Flammarion
    # 2020; train.py:164-169), and GradAlign's noise drawn U(-eps, eps) per pixel: L-inf by construction.
    norms = ("linf",)
    norm_reason = "trains with sign (FGSM) steps and U(-eps, eps) noise per pixel, an L-inf attack by construction"
    drop_last = True  # data.py:39-40 (the code drops the last partial batch)
    # README command: 30 epochs, cyclic lr 0 -> 0.3 (at 40%) -> 0 per iteration; train.py:94 SGD momentum 0.9,
    # :39 wd 5e-4
    recipe = TrainConfig(epochs=30, lr=0.3, weight_decay=5e-4, schedule="cyclic", cyclic_peak=0.4)

    ranges = {"grad_align_lambda": WEIGHT, "saturated_grad": OneOf(tuple(SATURATED_GRAD)),
              "init": OneOf(("code", "model"))}

    @dataclass(frozen=True)
    class Hparams:
        grad_align_lambda: float = 0.2  # README / paper Sec. 5: lambda = 0.2 for eps = 8/255 on CIFAR-10
        # gradient that reaches a pixel at exactly 0 or 1 through the FGSM clamp (see fgsm_grad): "zero" as run
        # (torch 1.4), "half" (the code under torch >= 1.10), "full" (the equations)
        saturated_grad: str = "zero"
        # "code": train.py:90 re-initializes the model with utils.initialize_weights (utils.py:317-330, see
        # code_init); "model": keep the project's model as built
        init: str = "code"

    @classmethod
    def batchnorm_sync_problem(cls, hp):
        if not getattr(hp, "grad_align_lambda", 0):
            return None
        # GradAlign differentiates an input gradient (create_graph=True); SyncBatchNorm's double backward is not
        # implemented ("derivative for batch_norm_backward_elemt", pytorch issue 61222)
        return "GradAlign's double backward is not implemented for SyncBatchNorm"

    @classmethod
    def compile_problem(cls, hp):
        if not getattr(hp, "grad_align_lambda", 0):
            return None
        return ("fgsm_ga's GradAlign penalty backpropagates through an input gradient (create_graph=True), which "
                "fails compiled ('a leaf Variable that requires grad is being used in an in-place operation')")

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        # saturated_grad and init are checked against `ranges` by Method.__init__
        if ctx.train_cfg is None:
            raise MethodError("fgsm_ga needs the run's TrainConfig in its Context (the per-iteration lr)")
        if hp.init == "code":
            code_init(self.model, torch.Generator().manual_seed(ctx.seed))

    def train_step(self, batch, step):
        # train.py:127-128: the lr of iteration i of epoch e is the schedule at e + (i + 1) / n, i.e. one
        # iteration AFTER the position the loop sets it for (the loop's lr(0) = 0; the code's last step has 0).
        schedules.apply(self.ctx.train_cfg, self.optimizers, step.epoch, step.step + 1, self.ctx.steps_per_epoch)
        return super().train_step(batch, step)

    def loss(self, batch, step):
        x, y, eps = batch.x, batch.y, self.ctx.eps
        # FGSM from zero: its gradient at x is also GradAlign's g1 (one forward serves both, as in the code).
        g1 = fgsm_grad(self.model, x, y, self.hp.saturated_grad).detach()
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

"""Free-AT: adversarial training for free (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor &
Goldstein, NeurIPS 2019, "Adversarial Training for Free!").

Update: each minibatch is replayed m = 8 times. Each replay is ONE forward/backward of CE(f(x + delta), y) (train
mode) that yields both gradients:
    theta <- SGD step with grad_theta                                  (one optimizer step per replay)
    delta <- clip(delta + eps * sign(grad_delta), -eps, eps),  then clipped so that x + delta is in [0, 1]
delta is never reset: it carries over from replay to replay AND from minibatch to minibatch (it has the shape of
a full batch; a smaller last batch uses its first B rows). It is method state, checkpointed with the run.
One epoch of the loop is one pass over the data (m optimizer steps per batch), so the recipe's 10 epochs are the
"epochs divided by m" of the paper (AFD Table 5: 10 epochs).

Reference that defines what we run: locuslab/fast_adversarial CIFAR10/train_free.py (at 54f7287; Wong et al.'s
PyTorch Free-AT), our own code written from these lines:
- :23-30 defaults: 10 epochs, batch 128, lr-max 0.04 (cyclic), wd 5e-4, momentum 0.9, eps 8, 8 replays;
  :69 SGD over all parameters (BatchNorm included) with that wd.
- :76-77 delta = zeros(batch_size, 3, 32, 32), created once (never reset).
- :79-82 CyclicLR(base_lr 0, max_lr 0.04, step_size_up = step_size_down = lr_steps / 2), lr_steps = epochs x
  batches x replays, every other argument torch's default: cycle_momentum=True, base_momentum 0.8, max_momentum
  0.9 (which OVERRIDES --momentum at construction). :107 scheduler.step() after :105 opt.step(): replay k of the run
  (0-based) uses CyclicLR at last_epoch = k: lr 0 and momentum 0.9 at the first replay, 0.04 and 0.8 at the peak.
- :96-107 per replay: :97 forward of X + delta[:B] as the previous replay left delta; :98 mean CE; :99-101 one
  backward; :103 delta = clamp(delta + eps sign(grad), -eps, eps) (rows past B: zero gradient, unchanged); :104
  delta[:B] = clamp(delta[:B], 0 - X, 1 - X) (utils.py:18-19, on .data: no gradient through it); :105 opt.step().
- :108-109 the logged loss/accuracy are the last replay's.
Checked by tests/reference/test_ref_free_at.py against tests/reference/ref_free_at.py (float64, 18 replays over 2
passes of 3 batches, the whole lr/momentum triangle: equal logits, lr and momentum at every replay; equal
parameters, BatchNorm buffers, momentum buffers and perturbation after every batch).
Also read: ashafahi/free_adv_train (the authors' TensorFlow code): config.py:15-23, free_train.py:45-64,
free_model.py:46-51.

Fidelity notes (measured on 1,000 CIFAR-10 (JPEG copy) training images, batch 128, crop+flip, as bench's Loader
makes them):
- Recipe: Wong's PyTorch version, the one whose epoch count matches AFD's Table 5. The authors' TF code runs
  80,000 replay steps (~25.6 passes at batch 128), lr 0.1 -> 0.01 at 40k -> 0.001 at 60k steps (config.py:15, 20),
  wd 2e-4 (:21), and clips the INPUT instead of boxing delta (free_model.py:50-51; delta only clipped to the
  eps-ball, free_train.py:56-59). A grid can ask for that schedule as an override (epochs=26, lr=0.1,
  weight_decay=2e-4, schedule="piecewise", milestones=(0.5, 0.75)): our milestones are fractions of the replay
  steps, so they fall where TF's do; the input clip is not implemented.
- Per-replay lr AND momentum (fixed: momentum used to stay at 0.9): train_step sets both at every replay from the
  pure schedule (bench.core.schedules, cycle_momentum=True in the recipe). Measured against torch's CyclicLR built and
  stepped as above over the full CIFAR-10 run (10 x 391 x 8 = 31,280 replays): max |lr difference| 1.4e-17, max
  |momentum difference| 1.1e-16. CyclicLR's top momentum is 0.9 whatever --momentum says; ours is
  train.momentum (0.9 unless a grid changes it).
- First replay of a batch (fixed: we used to re-box the carried delta for the new images first): as run, x_new +
  delta is forwarded with delta boxed for the PREVIOUS images (``rebox_carried=False``). Measured over 23 first
  replays of a small-CNN Free-AT run: 5.0% of those inputs' pixels are outside [0, 1] (by 7.3/255 on average, at
  most 8/255), i.e. 0.62% of all training pixels; versus re-boxing, that replay's weight gradient differs by 5.2%
  in norm (cosine 0.9985) and 9.0% of the updated perturbation's entries differ. ``rebox_carried=True`` keeps
  every training input a valid image.
- Precision: the code trains with apex O2 (:33-38, :70-73): fp16 model with fp32 BatchNorm, NO fp32 master
  weights (--master-weights is off by default), static loss scale 1.0; delta stays fp32. We train at the run's
  precision (fp32 by default) and keep delta in the input's dtype. Proxy at init (preact_resnet18, one batch):
  20.7% of the weights' SGD updates at lr 0.02 vanish when added to the fp16 weight (lost without master
  weights); 12.5% of the input-gradient entries are fp16 subnormals and 0.01% flush to zero (only their sign is
  used).
- Normalization: the code normalizes inputs by the CIFAR-10 mean/std and divides eps by std per channel (utils.py
  :8-15, train_free.py:64); in pixel space the sign steps, the ball and the box are the same. The project's models
  take [0, 1] inputs without normalization (methods.md); model and init are the grid's (the code: its
  PreActResNet18, :66, torch's default init). Not measured (a property of the models, not of Free-AT).
- The perturbation gradient is that of the batch-mean CE; only its sign is used, so sum or mean give the same
  step (TF's total loss adds weight decay, whose delta-gradient is zero).
- Data: the code's DataLoader keeps the short last batch (no drop_last), as our loader does.
- Under norm l2: refused (``norms``): the replay's sign step and per-pixel clip are an L-inf attack by construction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core import schedules
from bench.core.config import TrainConfig
from bench.core.distributed import merge_latest
from methods.base import COUNT, Method, MethodError, register


@register
class FreeAT(Method):
    name = "free_at"
    label = "Free-AT"
    plan_seconds_per_epoch = 119.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
    parent = None
    summary = "Free-AT: m minibatch replays with a persistent FGSM perturbation (Shafahi et al. 2019)"
    single_step = True
    # The replay update is delta <- clip(delta + eps sign(grad), -eps, eps) (Shafahi et al. 2019, Algorithm 1;
    # train_free.py:103): a sign step and a per-pixel clip, the L-inf ball by construction.
    norms = ("linf",)
    norm_reason = "trains with sign (FGSM) steps clipped per pixel, an L-inf attack by construction"
    # train_free.py:23-30: --epochs 10 (passes; x8 replays), cyclic 0 -> 0.04 -> 0 per replay, wd 5e-4, momentum
    # 0.9; :81-82 CyclicLR's default cycle_momentum=True (momentum 0.9 -> 0.8 at the lr peak -> 0.9)
    recipe = TrainConfig(epochs=10, lr=0.04, weight_decay=5e-4, schedule="cyclic", cyclic_peak=0.5,
                         cycle_momentum=True)

    ranges = {"replays": COUNT}

    @dataclass(frozen=True)
    class Hparams:
        replays: int = 8  # m: paper's Free-8 (best row of its Table 1); train_free.py:30 --minibatch-replays
        # as run (False): train_free.py:97 forwards x + delta with delta as the previous replay left it, i.e. boxed
        # for the PREVIOUS batch's images at the first replay of a batch. True: re-box it for the current images
        # first, so every training input is a valid image (see Fidelity notes for the measured difference).
        rebox_carried: bool = False

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        if hp.replays < 1:
            raise MethodError(f"free_at.replays must be >= 1 (got {hp.replays})")
        if ctx.train_cfg is None:
            raise MethodError("free_at needs the run's TrainConfig in its Context (batch size, per-replay lr)")
        info = ctx.info
        # One full batch of perturbation, starting at zero (train_free.py:76), on the training device; its dtype
        # follows the training inputs' (set at the first step: float64 in the differential tests).
        self.delta = torch.zeros(ctx.train_cfg.batch_size, info.channels, info.image_size, info.image_size,
                                 device=ctx.device)
        # Data-parallel runs: the global step at which this rank last wrote each position (bench/core/distributed.py)
        self.stamp = torch.full((ctx.train_cfg.batch_size,), -1.0, dtype=torch.float64, device=ctx.device)

    def _set_replay_lr(self, step, r: int) -> None:
        cfg, m = self.ctx.train_cfg, self.hp.replays
        schedules.apply(cfg, self.optimizers, step.epoch, step.step * m + r, self.ctx.steps_per_epoch * m)

    def train_step(self, batch, step):
        x, y = batch.x, batch.y
        b, eps = x.shape[0], self.ctx.eps
        lo, hi = batch.offset, batch.offset + b  # this shard's positions in the global batch (0, b on one process)
        if hi > self.delta.shape[0]:
            raise MethodError(f"free_at: batch of {hi} is larger than the perturbation buffer ({self.delta.shape[0]})")
        if self.delta.dtype != x.dtype or self.delta.device != x.device:
            self.delta = self.delta.to(device=x.device, dtype=x.dtype)
        for r in range(self.hp.replays):
            self._set_replay_lr(step, r)  # lr (and momentum) of replay step*m + r, as CyclicLR stepped per replay
            delta = self.delta[lo:hi].clone()
            if r == 0 and self.hp.rebox_carried:  # later replays: already boxed for x by the previous update
                delta = _box(delta, x)
            delta.requires_grad_(True)
            logits = self.model(x + delta)
            loss = F.cross_entropy(logits, y)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()  # one backward: weight gradients and the perturbation's gradient together
            with torch.no_grad():
                # train_free.py:103-104: sign step of eps, clip to the ball, then box for THESE images
                self.delta[lo:hi] = _box((delta + eps * delta.grad.sign()).clamp(-eps, eps), x)
                self.stamp[lo:hi] = step.global_step
            for opt in self.optimizers:
                opt.step()
        # Logged: the last replay (as train_free.py:108-109 logs it).
        return {"loss": loss.detach(), "adv_acc": (logits.argmax(1) == y).float().mean()}

    def sync_state(self, world):

        merge_latest(self.delta, self.stamp)  # each position as the rank that last wrote it left it

    def state_dict(self):
        return {"delta": self.delta.detach().clone()}

    def load_state_dict(self, state):
        delta = state["delta"]
        if delta.shape != self.delta.shape:
            raise ValueError(f"free_at: checkpointed perturbation has shape {tuple(delta.shape)}, "
                             f"expected {tuple(self.delta.shape)}")
        self.delta = delta.to(self.delta.device, self.delta.dtype).clone()


def _box(delta: Tensor, x: Tensor) -> Tensor:
    """delta clipped so that x + delta is in [0, 1] (train_free.py:104 with utils.py:18-19's clamp)."""
    return torch.max(torch.min(delta, 1 - x), -x)

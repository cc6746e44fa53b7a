"""Free-AT: adversarial training for free (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor &
Goldstein, NeurIPS 2019, "Adversarial Training for Free!").

Update: each minibatch is replayed m = 8 times. Each replay is ONE forward/backward of CE(f(x + delta), y) (train
mode) that yields both gradients:
    theta <- SGD step with grad_theta                                  (one optimizer step per replay)
    delta <- clip(delta + eps * sign(grad_delta), -eps, eps),  then x + delta kept in [0, 1]
delta is never reset: it carries over from replay to replay AND from minibatch to minibatch (it has the shape of
a full batch; a smaller last batch uses its first B rows). It is method state, checkpointed with the run.
One epoch of the loop is one pass over the data (m optimizer steps per batch), so the recipe's 10 epochs are the
"epochs divided by m" of the paper (AFD Table 5: 10 epochs).

Public code checked: locuslab/fast_adversarial CIFAR10/train_free.py (PyTorch, Wong et al. 2020: 10 epochs x 8
replays, cyclic lr 0 -> 0.04 -> 0 stepped per replay, wd 5e-4, batch 128, delta of shape (batch_size, ...) starting
at zero); ashafahi/free_adv_train free_train.py, free_model.py, config.py (the authors' TensorFlow code).

Fidelity notes:
- Recipe: we follow Wong's PyTorch version (cyclic lr to 0.04 peaking at half of the run, wd 5e-4, 10 passes),
  which is the one whose epoch count matches AFD's Table 5. The TF original instead runs 80,000 replay steps
  (~25.6 passes of CIFAR-10 at batch 128) with lr 0.1 -> 0.01 at 40k -> 0.001 at 60k replay steps and wd 2e-4;
  a grid can ask for it as a recipe override (epochs=26, lr=0.1, weight_decay=2e-4, schedule="piecewise",
  milestones=(0.5, 0.75)); our piecewise decays fall on epoch boundaries, TF's on replay steps.
- Per-replay lr: the loop sets the lr once per batch; train_step re-evaluates the run's schedule at every replay
  (position step * m + r of steps_per_epoch * m), as Wong's CyclicLR steps after every replay. Our cyclic
  schedule gives lr(0) = 0 at the first replay like CyclicLR's base_lr = 0.
- [0, 1] box: Wong clamps delta so x + delta is in [0, 1] after each update, but the first replay of a new batch
  forwards x_new + delta with delta boxed for the PREVIOUS images (it can leave [0, 1]); the TF code clips the
  input, clip(x + delta, 0, 255), which zeroes delta's gradient where it clips. We re-box delta for the current
  images before every forward, so every training input is a valid image and the ball constraint still holds;
  this only differs from Wong at the first replay of each batch.
- The perturbation gradient is that of the batch-mean CE (Wong; TF uses the mean loss plus weight decay, whose
  delta-gradient is zero): only its sign is used.
- Wong trains in mixed precision (apex O2); we train at the run's precision (fp32 by default).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.config import TrainConfig
from bench import schedules
from methods.base import Method, MethodError, register


@register
class FreeAT(Method):
    name = "free_at"
    parent = None
    summary = "Free-AT: m minibatch replays with a persistent FGSM perturbation (Shafahi et al. 2019)"
    single_step = True
    # train_free.py: --epochs 10 (passes; x8 replays), cyclic 0 -> 0.04 -> 0 per replay, wd 5e-4, momentum 0.9
    recipe = TrainConfig(epochs=10, lr=0.04, weight_decay=5e-4, schedule="cyclic", cyclic_peak=0.5,
                         cycle_momentum=True)

    @dataclass(frozen=True)
    class Hparams:
        replays: int = 8  # m: paper's Free-8 (best row of its Table 1); train_free.py --minibatch-replays

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        if hp.replays < 1:
            raise MethodError(f"free_at.replays must be >= 1 (got {hp.replays})")
        if ctx.train_cfg is None:
            raise MethodError("free_at needs the run's TrainConfig in its Context (batch size, per-replay lr)")
        info = ctx.info
        # One full batch of perturbation, starting at zero (both public codes), living on the training device.
        self.delta = torch.zeros(ctx.train_cfg.batch_size, info.channels, info.image_size, info.image_size,
                                 device=ctx.device)

    def _set_replay_lr(self, step, r: int) -> None:
        cfg, m = self.ctx.train_cfg, self.hp.replays
        schedules.apply(cfg, self.optimizers, step.epoch, step.step * m + r, self.ctx.steps_per_epoch * m)

    def train_step(self, batch, step):
        x, y = batch.x, batch.y
        b, eps = x.shape[0], self.ctx.eps
        if b > self.delta.shape[0]:
            raise MethodError(f"free_at: batch of {b} is larger than the perturbation buffer ({self.delta.shape[0]})")
        for r in range(self.hp.replays):
            self._set_replay_lr(step, r)
            # Box delta for THESE images so x + delta is a valid image (see Fidelity notes).
            delta = torch.max(torch.min(self.delta[:b], 1 - x), -x).requires_grad_(True)
            logits = self.model(x + delta)
            loss = F.cross_entropy(logits, y)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()  # one backward: weight gradients and the perturbation's gradient together
            with torch.no_grad():
                new = (delta + eps * delta.grad.sign()).clamp(-eps, eps)
                self.delta[:b] = torch.max(torch.min(new, 1 - x), -x)
            for opt in self.optimizers:
                opt.step()
        # Logged: the last replay (as train_free.py logs it).
        return {"loss": loss.detach(), "adv_acc": (logits.argmax(1) == y).float().mean()}

    def state_dict(self):
        return {"delta": self.delta.detach().clone()}

    def load_state_dict(self, state):
        delta = state["delta"]
        if delta.shape != self.delta.shape:
            raise ValueError(f"free_at: checkpointed perturbation has shape {tuple(delta.shape)}, "
                             f"expected {tuple(self.delta.shape)}")
        self.delta = delta.to(self.delta.device, self.delta.dtype).clone()

"""Reference for Free-AT: the training step of locuslab/fast_adversarial CIFAR10/train_free.py (commit 54f7287),
transcribed for this project (not copied) as plain torch, line by line:

- :69 ``torch.optim.SGD(model.parameters(), lr=lr_max, momentum=0.9, weight_decay=5e-4)``;
- :76-77 the perturbation: zeros of shape (batch_size, C, H, W), ``requires_grad``, created once, never reset;
- :79 ``lr_steps = epochs * len(train_loader) * minibatch_replays``;
- :81-82 ``CyclicLR(opt, base_lr=lr_min (0), max_lr=lr_max, step_size_up=lr_steps / 2, step_size_down=lr_steps / 2)``
  with every other argument at torch's default: ``cycle_momentum=True``, base_momentum 0.8, max_momentum 0.9. We
  use torch's own CyclicLR here (the object the code used), so the test checks our pure-function schedule
  against it;
- :96-107, per replay: :97 ``output = model(X + delta[:X.size(0)])`` (delta as the previous replay left it, NOT
  re-boxed for these images); :98 mean CE; :99 ``opt.zero_grad()``; :100-101 backward (apex amp, see below);
  :102 ``grad = delta.grad``; :103 ``delta = clamp(delta + eps * sign(grad), -eps, eps)`` on the WHOLE buffer
  (rows past the batch have a zero gradient: sign 0, unchanged); :104 ``delta[:B] = clamp(delta[:B], lower_limit
  - X, upper_limit - X)``; :105 ``opt.step()``; :106 ``delta.grad.zero_()``; :107 ``scheduler.step()`` AFTER the
  optimizer step, so replay k (0-based, counted over the run) runs at CyclicLR's value for last_epoch = k;
- utils.py:18-19 ``clamp(X, lo, hi) = torch.max(torch.min(X, hi), lo)`` (only ever applied to ``.data``: no
  gradient flows through it, so torch's tie rule for min/max plays no role here).

Deliberate differences from the file, none of which changes the algorithm: pixel space [0, 1] with scalar eps
(the code normalizes by the CIFAR-10 mean/std, utils.py:8-15, and divides eps by std, :64: the same sign steps
and the same box in pixel space); the model's dtype throughout (the code: fp32 delta, apex O2 fp16 model, :70-73);
no apex loss scaling (static scale 1.0 by default, :35: a no-op in exact arithmetic).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def clamp(x, lo, hi):  # utils.py:18-19
    return torch.max(torch.min(x, hi), lo)


class FreeATReference:
    def __init__(self, model, *, batch_size, image_shape, eps, lr_max, epochs, batches_per_epoch, replays,
                 momentum=0.9, weight_decay=5e-4, dtype=torch.float64):
        self.model, self.replays = model, replays
        # :64 epsilon is a per-channel tensor (8/255 / std, shape (3, 1, 1)); in pixel space every channel's is eps
        self.eps = torch.full((image_shape[0], 1, 1), eps, dtype=dtype)
        self.opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=momentum, weight_decay=weight_decay)
        self.delta = torch.zeros(batch_size, *image_shape, dtype=dtype)
        self.delta.requires_grad = True
        lr_steps = epochs * batches_per_epoch * replays
        self.scheduler = torch.optim.lr_scheduler.CyclicLR(self.opt, base_lr=0.0, max_lr=lr_max,
                                                           step_size_up=lr_steps / 2, step_size_down=lr_steps / 2)

    def batch(self, X, y):
        """The replays of one minibatch; returns per replay (loss, logits, lr, momentum) as used by its step."""
        out = []
        b = X.size(0)
        for _ in range(self.replays):
            lr, mom = self.opt.param_groups[0]["lr"], self.opt.param_groups[0]["momentum"]
            output = self.model(X + self.delta[:b])
            loss = F.cross_entropy(output, y)
            self.opt.zero_grad()
            loss.backward()
            grad = self.delta.grad.detach()
            self.delta.data = clamp(self.delta + self.eps * torch.sign(grad), -self.eps, self.eps)
            self.delta.data[:b] = clamp(self.delta[:b], 0 - X, 1 - X)
            self.opt.step()
            self.delta.grad.zero_()
            self.scheduler.step()
            out.append((loss.detach(), output.detach(), lr, mom))
        return out

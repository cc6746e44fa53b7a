"""ATAS's training step as its public code runs it: an independent transcription for the differential test.

Source: HuangZhiChao95/ATAS, commit 674b195 (the repository's HEAD), written for this project from reading the code;
nothing is copied. What is transcribed, by file and line:

- data.py:30: the loader yields the 4-pixel zero-padded image (``transforms.Pad(4)`` then ``ToTensor``), so ``nat``
  and the stored perturbation ``delta`` are (C, H+8, W+8); data.py:11 ``shapes_dict`` gives 3x40x40 for CIFAR.
- data_aug.py:9-27 ``aug``: per example, a window ``[x_t:x_t+32, y_t:y_t+32]`` of the padded tensor (``x_t`` is the
  ROW offset, ``y_t`` the column offset; both ``random.randint(0, 8)``), then ``torch.flip(.., [2])`` of the (C, H, W)
  example, i.e. along the width, with probability 1/2; it returns the window and the transform info.
- data_aug.py:30-44 ``aug_trans``: the same windows (and flips) of the natural padded image.
- data_aug.py:47-61 ``inverse_aug``: un-flips each window and writes it back into the padded buffer.
- ATAS.py:89-135 ``train`` body for one batch: crop both, ``adv = clamp(delta_trans + nat_trans, 0, 1)``
  (ATAS.py:95-97); if ``epoch > warmup_epochs`` (1-based epoch, ATAS.py:103) the adaptive step and the update of
  ``gdnorms[index]`` (ATAS.py:104-113), else the constant step ``args.step_size`` = 1.0 * epsilon (ATAS.py:52, 77,
  115-122); then ``model.train()``, CE with reduction='none' then ``.mean()`` on the new adversarial batch,
  backward, ``optimizer.step()``, ``scheduler.step()`` (ATAS.py:124-131); then the write-back
  ``delta[index] = inverse_aug(delta[index], next_adv - nat_trans, info)`` (ATAS.py:135).
- adv_attack.py:25-36 ``get_adv_constant_step_size`` and 39-55 ``get_adv_adaptive_step_size``: ``model.eval()``,
  gradient of ``F.cross_entropy`` (batch MEAN) with respect to the model's input (the [0, 1] image: the model is
  ``Sequential(Normalize, net)``, ATAS.py:145, so this is the gradient in front of the normalisation);
  ``cur = ||g_i||_2^2 (1 - beta) + beta * gdnorm_i``; ``step_i = 1 / (1 + sqrt(cur_i) / c) * 2 * 8 / 255`` (the
  8/255 is a literal, not epsilon), clamped to [min_step_size, max_step_size]; ``x + step * sign(g)``, projected on
  the eps-ball around the natural image, clamped to [0, 1].
- ATAS.py:150, 159-160: SGD(lr, momentum, weight_decay) over all parameters; ``MultiStepLR`` with milestones
  ``decay_steps * len(train_loader)``, stepped once per ITERATION; ATAS.py:154 initial ``delta`` ~ U(-eps, eps)
  (float32 for CIFAR); ATAS.py:162 ``gdnorm`` zeros; ATAS.py:164-166: before training 1-based epoch ``e``,
  ``if e % epochs_reset == 0 and e != epochs: uniform_(delta, -eps, eps)``.
- ATAS.py:141-145 the model is ``Sequential(Normalize(ImageNet mean, std), net)`` (models/normalize.py:12-18:
  ``(x[:, i] - mean[i]) / std[i]`` per channel), for CIFAR too: ``Normalize`` below.
- ATAS_CIFAR.sh:3-15: batch 128, wd 5e-4, lr 0.1, 30 epochs, decay steps 24 28, C = 0.01, step sizes 4 .. 14 (/255,
  ATAS.py:74-76), epsilon 8 (run.sh:6).

Deliberate differences, none of which changes a number: the window size is the input's (the code's literal 32),
buffers keep the caller's dtype (the code's literal float32, data_aug.py:14), no DataParallel / .cuda(), and the
transform info is passed in (the code draws it with Python's ``random``) so both sides see the same crops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

PAD = 4  # data.py:30 transforms.Pad(padding=4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ATAS.py:141
IMAGENET_STD = (0.229, 0.224, 0.225)  # ATAS.py:142


@dataclass
class Args:
    """ATAS.py's argparse values after ATAS.py:74-77 (already divided by 255), ATAS_CIFAR.sh's settings."""

    epsilon: float = 8 / 255
    step_size: float = 8 / 255  # --step-size 1.0 times epsilon (ATAS.py:52, 77)
    c: float = 0.01
    beta: float = 0.5
    min_step_size: float = 4 / 255
    max_step_size: float = 14 / 255
    warmup_epochs: int = 5
    epochs_reset: int = 10
    epochs: int = 30
    decay_steps: tuple[int, ...] = (24, 28)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


class Normalize(nn.Module):
    """models/normalize.py:5-18: per-channel (x - mean) / std on a copy of the input."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, inp: Tensor) -> Tensor:
        out = inp.clone()
        for ch in range(inp.shape[1]):
            out[:, ch] = (out[:, ch] - self.mean[ch]) / self.std[ch]
        return out


def transform_info(row_offsets: Tensor, col_offsets: Tensor, flipped: Tensor) -> dict:
    """The dict aug() returns (data_aug.py:27): 'x' is the row offset, 'y' the column offset."""
    return {"crop": {"x": row_offsets.tolist(), "y": col_offsets.tolist()}, "flipped": [bool(f) for f in flipped]}


def aug_trans(padded: Tensor, info: dict, size: int) -> Tensor:
    """data_aug.py:30-44 (and aug() with its random draws fixed): crop each example's window, flip along width."""
    out = torch.zeros(padded.shape[0], padded.shape[1], size, size, dtype=padded.dtype)
    for i in range(padded.shape[0]):
        r, c = int(info["crop"]["x"][i]), int(info["crop"]["y"][i])
        out[i] = padded[i, :, r:r + size, c:c + size]
        if info["flipped"][i]:
            out[i] = torch.flip(out[i], [2])
    return out


def inverse_aug(source: Tensor, adv: Tensor, info: dict) -> Tensor:
    """data_aug.py:47-61: un-flip each example's window and write it into its place in the padded buffer."""
    size = adv.shape[-1]
    for i in range(source.shape[0]):
        r, c = int(info["crop"]["x"][i]), int(info["crop"]["y"][i])
        if info["flipped"][i]:
            adv[i] = torch.flip(adv[i], [2])
        source[i, :, r:r + size, c:c + size] = adv[i]
    return source


def _input_grad(model: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    model.eval()
    x_adv = x_adv.clone().requires_grad_()
    with torch.enable_grad():
        loss = F.cross_entropy(model(x_adv), y)  # batch mean (the default reduction)
    (grad,) = torch.autograd.grad(loss, [x_adv])
    return x_adv, grad


def _project(x_adv: Tensor, x_nat: Tensor, epsilon: float) -> Tensor:
    x_adv = torch.min(torch.max(x_adv, x_nat - epsilon), x_nat + epsilon)
    return torch.clamp(x_adv, 0.0, 1.0)


def get_adv_constant_step_size(model, x_nat, x_adv, y, step_size, epsilon) -> Tensor:
    """adv_attack.py:25-36."""
    x_adv, grad = _input_grad(model, x_adv, y)
    return _project(x_adv.detach() + step_size * torch.sign(grad), x_nat, epsilon)


def get_adv_adaptive_step_size(model, x_nat, x_adv, y, gdnorm, args: Args, epsilon) -> tuple[Tensor, Tensor, Tensor]:
    """adv_attack.py:39-55; also returns the per-example step sizes (the code keeps them local)."""
    x_adv, grad = _input_grad(model, x_adv, y)
    with torch.no_grad():
        cur_gdnorm = torch.norm(grad.view(len(x_adv), -1), dim=1) ** 2 * (1 - args.beta) + gdnorm * args.beta
        steps = 1 / (1 + torch.sqrt(cur_gdnorm) / args.c) * 2 * 8 / 255
        steps = torch.clamp(steps, args.min_step_size, args.max_step_size)
    x_new = x_adv.detach() + steps.view(-1, 1, 1, 1).expand_as(grad) * torch.sign(grad)
    return _project(x_new, x_nat, epsilon), cur_gdnorm, steps


def make_optimizer(args: Args, model: nn.Module, steps_per_epoch: int):
    """ATAS.py:150, 159-160: SGD over every parameter and MultiStepLR whose milestones are in iterations."""
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    milestones = [d * steps_per_epoch for d in args.decay_steps]
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)


def epoch_start(args: Args, delta: Tensor, epoch: int, generator: torch.Generator | None = None) -> bool:
    """ATAS.py:164-166, before 1-based epoch ``epoch``: True if delta was redrawn U(-eps, eps)."""
    if epoch % args.epochs_reset == 0 and epoch != args.epochs:
        with torch.no_grad():
            delta.uniform_(-args.epsilon, args.epsilon, generator=generator)
        return True
    return False


def train_batch(args: Args, model, optimizer, scheduler, delta: Tensor, gdnorms: Tensor, nat: Tensor,
                label: Tensor, index: Tensor, info: dict, epoch: int) -> dict:
    """ATAS.py:89-135 for one batch of padded natural images ``nat`` (1-based ``epoch``)."""
    size = nat.shape[-1] - 2 * PAD
    with torch.no_grad():
        delta_trans = aug_trans(delta[index], info, size)  # aug(delta[index]) with this batch's draws
        nat_trans = aug_trans(nat, info, size)
        adv_trans = torch.clamp(delta_trans + nat_trans, 0, 1)
    if epoch > args.warmup_epochs:
        next_adv, gdnorm, steps = get_adv_adaptive_step_size(model, nat_trans, adv_trans, label, gdnorms[index],
                                                              args, args.epsilon)
        gdnorms[index] = gdnorm
    else:
        next_adv = get_adv_constant_step_size(model, nat_trans, adv_trans, label, args.step_size, args.epsilon)
        steps = torch.full((len(label),), args.step_size, dtype=nat.dtype)
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(next_adv.detach()), label, reduction="none").mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        delta[index] = inverse_aug(delta[index], next_adv - nat_trans, info)
    return {"loss": loss.detach(), "steps": steps, "x_adv": next_adv.detach(), "nat_trans": nat_trans}

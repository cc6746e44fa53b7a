"""ATAS: fast adversarial training with adaptive step size (Huang, Fan, Liu, Zhang, Zhang, Salzmann, Süsstrunk
& Wang, IEEE TIP 2023, "Fast Adversarial Training with Adaptive Step Size").

Per-example state, indexed by the example's position in the training split (``batch.idx``):
- delta[i]: a perturbation stored on the 4-pixel ZERO-PADDED image, shape (N, C, H+8, W+8); each step reads the
  window the loader cropped (and flipped) for this example and writes the new perturbation back there;
- v[i]: a running squared input-gradient norm.
One step, model in eval mode (as in the code):
    x0 = clamp(x + crop_flip(delta[i]), 0, 1),   g = grad_x CE_mean(f(x0), y)   (the batch-MEAN loss: c is
                                                                                  calibrated to its scale)
    v[i] <- beta * v[i] + (1 - beta) * ||g_i||^2,   beta = 0.5
    alpha_i = clamp(2 eps / (1 + sqrt(v[i]) / c), 4/255, 14/255),   c = 0.01
    x' = proj_{eps-ball(x), [0,1]}(x0 + alpha_i sign(g_i)),   delta[i] <- uncrop_unflip(x' - x)
then train (train mode) on CE(f(x'), y). Warm-up: for the first 5 of 30 epochs alpha_i = eps and v is not updated.
Reset: delta <- U(-eps, eps) at the start of (1-based) epochs 10 and 20 (every 10, never before the last one);
v is never reset.

Public code checked: HuangZhiChao95/ATAS ATAS.py (train, main), adv_attack.py (get_adv_adaptive_step_size,
get_adv_constant_step_size), data_aug.py (aug, aug_trans, inverse_aug), data.py (Pad(4) before ToTensor, so the
buffer is 40x40 for CIFAR), ATAS_CIFAR.sh (30 epochs, decays at 24 and 28, lr 0.1, wd 5e-4, batch 128, c = 0.01,
step sizes 4/255 .. 14/255).

Fidelity notes:
- adv_attack.py hard-codes 2 * 8/255 in the step-size formula; we write 2 * eps (the same at eps = 8/255, the
  paper's formula otherwise). The clamp bounds 4/255 and 14/255 are absolute, as in ATAS_CIFAR.sh.
- Warm-up and reset are given in the recipe's 30 epochs and scaled to the run's length like the lr milestones
  (warm-up round(5 E / 30) epochs, reset every round(10 E / 30) epochs), so a scaled-down grid keeps the shape;
  at E = 30 they are exactly the code's. (For E <= 2 that means a reset at every epoch but the last.)
- Random draws for the initial and reset perturbations come from private generators seeded by (seed, epoch), so
  ``on_epoch_start`` is pure and a resumed run redraws exactly the same reset; the code uses the global RNG.
- The buffer is float32 (960 MB for CIFAR-10 train, 6.2 GB for Tiny-ImageNet at 72x72) and is checkpointed with
  the run. The code keeps float32 for CIFAR and float16 only for its resized ImageNet; we did not establish that
  half precision leaves the adaptive step sizes unchanged, so we do not use it.
- Padding must match the loader's (bench.data.Loader pad=4, as the code's Pad(4)); without augmentation the
  un-padded centre of the buffer is used.
- The padded border of delta is drawn U(-eps, eps) like the rest, as in the code; pixels read from it are added
  to the zero padding and then clamped to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.attacks import _attack_context  # eval mode + frozen weights for the input gradient, restored after
from bench.config import TrainConfig
from methods.base import Method, MethodError, register

PAD = 4  # bench.data.Loader's crop padding; the buffer holds the padded image
RECIPE_EPOCHS = 30


def crop_index(dx: Tensor, dy: Tensor, flip: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """(rows (B, H), cols (B, W)) into the padded image: the same map as bench.data.augment_crop_flip."""
    b, dev = dx.shape[0], dx.device
    rows = dy.view(b, 1) + torch.arange(h, device=dev).view(1, h)
    cols = torch.arange(w, device=dev).view(1, w).expand(b, w)
    cols = torch.where(flip.view(b, 1), (w - 1) - cols, cols) + dx.view(b, 1)
    return rows, cols


def step_sizes(v: Tensor, eps: float, c: float, lo: float, hi: float) -> Tensor:
    """alpha = clamp(2 eps / (1 + sqrt(v) / c), lo, hi) per example."""
    return (2 * eps / (1 + v.sqrt() / c)).clamp(lo, hi)


@register
class ATAS(Method):
    name = "atas"
    parent = None
    summary = "ATAS: one-step AT with per-example adaptive step sizes and stored perturbations (Huang et al. 2023)"
    single_step = True
    # ATAS_CIFAR.sh: 30 epochs, lr 0.1 x0.1 after epochs 24 and 28 (MultiStepLR in iterations), wd 5e-4, batch 128
    recipe = TrainConfig(epochs=RECIPE_EPOCHS, lr=0.1, weight_decay=5e-4, schedule="piecewise",
                         milestones=(24 / 30, 28 / 30))

    @dataclass(frozen=True)
    class Hparams:
        c: float = 0.01  # ATAS_CIFAR.sh C ("hard fraction")
        beta: float = 0.5  # ATAS.py --beta: momentum of the squared gradient norm
        min_step_size: float = 4 / 255  # ATAS_CIFAR.sh MIN_STEP_SIZE
        max_step_size: float = 14 / 255  # ATAS_CIFAR.sh MAX_STEP_SIZE
        warmup_epochs: int = 5  # ATAS.py --warmup-epochs (of 30; scaled, see Fidelity notes)
        reset_every: int = 10  # ATAS.py --epochs-reset (of 30; scaled)

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        if not 0 < hp.min_step_size <= hp.max_step_size:
            raise MethodError(f"atas: need 0 < min_step_size <= max_step_size "
                              f"(got {hp.min_step_size}, {hp.max_step_size})")
        n, info = len(ctx.train), ctx.info
        self.shape = (n, info.channels, info.image_size + 2 * PAD, info.image_size + 2 * PAD)
        self.delta = self._uniform(-1)  # the code draws U(-eps, eps) once before training
        self.v = torch.zeros(n, device=ctx.device)

    # -- schedule of the state ----------------------------------------------------------------------------------
    def _scaled(self, k: int) -> int:
        return round(k * self.ctx.epochs / RECIPE_EPOCHS)

    def warming_up(self, epoch: int) -> bool:
        return epoch < self._scaled(self.hp.warmup_epochs)

    def resets_at(self, epoch: int) -> bool:
        """ATAS.py: 1-based epoch % epochs_reset == 0 and not the last epoch."""
        every = self._scaled(self.hp.reset_every)
        return every > 0 and (epoch + 1) % every == 0 and epoch + 1 != self.ctx.epochs

    def _uniform(self, epoch: int) -> Tensor:
        gen = torch.Generator(device=self.ctx.device)
        gen.manual_seed((self.ctx.seed * 1_000_003 + 7919 * (epoch + 2)) % (1 << 63))
        u = torch.rand(self.shape, generator=gen, device=self.ctx.device)
        return (2 * u - 1) * self.ctx.eps

    def on_epoch_start(self, epoch):
        if self.resets_at(epoch):
            self.delta = self._uniform(epoch)

    # -- one step ---------------------------------------------------------------------------------------------
    def _window(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        b, _, h, w = batch.x.shape
        if batch.dx is None:  # no augmentation: the centre of the padded buffer
            centre = torch.full((b,), PAD, dtype=torch.long, device=batch.x.device)
            rows, cols = crop_index(centre, centre, torch.zeros(b, dtype=torch.bool, device=batch.x.device), h, w)
        else:
            rows, cols = crop_index(batch.dx, batch.dy, batch.flip, h, w)
        idx = batch.idx.view(b, 1, 1, 1)
        chan = torch.arange(batch.x.shape[1], device=batch.x.device).view(1, -1, 1, 1)
        return idx, chan, (rows.view(b, 1, h, 1), cols.view(b, 1, 1, w))

    def loss(self, batch, step):
        x, y, eps, hp = batch.x, batch.y, self.ctx.eps, self.hp
        idx, chan, (rows, cols) = self._window(batch)
        x0 = torch.clamp(x + self.delta[idx, chan, rows, cols], 0.0, 1.0)
        with _attack_context(self.model, eval_mode=True):
            x0.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(self.model(x0), y), [x0])
        with torch.no_grad():
            if self.warming_up(step.epoch):
                alpha = torch.full_like(y, eps, dtype=x.dtype)  # constant step eps; v untouched (as the code)
            else:
                v = hp.beta * self.v[batch.idx] + (1 - hp.beta) * g.flatten(1).pow(2).sum(1)
                self.v[batch.idx] = v
                alpha = step_sizes(v, eps, hp.c, hp.min_step_size, hp.max_step_size)
            x_adv = x0 + alpha.view(-1, 1, 1, 1) * g.sign()
            x_adv = torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)
            # Write back: the same gather indices scatter the window (un-flipped) into the padded buffer.
            self.delta[idx, chan, rows, cols] = x_adv - x
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y)
        return {"loss": loss, "adv_acc": (logits.argmax(1) == y).float().mean(), "step_size": alpha.mean()}

    def state_dict(self):
        return {"delta": self.delta.clone(), "v": self.v.clone()}

    def load_state_dict(self, state):
        if tuple(state["delta"].shape) != self.shape or state["v"].shape != self.v.shape:
            raise ValueError(f"atas: checkpointed buffers {tuple(state['delta'].shape)}, {tuple(state['v'].shape)} "
                             f"do not match this run's {self.shape}, {tuple(self.v.shape)}")
        self.delta = state["delta"].to(self.ctx.device, torch.float32).clone()
        self.v = state["v"].to(self.ctx.device, torch.float32).clone()

"""ATAS: fast adversarial training with adaptive step size (Huang, Fan, Liu, Zhang, Zhang, Salzmann, Süsstrunk
& Wang, IEEE TIP 2023, "Fast Adversarial Training with Adaptive Step Size", arXiv 2206.02417).

Per-example state, indexed by the example's position in the training split (``batch.idx``):
- delta[i]: a perturbation stored on the 4-pixel ZERO-PADDED image, shape (N, C, H+8, W+8); each step reads the
  window the loader cropped (and flipped) for this example and writes the new perturbation back there;
- v[i]: a running squared input-gradient norm, zero at the start and never reset.
One step, model in eval mode for the gradient (as the code):
    x0 = clamp(x + crop_flip(delta[i]), 0, 1),   g = grad_x CE_mean(f(x0), y)      (batch-MEAN loss, gradient with
                                                                                    respect to the [0, 1] image)
    warm-up:   alpha_i = eps,  v untouched
    adaptive:  v[i] <- beta v[i] + (1 - beta) ||g_i||_2^2,   beta = 0.5
               alpha_i = clamp(s / (1 + sqrt(v[i]) / c), 4/255, 14/255),   s = 2 * 8/255,  c = 0.01
    x' = clamp(proj_{||x' - x||_inf <= eps}(x0 + alpha_i sign(g_i)), 0, 1),   delta[i] <- uncrop_unflip(x' - x)
then train (train mode) on CE_mean(f(x'), y). Recipe: 30 epochs, warm-up the first 5, delta redrawn U(-eps, eps)
before epochs 10 and 20 (1-based), SGD lr 0.1 momentum 0.9 wd 5e-4 batch 128, lr x0.1 after 24 and 28 epochs.

Public code checked: HuangZhiChao95/ATAS at 674b195 (its HEAD).
- ATAS.py:89-135 ``train``: aug of delta and of the padded image with the same draws (95-97), adaptive step if
  ``epoch > args.warmup_epochs`` (1-based, 103-113; only this branch updates ``gdnorms``), else the constant step
  ``args.step_size`` = 1.0 * eps (52, 77, 115-122); ``model.train()``, CE mean, SGD step, ``scheduler.step()`` every
  ITERATION (124-131); write-back ``delta[index] = inverse_aug(delta[index], next_adv - nat, info)`` (135).
- ATAS.py:141-145 the model is ``Sequential(Normalize(ImageNet mean, std), net)``, for CIFAR too; 150 SGD over
  every parameter; 154 delta ~ U(-eps, eps) float32 on the padded shape; 159-160 MultiStepLR with milestones
  ``decay_steps * len(train_loader)``; 162 gdnorm zeros; 164-166 ``if epoch % epochs_reset == 0 and epoch !=
  args.epochs: uniform_(delta)`` BEFORE training that 1-based epoch.
- adv_attack.py:25-36 ``get_adv_constant_step_size``; 39-55 ``get_adv_adaptive_step_size``: ``model.eval()``,
  ``F.cross_entropy`` (mean) differentiated w.r.t. ``x_adv``, the INPUT of the model, i.e. in front of its
  Normalize (41-45); 47 ``||g||^2 (1 - beta) + beta gdnorm``; 48 ``1 / (1 + sqrt(.) / c) * 2 * 8 / 255`` (a literal
  8/255, not eps); 49 clamp to [min, max]; 51-53 sign step, projection, [0, 1].
- data_aug.py:9-27 ``aug`` (window ``[x_t:x_t+32, y_t:y_t+32]``, x_t the row offset, both randint(0, 8); flip of
  dim 2 of the (C, H, W) example, i.e. the width), 30-44 ``aug_trans``, 47-61 ``inverse_aug``; data.py:30 Pad(4)
  before ToTensor (so the buffer is 40x40 for CIFAR), 40 shuffle, no drop_last (the last batch is smaller).
- ATAS_CIFAR.sh:3-15 batch 128, wd 5e-4, lr 0.1, 30 epochs, decay 24 28, C 0.01, steps 4 .. 14 (/255); run.sh:6
  eps 8.
tests/reference/ref_atas.py transcribes these lines; tests/reference/test_ref_atas.py checks this module against it
step by step (step sizes, v, delta buffer, loss, parameters) through warm-up, adaptive epochs and a reset.

Scaled-down runs (E epochs instead of 30). ``warmup_epochs`` and ``reset_every`` are the code's values, in epochs
of the 30-epoch recipe; a run of E epochs keeps every phase the recipe has:
- warm-up: W(E) = round(5 E / 30), kept in [1, E - 1] when E >= 2 (at least one warm-up and one adaptive epoch);
  E = 1 has no warm-up (the one epoch is adaptive: that is the method). W(30) = 5.
- resets: the code's reset epochs k (multiples of 10 below 30: 10, 20) move to round(k E / 30), kept in
  [2, E - 1]; duplicates merge. A reset needs an epoch that is neither the first (a redraw before epoch 1 is the
  initial draw) nor the last (the code never resets before its last epoch, ATAS.py:165), so runs of E >= 3 have at
  least one and E <= 2 none. E = 3: warm-up epoch 1, reset before epoch 2; E = 30: 10 and 20, as the code.
- lr: ``recipe.milestones`` (24/30, 28/30) of the run's ITERATIONS (bench/core/schedules.py), as the code's MultiStepLR
  in iterations; at E = 30 exactly iterations 24 and 28 x len(loader).

Logged per step (the loop averages them per epoch): ``step_size`` (mean alpha), ``step_at_min`` / ``step_at_max``
(fraction of the batch at the lower / upper clamp; 0 in warm-up), ``grad_norm`` (mean ||g_i||_2 of this step's
gradient, the quantity compared with c; also in warm-up, where it is not used).

Fidelity notes (measured on CIFAR-10 JPEG, the cpu grid's 10,000-image training sample, small_cnn, batch 128,
lr 0.1, seed 0, 3 epochs; "the code" = tests/reference/ref_atas.py on the same net with the code's Normalize inside,
same initial weights, batches, crops and initial delta; step sizes in /255, per epoch):
- Step sizes sit near the upper clamp at this scale, and that is the code's rule, not a scale error. The code takes
  the norm of the gradient w.r.t. the model's [0, 1] input, in front of its Normalize, of the batch-MEAN CE
  (adv_attack.py:41-47, ATAS.py:145): exactly the gradient we take. With the recipe scaled to 3 epochs (warm-up
  epoch 1, reset before 2): ours 8.00 / 13.66 / 13.22, at 14/255: 0 / 66 / 39 %, at 4/255: 0 / 0.02 / 0.01 %;
  the code: 8.00 / 13.73 / 13.31, at 14/255: 0 / 70 / 42 %. Without warm-up or reset (the cpu grid before this
  change): ours 13.83 / 13.37 / 13.09 (78 / 46 / 31 % at 14/255), the code 13.88 / 13.53 / 13.21 (83 / 55 / 38 %).
  Other readings, on the final model: the norm after the normalisation (x std) would give 13.99 (96 % at 14/255),
  the batch-SUM loss 4.00 (99.8 % at 4/255). The steps are large because the per-example norm of the mean-loss
  gradient is ~0.002 (logged grad_norm 0.0016 / 0.0019 / 0.0024; sqrt(v) 0.0014, 0.0020) against c = 0.01: a
  small CNN after 79-237 steps on 10k images; it grows as the net trains (the step means fall every epoch).
  c = 0.01 was set for PreActResNet18 / WRN-34-10, whose adaptive phase starts after 5 warm-up epochs on 50k
  images (1,955 steps).
  Rescaling c would be our choice, not the code's: we keep c = 0.01 and log the distribution (step_at_min/max).
- No Normalize inside our models (the code's has ImageNet mean/std in front of the net, ATAS.py:141-145). For a net
  whose first conv feeds a BatchNorm (small_cnn) both are the same function class, and the input gradient of a
  given function does not depend on where the normalisation sits; only the training path differs. Measured above:
  mean steps differ by 0.05-0.16/255, clamp fractions by 3-9 points, epoch losses by <= 0.03 (one seed each). For
  pre-activation ResNets, whose first conv also feeds the identity shortcut, the input scale changes the
  shortcut's weight against the residual branch (not measured here).
- ``step_scale`` = 2 * 8/255 is the code's literal (adv_attack.py:48), so at eps != 8/255 it is not 2 * eps (what
  the paper's formula reads); the clamps 4/255 and 14/255 are absolute, as ATAS_CIFAR.sh.
- Random draws for the initial and reset perturbations come from private generators seeded by (seed, epoch), so
  ``on_epoch_start`` is pure and a resumed run redraws exactly the same reset; the code uses the global RNG. The
  crops and flips come from the loader's generator (the code draws them with Python's ``random`` in aug()); same
  distribution (offsets 0..8, flip 1/2).
- Buffers follow the model's dtype (float32 in training: 960 MB for CIFAR-10 train, 6.2 GB for Tiny-ImageNet at
  72x72, checkpointed with the run). The code keeps float32 for CIFAR and float16 only for its resized ImageNet; we
  did not establish that half precision leaves the adaptive step sizes unchanged, so we do not use it.
- Padding must match the loader's (bench.data.loader.Loader pad=4, as the code's Pad(4)); without augmentation the
  un-padded centre of the buffer is used (the code always augments).
- The padded border of delta is drawn U(-eps, eps) like the rest, as in the code; pixels read from it are added
  to the zero padding and clamped to [0, 1], so after a write-back they hold [0, eps].
- Under norm l2: refused (``norms``): its adaptive sign step and the per-pixel projection are an L-inf attack by
  construction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.config import TrainConfig
from bench.core.distributed import merge_latest
from bench.eval.attacks import attack_context  # eval mode + frozen weights for the input gradient, restored after
from methods.base import COUNT, FRACTION, POSITIVE, Method, MethodError, Range, register

PAD = 4  # bench.data.loader.Loader's crop padding; the buffer holds the padded image (data.py:30 Pad(4))
RECIPE_EPOCHS = 30  # ATAS_CIFAR.sh:9


def crop_index(dx: Tensor, dy: Tensor, flip: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """(rows (B, H), cols (B, W)) into the padded image: the same map as bench.data.loader.augment_crop_flip."""
    b, dev = dx.shape[0], dx.device
    rows = dy.view(b, 1) + torch.arange(h, device=dev).view(1, h)
    cols = torch.arange(w, device=dev).view(1, w).expand(b, w)
    cols = torch.where(flip.view(b, 1), (w - 1) - cols, cols) + dx.view(b, 1)
    return rows, cols


def raw_step_sizes(v: Tensor, scale: float, c: float) -> Tensor:
    """scale / (1 + sqrt(v) / c) per example, before the clamp (adv_attack.py:48)."""
    return scale / (1 + v.sqrt() / c)


def step_sizes(v: Tensor, scale: float, c: float, lo: float, hi: float) -> Tensor:
    """alpha = clamp(scale / (1 + sqrt(v) / c), lo, hi) per example (adv_attack.py:48-49)."""
    return raw_step_sizes(v, scale, c).clamp(lo, hi)


def scaled_warmup(warmup: int, epochs: int, recipe: int = RECIPE_EPOCHS) -> int:
    """Warm-up epochs of an ``epochs``-long run for the recipe's ``warmup`` of ``recipe`` epochs (module docstring):
    round(warmup * epochs / recipe), at least 1 and leaving at least one adaptive epoch when epochs >= 2."""
    if warmup <= 0:
        return 0
    if warmup >= recipe:  # the recipe never adapts
        return epochs
    if epochs < 2:
        return 0
    return min(max(1, round(warmup * epochs / recipe)), epochs - 1)


def scaled_resets(every: int, epochs: int, recipe: int = RECIPE_EPOCHS) -> tuple[int, ...]:
    """1-based epochs before which delta is redrawn: the code's reset epochs (ATAS.py:165: multiples of ``every``
    below ``recipe``) scaled to ``epochs`` and kept in [2, epochs - 1]; none when epochs < 3."""
    if epochs < 3:
        return ()
    code = [k for k in range(every, recipe, every) if k >= 2]  # a reset before epoch 1 is the initial draw
    return tuple(sorted({min(max(2, round(k * epochs / recipe)), epochs - 1) for k in code}))


@register
class ATAS(Method):
    name = "atas"
    label = "ATAS"
    plan_seconds_per_epoch = 36.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
    parent = None
    summary = "ATAS: one-step AT with per-example adaptive step sizes and stored perturbations (Huang et al. 2023)"
    single_step = True
    # ATAS's step is x0 + alpha_i sign(g_i) projected onto the L-inf ball (Huang et al. 2023, Algorithm 1;
    # adv_attack.py:51-53), its carried perturbation drawn U(-eps, eps) per pixel: L-inf by construction.
    norms = ("linf",)
    norm_reason = "trains with sign (FGSM) steps of an adaptive size, an L-inf attack by construction"
    # ATAS_CIFAR.sh: 30 epochs, lr 0.1 x0.1 after epochs 24 and 28 (MultiStepLR in iterations), wd 5e-4, batch 128
    recipe = TrainConfig(epochs=RECIPE_EPOCHS, lr=0.1, weight_decay=5e-4, schedule="piecewise",
                         milestones=(24 / 30, 28 / 30))

    ranges = {"c": POSITIVE, "beta": FRACTION, "step_scale": POSITIVE, "min_step_size": POSITIVE,
              "max_step_size": POSITIVE, "warmup_epochs": Range(0), "reset_every": COUNT}

    @dataclass(frozen=True)
    class Hparams:
        c: float = 0.01  # ATAS_CIFAR.sh:13 C ("hard fraction", ATAS.py:59)
        beta: float = 0.5  # ATAS.py:61 --beta: momentum of the squared gradient norm
        step_scale: float = 16 / 255  # adv_attack.py:48: the literal 2 * 8/255 of the step-size formula
        min_step_size: float = 4 / 255  # ATAS_CIFAR.sh:15 MIN_STEP_SIZE
        max_step_size: float = 14 / 255  # ATAS_CIFAR.sh:14 MAX_STEP_SIZE
        warmup_epochs: int = 5  # ATAS.py:64 --warmup-epochs, of the recipe's 30 (scaled, see the docstring)
        reset_every: int = 10  # ATAS.py:31 --epochs-reset, of the recipe's 30 (scaled)

    @classmethod
    def grad_scaler_problem(cls, hp):
        # The step sizes come from the MAGNITUDE of an unscaled input gradient (adv_attack.py:47-49: the running
        # squared norm v); in fp16 its entries near 1e-5 are subnormal or 0, so the step sizes would change
        return "its step sizes come from the magnitude of an input gradient that fp16 flushes toward 0"

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        if not 0 < hp.min_step_size <= hp.max_step_size:
            raise MethodError(f"atas: need 0 < min_step_size <= max_step_size "
                              f"(got {hp.min_step_size}, {hp.max_step_size})")
        if hp.reset_every < 1 or hp.warmup_epochs < 0 or hp.c <= 0:
            raise MethodError(f"atas: need reset_every >= 1, warmup_epochs >= 0, c > 0 "
                              f"(got {hp.reset_every}, {hp.warmup_epochs}, {hp.c})")
        n, info = len(ctx.train), ctx.info
        self.shape = (n, info.channels, info.image_size + 2 * PAD, info.image_size + 2 * PAD)
        self.warmup = scaled_warmup(hp.warmup_epochs, ctx.epochs)
        self.resets = scaled_resets(hp.reset_every, ctx.epochs)
        # The buffers follow the model's floating dtype (float64 in the differential test, float32 in training).
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.delta = self._uniform(-1)  # ATAS.py:154: U(-eps, eps) once before training
        self.v = torch.zeros(n, device=ctx.device, dtype=self.dtype)  # ATAS.py:162
        # Data-parallel runs: the global step at which this rank last wrote each example (bench/core/distributed.py)
        self.stamp = torch.full((n,), -1.0, dtype=torch.float64, device=ctx.device)

    # -- schedule of the state ----------------------------------------------------------------------------------
    def warming_up(self, epoch: int) -> bool:
        """0-based ``epoch`` takes the constant step (ATAS.py:103: 1-based epoch <= warmup_epochs)."""
        return epoch < self.warmup

    def resets_at(self, epoch: int) -> bool:
        """delta is redrawn before 0-based ``epoch`` (ATAS.py:164-166, scaled: module docstring)."""
        return epoch + 1 in self.resets

    def _uniform(self, epoch: int) -> Tensor:
        gen = torch.Generator(device=self.ctx.device)
        gen.manual_seed((self.ctx.seed * 1_000_003 + 7919 * (epoch + 2)) % (1 << 63))
        u = torch.rand(self.shape, generator=gen, device=self.ctx.device, dtype=self.dtype)
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
        x0 = torch.clamp(x + self.delta[idx, chan, rows, cols].to(x.dtype), 0.0, 1.0)  # ATAS.py:95-97
        with attack_context(self.model, eval_mode=True):  # adv_attack.py:40-45
            x0.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(self.model(x0), y), [x0])
        with torch.no_grad():
            gnorm2 = g.flatten(1).pow(2).sum(1)
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            if self.warming_up(step.epoch):  # ATAS.py:114-122: constant step eps, v untouched
                alpha = torch.full_like(y, eps, dtype=x.dtype)
                at_min = at_max = zero
            else:  # adv_attack.py:47-49, ATAS.py:113
                v = hp.beta * self.v[batch.idx] + (1 - hp.beta) * gnorm2.to(self.v.dtype)
                self.v[batch.idx] = v
                raw = raw_step_sizes(v, hp.step_scale, hp.c).to(x.dtype)
                alpha = raw.clamp(hp.min_step_size, hp.max_step_size)
                at_min = (raw <= hp.min_step_size).to(x.dtype).mean()
                at_max = (raw >= hp.max_step_size).to(x.dtype).mean()
            x_adv = x0 + alpha.view(-1, 1, 1, 1) * g.sign()  # adv_attack.py:51-53
            x_adv = torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)
            # ATAS.py:135: write back; the same gather indices scatter the window (un-flipped) into the buffer.
            self.delta[idx, chan, rows, cols] = (x_adv - x).to(self.delta.dtype)
            self.stamp[batch.idx] = step.global_step
        logits = self.model(x_adv)  # ATAS.py:124-128, train mode (the loop's)
        loss = F.cross_entropy(logits, y)
        return {"loss": loss, "adv_acc": (logits.argmax(1) == y).float().mean(), "step_size": alpha.mean(),
                "step_at_min": at_min, "step_at_max": at_max, "grad_norm": gnorm2.sqrt().mean()}

    def sync_state(self, world):

        stamp = self.stamp.clone()
        merge_latest(self.delta, stamp)  # every example's buffers from the rank that trained on it
        merge_latest(self.v, self.stamp)

    def state_dict(self):
        return {"delta": self.delta.clone(), "v": self.v.clone()}

    def load_state_dict(self, state):
        if tuple(state["delta"].shape) != self.shape or state["v"].shape != self.v.shape:
            raise ValueError(f"atas: checkpointed buffers {tuple(state['delta'].shape)}, {tuple(state['v'].shape)} "
                             f"do not match this run's {self.shape}, {tuple(self.v.shape)}")
        self.delta = state["delta"].to(self.ctx.device, self.dtype).clone()
        self.v = state["v"].to(self.ctx.device, self.dtype).clone()

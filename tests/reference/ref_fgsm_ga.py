"""Reference for FGSM-GA: one training iteration of tml-epfl/understanding-fast-adv-training train.py (commit
ceed494) with ``--attack=fgsm --attack_init=zero --grad_align_cos_lambda=0.2`` (README command), transcribed for
this project (not copied) as plain torch, line by line:

- :94 ``SGD(model.parameters(), lr=lr_max, momentum=0.9, weight_decay=args.weight_decay)`` (:39 default 5e-4);
- :111 + utils.py:333-335 the cyclic schedule ``np.interp([t], [0, n_epochs * 2 // 5, n_epochs], [0, lr_max, 0])``;
  :127-128 evaluated at ``t = epoch - 1 + (i + 1) / len(train_batches)`` (epochs are 1-based there: :117-125 run
  an epoch 0 of ONE iteration without an optimizer step, to log statistics at init; not transcribed, see below);
- :141-170, FGSM from zero: :144 ``delta = zeros_like(X, requires_grad=True)``; :152 ``X_adv = clamp(X + delta, 0,
  1)``; :153-154 train-mode forward, mean CE; :160 ``grad = autograd.grad(loss, delta, create_graph=double_bp)``,
  :162 detached; :164 ``eps * sign(grad)``; :166-169 ``delta = clamp(delta + fgsm_alpha * eps * sign, -eps, eps)``
  (fgsm_alpha 1.25, :37; the warm-up of :168 is for SVHN only); :170 ``delta = clamp(X + delta, 0, 1) - X``;
- :186-189 ``delta.detach()``; train-mode forward of ``X + delta``; mean CE;
- :191-200 GradAlign: :193 ``grad2 = get_input_grad(..., delta_init='random_uniform', backprop=True)`` =
  utils.py:70-91: delta ~ U(-eps, eps) (utils.py:147-151, ``uniform_``), train-mode forward of ``X + delta`` (NOT
  clamped to [0, 1]), ``autograd.grad(..., create_graph=True)``; :194 keep the samples whose ``grad`` (the FGSM
  gradient above) and ``grad2`` both have a non-zero l2 norm; :195-199 normalize each (utils.py:312-314), cosine
  per sample; :200 ``reg = lambda * (1 - cos.mean())``;
- :202-207 ``loss += reg``; ``opt.zero_grad()``; backward; ``opt.step()``.
- :89-90 + utils.py:317-330 the model is re-initialized before training: Conv2d weights ~ N(0, sqrt(2 / n)) with
  n = k_h * k_w * out_channels, Linear weights ~ N(0, sqrt(2 / in_features)), biases 0, BatchNorm2d weight 1, bias 0
  (drawn from the global CUDA RNG there; from an explicit CPU generator here, so both sides can share draws);
- utils.py:20-31 ``clamp(X, l, u) = torch.max(torch.min(X, u), l)`` with the bounds as 1-element tensors. The
  FGSM gradient of :160 flows through it, and at a pixel exactly on a bound (x = 0 or 1: the zero padding of the
  random crop, saturated pixels) the element-wise min/max TIE. What torch gives the input there is its own rule:
  the code's Dockerfile pins torch 1.4.0, whose tools/autograd/derivatives.yaml has (unchanged from 2018 until
  pytorch PR #59669, June 2021, released in 1.10; read in the stored forks gchanan/pytorch@029a6de and
  Kiyosora/pytorch@0e8acd9) ``max(self, other)``: self <- grad masked where ``self <= other``, other <- grad
  masked where ``self > other``; ``min(self, other)``: self <- grad masked where ``self >= other``, other <- grad
  masked where ``self < other``: at a tie the whole gradient goes to the bound, none to the pixel. ``TIE_RULE``
  below selects that rule ("torch1.4", as run) or today's torch.max/torch.min ("today": half to each side).

Deliberate differences from the file, none of which changes the algorithm: CPU, and X's dtype for every tensor
the code makes in fp32 (the clamp bounds and the uniform delta: utils.py:23-30, :148), so that float64 runs
compare; no apex (the README command's --half_prec: O1 mixed precision with dynamic loss scaling, :102-105,
:155-158, utils.py:83-86, undone exactly in exact arithmetic); no epoch 0 (it changes no weight; it only moves
BatchNorm's running statistics, which 3 x 390 x 30 later train-mode forwards overwrite with momentum 0.1).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LAMBDA = 0.2  # README: --grad_align_cos_lambda=0.2
FGSM_ALPHA = 1.25  # train.py:37
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4  # train.py:94, :39


class _MaxTorch14(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.max(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g.masked_fill(a <= b, 0), None  # the bounds never need a gradient here


class _MinTorch14(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.min(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g.masked_fill(a >= b, 0), None


def clamp(X, lo, hi, tie_rule="torch1.4"):  # utils.py:20-31
    lo = torch.full((1,), lo, dtype=X.dtype) if not torch.is_tensor(lo) else lo
    hi = torch.full((1,), hi, dtype=X.dtype) if not torch.is_tensor(hi) else hi
    if tie_rule == "torch1.4":
        return _MaxTorch14.apply(_MinTorch14.apply(X, hi), lo)
    return torch.max(torch.min(X, hi), lo)


def initialize_weights(module, generator):  # utils.py:317-330, applied with model.apply at train.py:90
    if isinstance(module, nn.Conv2d):
        n = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        module.weight.data.normal_(0, math.sqrt(2. / n), generator=generator)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Linear):
        n = module.in_features
        module.weight.data.normal_(0, math.sqrt(2. / n), generator=generator)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.BatchNorm2d):
        module.weight.data.fill_(1)
        module.bias.data.zero_()


def sgd(model, lr_max):
    return torch.optim.SGD(model.parameters(), lr=lr_max, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def lr_at(epoch_1based, i, n_batches, n_epochs, lr_max):  # train.py:127, utils.py:333-335
    t = epoch_1based - 1 + (i + 1) / n_batches
    return np.interp([t], [0, n_epochs * 2 // 5, n_epochs], [0, lr_max, 0])[0]


def l2_norm_batch(v):  # utils.py:312-314
    return (v ** 2).sum([1, 2, 3]) ** 0.5


def get_input_grad(model, X, y, eps, delta_init="none", backprop=False):  # utils.py:70-91 (fp32 path)
    if delta_init == "none":
        delta = torch.zeros_like(X, requires_grad=True)
    else:  # 'random_uniform': utils.py:147-151
        delta = torch.zeros(X.shape, dtype=X.dtype)
        delta.uniform_(-eps, eps)
        delta.requires_grad = True
    output = model(X + delta)
    loss = F.cross_entropy(output, y)
    grad = torch.autograd.grad(loss, delta, create_graph=backprop)[0]
    if not backprop:
        grad = grad.detach()
    return grad


def step(model, opt, X, y, *, eps, lr, lam=LAMBDA, tie_rule="torch1.4"):
    """One iteration (train.py:126-207) at learning rate ``lr``; returns the logged pieces."""
    opt.param_groups[0].update(lr=lr)  # :128
    double_bp = lam > 0  # :78
    delta = torch.zeros_like(X, requires_grad=True)  # :144
    X_adv = clamp(X + delta, 0, 1, tie_rule)  # :152
    output = model(X_adv)
    loss = F.cross_entropy(output, y)
    grad = torch.autograd.grad(loss, delta, create_graph=double_bp)[0]  # :160
    grad = grad.detach()
    argmax_delta = eps * torch.sign(grad)  # :164
    delta.data = clamp(delta.data + FGSM_ALPHA * argmax_delta, -eps, eps)  # :169
    delta.data = clamp(X + delta.data, 0, 1) - X  # :170
    delta = delta.detach()  # :186
    output = model(X + delta)  # :188
    ce = F.cross_entropy(output, y)
    loss = ce
    reg = torch.zeros((), dtype=X.dtype)  # :191
    if lam != 0.0:
        grad2 = get_input_grad(model, X, y, eps, delta_init="random_uniform", backprop=True)  # :193
        nnz = (l2_norm_batch(grad) != 0) * (l2_norm_batch(grad2) != 0)  # :194
        grad1, grad2 = grad[nnz], grad2[nnz]
        grad1_normalized = grad1 / l2_norm_batch(grad1)[:, None, None, None]
        grad2_normalized = grad2 / l2_norm_batch(grad2)[:, None, None, None]
        cos = torch.sum(grad1_normalized * grad2_normalized, (1, 2, 3))  # :199
        reg = reg + lam * (1.0 - cos.mean())  # :200
    loss = loss + reg  # :202
    opt.zero_grad()  # :205-207
    loss.backward()
    opt.step()
    return {"ce": ce.detach(), "reg": reg.detach(), "loss": loss.detach(), "fgsm_grad": grad, "x_adv": X + delta,
            "kept": int(nnz.sum()) if lam != 0.0 else len(y)}

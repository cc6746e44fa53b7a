"""Reference for PGD-AT: an independent transcription of P2333/Bag-of-Tricks-for-AT (at ebf1e9b) train_cifar.py,
run as its README's baseline command (--attack pgd --norm l_inf --epsilon 8 --attack-iters 10 --pgd-alpha 2
--epochs 110 --lr-schedule piecewise --optimizer momentum --weight_decay 5e-4 --batch-size 128 --BNeval;
restarts 1, lrdecay base, no mixup / early-stopped PGD / label smoothing / other tricks). Written for this project
from the public code (never copied); each line cites its source.

Transcription choices (none changes what is computed):
- ``normalize`` (:21-25, the CIFAR-10 mean/std) is the identity: this project's models take [0, 1] inputs.
- The attack takes the gradient with ``loss.backward()`` as the code does (:186); the parameter gradients it
  accumulates are cleared by ``opt.zero_grad()`` (:774) before the training backward.
- The random start ``delta.uniform_(-eps, eps)`` (:125) draws from the global generator in the input's dtype.
- The input-gradient statistic of :788 and the logging sums (:791-796) are left out (no effect on the model).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# get_args() defaults and the README's command
EPOCHS = 110  # :227
LR_MAX = 0.1  # :229
EPSILON = 8 / 255  # :233 (--epsilon 8), :420
ATTACK_ITERS = 10  # :235
PGD_ALPHA = 2 / 255  # :237 (--pgd-alpha 2), :422
WEIGHT_DECAY = 5e-4  # :262
BATCH_SIZE = 128  # :267
lower_limit, upper_limit = 0, 1  # :27


def normalize(X):
    return X  # :24-25 (mean/std normalization): identity in this project


def clamp(X, lower_limit, upper_limit):
    return torch.max(torch.min(X, upper_limit), lower_limit)  # :30-31


def attack_pgd(model, X, y, epsilon, alpha, attack_iters, restarts=1, BNeval=True):
    """:104-218 with norm='l_inf', no mixup, no early stop, plain CE (no DLR/CW/multitarget/adaptive/fast_better)."""
    max_loss = torch.zeros(y.shape[0], dtype=X.dtype)  # :112
    max_delta = torch.zeros_like(X)  # :113
    if BNeval:  # :115-116
        model.eval()
    for _ in range(restarts):  # :118
        delta = torch.zeros_like(X)  # :123
        delta.uniform_(-epsilon, epsilon)  # :124-125
        delta = clamp(delta, lower_limit - X, upper_limit - X)  # :134
        delta.requires_grad = True  # :135
        for _ in range(attack_iters):  # :140
            output = model(normalize(X + delta))  # :141
            index = slice(None, None, None)  # :151 (no early stop)
            loss = F.cross_entropy(output, y)  # :185 (mean)
            loss.backward()  # :186
            grad = delta.grad.detach()  # :187
            d = delta[index, :, :, :]  # :195
            g = grad[index, :, :, :]  # :196
            x = X[index, :, :, :]  # :197
            d = torch.clamp(d + alpha * torch.sign(g), min=-epsilon, max=epsilon)  # :198-199
            d = clamp(d, lower_limit - x, upper_limit - x)  # :204
            delta.data[index, :, :, :] = d  # :205
            delta.grad.zero_()  # :206
        all_loss = F.cross_entropy(model(normalize(X + delta)), y, reduction="none")  # :211
        max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]  # :212
        max_loss = torch.max(max_loss, all_loss)  # :213
    if BNeval:  # :215-216
        model.train()
    return max_delta  # :218


def sgd(model: torch.nn.Module, lr: float = LR_MAX) -> torch.optim.Optimizer:
    # :496 (--optimizer momentum)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=WEIGHT_DECAY)


def lr_schedule(t: float, lr_max: float = LR_MAX) -> float:
    """:531-557, piecewise with lrdecay 'base' and no warm-up."""
    if t < 100:
        return lr_max
    if t < 105:
        return lr_max / 10.0
    return lr_max / 100.0


def train_step(model, opt, X, y, *, epoch: int = 0, i: int = 0, n: int = 1, set_lr: bool = False,
               epsilon=EPSILON, pgd_alpha=PGD_ALPHA, attack_iters=ATTACK_ITERS) -> torch.Tensor:
    """One iteration of :680-796 (model already in train mode, :668). ``set_lr`` applies :690-692."""
    model.train()  # :668
    if set_lr:
        epoch_now = epoch + (i + 1) / n  # :690
        opt.param_groups[0].update(lr=lr_schedule(epoch_now))  # :691-692
    delta = attack_pgd(model, X, y, epsilon, pgd_alpha, attack_iters, 1, BNeval=True)  # :703-708
    delta = delta.detach()  # :712
    adv_input = normalize(torch.clamp(X + delta[:X.size(0)], min=lower_limit, max=upper_limit))  # :721
    robust_output = model(adv_input)  # :723
    clean_input = normalize(X)  # :742
    output = model(clean_input)  # :744 (logged only; updates BatchNorm's running statistics)
    robust_loss = F.cross_entropy(robust_output, y)  # :763 (criterion = nn.CrossEntropyLoss(), :512)
    opt.zero_grad()  # :774
    robust_loss.backward()  # :775
    opt.step()  # :776
    clean_input = normalize(X)  # :779
    output = model(clean_input)  # :781 (logged only; updates BatchNorm's running statistics again)
    del output
    return robust_loss.detach()

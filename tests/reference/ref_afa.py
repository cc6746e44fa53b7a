"""Reference for AFA's contrastive loss and step.

1. ``SupConLoss``: an independent transcription of HobbitLong/SupContrast (at 66a8fe5) losses.py:11-106, the
   supervised contrastive loss of Khosla et al. 2020 as its authors' code computes it. Written for this project
   from the public code (never copied); each line cites its source. Only ``.to(device)`` is dropped (CPU) and
   the masks are built in the features' dtype (the code's float32 masks would round a float64 test's loss).
2. ``train_step``: AFA has NO public code. This is a plain transcription of the step as methods/afa.py's
   docstring specifies it (every choice there marked UNVERIFIED), written independently of methods/afa.py: it
   checks that the method implements its own specification, with SupCon taken from (1), PGD written out by hand
   (uniform start clamped to the box as Bag-of-Tricks-for-AT train_cifar.py:134, sign steps, projection) and the
   KL term as TRADES trades.py:81-82 (batch mean, target not detached).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SupConLoss(nn.Module):
    """losses.py:11-106."""

    def __init__(self, temperature=0.07, contrast_mode="all", base_temperature=0.07):  # :14-19
        super().__init__()
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature

    def forward(self, features, labels=None, mask=None):  # :21
        if len(features.shape) < 3:  # :38-40
            raise ValueError("`features` needs to be [bsz, n_views, ...]")
        if len(features.shape) > 3:  # :41-42
            features = features.view(features.shape[0], features.shape[1], -1)
        batch_size = features.shape[0]  # :44
        dtype = features.dtype
        if labels is not None and mask is not None:  # :45-46
            raise ValueError("Cannot define both `labels` and `mask`")
        elif labels is None and mask is None:  # :47-48 (SimCLR)
            mask = torch.eye(batch_size, dtype=dtype)
        elif labels is not None:  # :49-53
            labels = labels.contiguous().view(-1, 1)
            if labels.shape[0] != batch_size:
                raise ValueError("Num of labels does not match num of features")
            mask = torch.eq(labels, labels.T).to(dtype)
        else:  # :54-55
            mask = mask.to(dtype)
        contrast_count = features.shape[1]  # :57
        contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)  # :58
        if self.contrast_mode == "one":  # :59-61
            anchor_feature = features[:, 0]
            anchor_count = 1
        elif self.contrast_mode == "all":  # :62-64
            anchor_feature = contrast_feature
            anchor_count = contrast_count
        else:  # :65-66
            raise ValueError(f"Unknown mode: {self.contrast_mode}")
        anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), self.temperature)  # :69-71
        logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)  # :73
        logits = anchor_dot_contrast - logits_max.detach()  # :74
        mask = mask.repeat(anchor_count, contrast_count)  # :77
        logits_mask = torch.scatter(torch.ones_like(mask), 1,  # :79-84
                                    torch.arange(batch_size * anchor_count).view(-1, 1), 0)
        mask = mask * logits_mask  # :85
        exp_logits = torch.exp(logits) * logits_mask  # :88
        log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))  # :89
        mask_pos_pairs = mask.sum(1)  # :98
        mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)  # :99
        mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs  # :100
        loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos  # :103
        loss = loss.view(anchor_count, batch_size).mean()  # :104
        return loss  # :106


def two_views(z_clean: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """[bsz, 2, d] as main_supcon.py:220-221 stacks its two views (f1, f2)."""
    return torch.cat([z_clean.unsqueeze(1), z_adv.unsqueeze(1)], dim=1)


def embed(model, x, proj=None):
    h = model.features(x)
    return F.normalize(proj(h) if proj is not None else h, dim=1)


def attack(model, x, y, *, eps, step_size, steps, temperature, base_temperature, proj=None):
    """PGD (eval mode) maximizing SupCon([z(x) fixed; z(x')]), uniform start clamped to [0, 1]."""
    crit = SupConLoss(temperature=temperature, base_temperature=base_temperature)
    was = model.training
    model.eval()
    if proj is not None:
        proj.eval()
    with torch.no_grad():
        z_clean = embed(model, x, proj)
    x_adv = torch.clamp(x + torch.zeros_like(x).uniform_(-eps, eps), 0, 1)  # global RNG, the input's dtype
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = crit(two_views(z_clean, embed(model, x_adv, proj)), y)
        (g,) = torch.autograd.grad(loss, [x_adv])
        x_adv = torch.clamp(torch.min(torch.max(x_adv.detach() + step_size * g.sign(), x - eps), x + eps), 0, 1)
    model.train(was)
    if proj is not None:
        proj.train(was)
    return x_adv.detach()


def train_step(model, opt, x, y, *, eps, step_size=2 / 255, steps=10, temperature=0.1, base_temperature=0.07,
               ce_weight=1.0, trades_beta=0.0, proj=None) -> dict:
    """One AFA step as methods/afa.py specifies it; ``opt`` holds the model's (and the head's) parameters."""
    x_adv = attack(model, x, y, eps=eps, step_size=step_size, steps=steps, temperature=temperature,
                   base_temperature=base_temperature, proj=proj)
    model.train()
    if proj is not None:
        proj.train()
    b = len(y)
    h = model.features(torch.cat([x, x_adv]))  # one train-mode pass over both views
    z = F.normalize(proj(h) if proj is not None else h, dim=1)
    supcon = SupConLoss(temperature=temperature, base_temperature=base_temperature)(two_views(z[:b], z[b:]), y)
    logits = model.classifier(h)
    logits_clean, logits_adv = logits[:b], logits[b:]
    if trades_beta:
        ce = F.cross_entropy(logits_clean, y)
        kl = (1.0 / b) * nn.KLDivLoss(reduction="sum")(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1))
        loss = supcon + ce_weight * ce + trades_beta * kl
    else:
        ce = F.cross_entropy(logits_adv, y)
        loss = supcon + ce_weight * ce
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"loss": loss.detach(), "supcon": supcon.detach(), "ce": ce.detach()}

"""AFA: Adversarial Feature Alignment (Park et al. 2024, "Adversarial Feature Alignment: Balancing Robustness and
Accuracy in Deep Learning via Adversarial Training", arXiv 2402.12187), written from the paper's summary
(shared/papers/afa-summary.txt): the paper body and code are not available, so this is a defensible reading.

What the summary fixes: adversarial SUPERVISED contrastive learning on the feature extractor's (penultimate)
features; the adversarial examples are crafted to maximize feature misalignment, i.e. the contrastive loss itself;
positives are same-class samples (including the clean view), negatives the other classes; optionally a joint
objective with TRADES. Implemented, per batch (x, y) of size B:
    z(v) = h(v) / ||h(v)||_2                                   h = penultimate features (optionally a projection)
    SupCon(Z, Y) = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )
                   over the 2B views Z = [z(x); z(x')], Y = [y; y], P(i) = {p != i : Y_p = Y_i}   (Khosla et al. 2020)
    x' = PGD (L-inf eps, 10 steps of 2/255, uniform start, eval mode) maximizing SupCon([z(x).detach(); z(x')], Y)
    trades_beta = 0 ("AFA"):        L = SupCon + ce_weight CE(f(x'), y)
    trades_beta > 0 ("AFA+TRADES"): L = SupCon + ce_weight CE(f(x), y) + trades_beta KL(f(x) || f(x'))
with tau = 0.1 (Khosla et al.'s CIFAR temperature), KL batch-mean as in TRADES (yaodongyu/TRADES trades.py).
Public code checked: none exists for AFA; SupCon against HobbitLong/SupContrast losses.py (the loss as written
above, mask of same-label pairs without self-contrast, mean over anchors), TRADES against yaodongyu/TRADES.

Fidelity notes (every item is a choice the summary leaves open):
- One stage, jointly: the summary calls AFA "robust pre-training" of the feature extractor; its classifier stage
  (linear probe? fine-tuning?) is unknown. We train contrastive + CE together from scratch, so one model comes out.
- No projection head by default (``proj_dim = 0``): the summary puts the loss on the feature extractor's features.
  ``proj_dim > 0`` adds SupCon's 2-layer MLP head (``net["proj"]``, trained and checkpointed, not exported).
- Anchors: all 2B views (clean and adversarial) are anchors, as in SupCon with two views; each anchor has at
  least its other view as a positive. Khosla's extra factor tau / base_tau (0.1 / 0.07) is a constant rescaling
  and is left out (``ce_weight`` sets the balance).
- The attack maximizes SupCon with the clean features fixed (computed once, in eval mode); only x' moves.
  The "hard positive/negative mining" the summary mentions is read as what the softmax over similarities already
  does (hard negatives dominate the denominator); no explicit mining.
- CE: on x' for AFA (PGD-AT's loss); on clean x plus the KL term for AFA+TRADES (TRADES's loss). The TRADES term
  reuses the contrastive adversarial example (no second, KL-maximizing attack): one attack per step, same cost
  as PGD-AT.
- Both views go through the network in one forward pass (SupCon's concatenated batch: BatchNorm statistics of
  clean and adversarial images are mixed); TRADES does two passes.
- Recipe: PGD-AT's (Bag-of-Tricks: 110 epochs, lr 0.1, x0.1 at 100 and 105, wd 5e-4, batch 128); AFA's is unknown.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.config import TrainConfig
from bench.models import feature_extractor_and_head
from methods.base import Method, MethodError, register
from methods.pgd_at import PGDAT


def supcon_loss(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss L^sup_out (Khosla et al. 2020, eq. 2) of L2-normalized features z (N, d).

    Anchors without any positive are left out of the mean (they contribute nothing to learn from).
    """
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.t()) / temperature
    logits = logits.masked_fill(self_mask, float("-inf"))  # a sample is never its own contrast
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    # where() rather than multiplying: log_prob is -inf on the diagonal, and 0 * -inf would be nan
    per_anchor = -torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1) / n_pos.clamp(min=1)
    has_pos = n_pos > 0
    return per_anchor[has_pos].mean()


class _Embed(nn.Module):
    """x -> L2-normalized (projected) penultimate features: the space the contrastive loss and its attack use."""

    def __init__(self, model: nn.Module, proj: nn.Module | None):
        super().__init__()
        self.model, self.proj = model, proj
        self._feats, _ = feature_extractor_and_head(model)

    def forward(self, x: Tensor) -> Tensor:
        h = self._feats(x)
        return F.normalize(self.proj(h) if self.proj is not None else h, dim=1)


@register
class AFA(Method):
    name = "afa"
    parent = None
    summary = "adversarial feature alignment: adversarial supervised contrastive training (Park et al. 2024)"
    recipe = PGDAT.recipe  # AFA's own recipe is unknown: PGD-AT's (Bag-of-Tricks)

    @dataclass(frozen=True)
    class Hparams:
        temperature: float = 0.1  # SupCon on CIFAR (Khosla et al. 2020); AFA's value unknown
        steps: int = 10  # PGD-AT's attack budget (Madry et al.), AFA's unknown
        step_size: float = 2 / 255
        ce_weight: float = 1.0  # weight of the classifier's CE next to the contrastive loss
        trades_beta: float = 0.0  # 0: AFA; > 0: AFA+TRADES with this beta (TRADES: 6.0)
        proj_dim: int = 0  # 0: contrast the penultimate features; > 0: SupCon MLP head of this output size

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        if hp.temperature <= 0 or hp.trades_beta < 0 or hp.proj_dim < 0:
            raise MethodError(f"afa: temperature must be > 0 and trades_beta, proj_dim >= 0 (got {hp})")
        self.feats, self.w = feature_extractor_and_head(model)
        if hp.proj_dim:
            d = self.w.in_features
            self.net["proj"] = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, hp.proj_dim))
        self.embed = _Embed(model, self.net["proj"] if hp.proj_dim else None)

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        """x' maximizing SupCon([z(x); z(x')]) with the clean features fixed (model in eval mode, as every attack)."""
        modes = [(m, m.training) for m in self.embed.modules()]
        self.embed.eval()
        try:
            with torch.no_grad():
                z_clean = self.embed(x)
        finally:
            for m, flag in modes:
                m.training = flag
        labels = torch.cat([y, y])

        def objective(z_adv: Tensor, _y: Tensor) -> Tensor:
            return supcon_loss(torch.cat([z_clean, z_adv.float()]), labels, self.hp.temperature)

        return self.pgd(x, y, steps=self.hp.steps, step_size=self.hp.step_size, model=self.embed, loss=objective)

    def loss(self, batch, step):
        hp = self.hp
        x, y = batch.x, batch.y
        x_adv = self.attack(x, y)
        h = self.feats(torch.cat([x, x_adv]))  # one pass over both views (SupCon's batch)
        z = F.normalize(self.net["proj"](h) if hp.proj_dim else h, dim=1)
        contrast = supcon_loss(z.float(), torch.cat([y, y]), hp.temperature)
        logits_clean, logits_adv = self.w(h).float().chunk(2)
        out = {"supcon": contrast}
        if hp.trades_beta:
            out["ce"] = F.cross_entropy(logits_clean, y)
            out["kl"] = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1),
                                 reduction="batchmean")
            total = contrast + hp.ce_weight * out["ce"] + hp.trades_beta * out["kl"]
        else:
            out["ce"] = F.cross_entropy(logits_adv, y)
            total = contrast + hp.ce_weight * out["ce"]
        out["loss"] = total
        out["adv_acc"] = (logits_adv.argmax(1) == y).float().mean()
        out["clean_acc"] = (logits_clean.argmax(1) == y).float().mean()
        return out

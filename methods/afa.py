"""AFA: Adversarial Feature Alignment (Park et al. 2024, "Adversarial Feature Alignment: Balancing Robustness and
Accuracy in Deep Learning via Adversarial Training", arXiv 2402.12187), written from the paper's summary
(shared/papers/afa-summary.txt): the paper body and code are not available, so this is a defensible reading.

What the summary fixes: adversarial SUPERVISED contrastive learning on the feature extractor's (penultimate)
features; the adversarial examples are crafted to maximize feature misalignment, i.e. the contrastive loss itself;
positives are same-class samples (including the clean view), negatives the other classes; optionally a joint
objective with TRADES. Implemented, per batch (x, y) of size B:
    z(v) = h(v) / ||h(v)||_2                                   h = penultimate features (optionally a projection)
    SupCon(Z, Y) = (tau / tau_b) mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )
                   over the 2B views Z = [z(x); z(x')], Y = [y; y], P(i) = {p != i : Y_p = Y_i}   (Khosla et al. 2020,
                   eq. 2; an anchor with no positive contributes 0 and still counts in the mean)
    x' = PGD (L-inf eps, 10 steps of 2/255, uniform start clamped to [0, 1], eval mode) maximizing
         SupCon([z(x).detach(); z(x')], Y)
    trades_beta = 0 ("AFA"):        L = SupCon + ce_weight CE(f(x'), y)
    trades_beta > 0 ("AFA+TRADES"): L = SupCon + ce_weight CE(f(x), y) + trades_beta KL(f(x) || f(x'))
with tau = 0.1 (Khosla et al.'s CIFAR temperature), tau_b = 0.07, KL batch-mean as in TRADES (yaodongyu/TRADES
trades.py:81).

Public code checked: none exists for AFA. The contrastive loss is HobbitLong/SupContrast losses.py ``SupConLoss``
(at 66a8fe5; :14-19 temperature and base_temperature 0.07; :53 same-label mask; :58 views stacked view-major,
i.e. [all view 0; all view 1] = our [z(x); z(x')]; :62-64 contrast_mode 'all': every view is an anchor;
:69-74 logits z_i.z_a / tau, max-shifted; :79-85 self-contrast masked out of numerator and denominator; :89
log_prob; :98-100 mean over positives, anchors without positives divided by 1 (so their loss is 0); :103 the
factor -(tau / base_tau); :104 mean over ALL anchors), and main_supcon.py:181 builds it as
``SupConLoss(temperature=opt.temp)``: base_temperature stays 0.07. ``supcon_loss`` below equals it in float64
(value and gradient), tests/reference/test_ref_afa.py, including classes with one sample and single-view batches.
The step (attack, CE, joint TRADES option) is checked against tests/reference/ref_afa.py, a transcription of the
equations above, not of any AFA code.

Fidelity notes (every item but SupCon's formula is a choice the summary leaves open: UNVERIFIED):
- SupCon (fixed, verified against SupContrast): we used to leave out the factor tau / base_tau (0.1 / 0.07 =
  1.43: the contrastive term was 0.7x SupConLoss's, i.e. its weight next to CE differed) and to drop anchors
  without a positive from the mean (SupConLoss counts them as 0; with AFA's two views every anchor has a positive,
  so this never mattered for AFA itself). ``base_temperature`` is now a hyperparameter, default SupConLoss's 0.07.
- One stage, jointly (UNVERIFIED): the summary calls AFA "robust pre-training" of the feature extractor; its
  classifier stage (linear probe? fine-tuning?) is unknown. We train contrastive + CE together from scratch, so one
  model comes out.
- No projection head by default (``proj_dim = 0``, UNVERIFIED): the summary puts the loss on the feature
  extractor's features. ``proj_dim > 0`` adds SupCon's 2-layer MLP head (``net["proj"]``, trained and
  checkpointed, not exported).
- Anchors (UNVERIFIED): all 2B views (clean and adversarial) are anchors, as SupCon with two views; each anchor has
  at least its other view as a positive.
- The attack (UNVERIFIED) maximizes SupCon with the clean features fixed (computed once, in eval mode); only x'
  moves. Its budget and start are PGD-AT's (Bag-of-Tricks: 10 steps of 2/255, uniform start CLAMPED to [0, 1]
  before the first gradient, eval mode). The "hard positive/negative mining" the summary mentions is read as what
  the softmax over similarities already does (hard negatives dominate the denominator); no explicit mining.
- CE (UNVERIFIED): on x' for AFA (PGD-AT's loss); on clean x plus the KL term for AFA+TRADES (TRADES's loss). The
  TRADES term reuses the contrastive adversarial example (no second, KL-maximizing attack): one attack per step,
  same cost as PGD-AT.
- Both views go through the network in one forward pass (UNVERIFIED; SupContrast main_supcon.py:209-221 does this
  for its two views: BatchNorm statistics of clean and adversarial images are mixed); TRADES does three passes.
- Recipe (UNVERIFIED): PGD-AT's (Bag-of-Tricks: 110 epochs, lr 0.1, x0.1 at 100 and 105, wd 5e-4, batch 128);
  AFA's is unknown. PGD-AT's two extra clean BatchNorm passes (methods/pgd_at.py) are not part of AFA.
- Under norm l2 (not in the paper or its code): the attack of ``bench.eval.attacks.pgd(norm="l2")``
  (docs/evaluation-threat-models.md) with the step scaled by eps / (8/255) (``Method.attack_step``), on the same
  embedding objective.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.architectures import feature_extractor_and_head
from methods.base import COUNT, POSITIVE, WEIGHT, Method, MethodError, Range, register
from methods.pgd_at import PGDAT


def supcon_loss(z: Tensor, labels: Tensor, temperature: float, base_temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss L^sup_out (Khosla et al. 2020, eq. 2) of L2-normalized features z (N, d), as
    SupContrast's ``SupConLoss`` computes it for ``features`` of shape (N / V, V, d) stacked view-major:
    scaled by ``temperature / base_temperature`` (losses.py:103), anchors without any positive count as 0 in the
    mean over all N anchors (losses.py:98-104).
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
    return (temperature / base_temperature) * per_anchor.mean()


def _fp32(t: Tensor) -> Tensor:
    """Losses in at least fp32 under bf16 autocast; float64 (the reference tests) stays float64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


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
    label = "AFA"
    plan_seconds_per_epoch = 60.0  # not in AFD Table 5: PGD on a contrastive loss over [x, x_adv] + CE, above TRADES (53)
    plan_seconds_guessed = True
    parent = None
    summary = "adversarial feature alignment: adversarial supervised contrastive training (Park et al. 2024)"
    recipe = PGDAT.recipe  # AFA's own recipe is unknown: PGD-AT's (Bag-of-Tricks)

    ranges = {"temperature": POSITIVE, "base_temperature": POSITIVE, "steps": COUNT, "step_size": Range(0.0),
              "ce_weight": WEIGHT, "trades_beta": WEIGHT, "proj_dim": Range(0)}

    @dataclass(frozen=True)
    class Hparams:
        temperature: float = 0.1  # SupCon on CIFAR (Khosla et al. 2020); AFA's value unknown
        base_temperature: float = 0.07  # SupContrast losses.py:15 default, kept by main_supcon.py:181
        steps: int = 10  # PGD-AT's attack budget (Madry et al.), AFA's unknown
        step_size: float = 2 / 255
        ce_weight: float = 1.0  # weight of the classifier's CE next to the contrastive loss
        trades_beta: float = 0.0  # 0: AFA; > 0: AFA+TRADES with this beta (TRADES: 6.0)
        proj_dim: int = 0  # 0: contrast the penultimate features; > 0: SupCon MLP head of this output size

    @classmethod
    def data_parallel_problem(cls, hp):
        # SupCon contrasts every image of the batch with every other: on k processes each rank would contrast
        # its B/k shard only (fewer positives and negatives: another loss), and the attack maximises that loss too
        return ("its supervised contrastive loss couples the whole batch; on several processes each rank would "
                "contrast only its shard")

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        if hp.temperature <= 0 or hp.base_temperature <= 0 or hp.trades_beta < 0 or hp.proj_dim < 0:
            raise MethodError(f"afa: temperature, base_temperature must be > 0 and trades_beta, proj_dim >= 0 "
                              f"(got {hp})")
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
            return supcon_loss(torch.cat([_fp32(z_clean), _fp32(z_adv)]), labels, self.hp.temperature,
                               self.hp.base_temperature)

        # PGD-AT's start (Bag-of-Tricks train_cifar.py:134): clamped to [0, 1] before the first gradient
        return self.pgd(x, y, steps=self.hp.steps, step_size=self.hp.step_size, model=self.embed, loss=objective,
                        clamp_start=True)

    def loss(self, batch, step):
        hp = self.hp
        x, y = batch.x, batch.y
        x_adv = self.attack(x, y)
        h = self.feats(torch.cat([x, x_adv]))  # one pass over both views (SupCon's batch)
        z = F.normalize(self.net["proj"](h) if hp.proj_dim else h, dim=1)
        contrast = supcon_loss(_fp32(z), torch.cat([y, y]), hp.temperature, hp.base_temperature)
        logits_clean, logits_adv = _fp32(self.w(h)).chunk(2)
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

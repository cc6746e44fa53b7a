"""The L2 threat model: PGD in L2, AutoAttack standard with ``norm='L2'``, and the evaluation under them.

Every adversarial example satisfies ``||x_adv - x||_2 <= eps`` per image (the norm over all its pixels and channels)
and ``0 <= x_adv <= 1``.

* :func:`pgd_l2` -- PGD-20 as in the L2 evaluations of Madry et al. / Rice et al. 2020 (``attack_pgd`` with
  ``norm='l_2'``): a random start inside the ball (a uniformly random direction scaled to a radius drawn uniformly in
  [0, eps]), steps along the L2-normalised gradient of the summed cross-entropy, each followed by the projection onto
  the ball and then onto the pixel range (clamping moves every pixel towards x, so the point stays in the ball).
  The evaluation's step is eps / 4.
* :func:`autoattack_l2` -- pyautoattack's ``AutoAttack(norm='L2', version='standard')``, as RobustBench runs it:
  APGD-CE, APGD-T (9 target classes), FAB-T (9 targets), Square (5,000 queries), one restart each; an example is
  robust only if it is correct clean, AutoAttack's own record says so and its returned ``x_adv`` is still correct.
* :class:`L2Evaluator` -- :class:`bench.eval.evaluator.Evaluator` with both attacks replaced by these: the same
  chunks, resume, fp32 eval-mode copy, per-example worst case and AA <= PGD-20 <= clean check; ``eps`` is the L2
  radius. Its stored chunks are keyed apart from the L-inf ones.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# l2_norms, project_l2 and random_start_l2 live with the attack that uses them (training and evaluation alike);
# importable from here as before.
from bench.eval.attacks import (ContiguousInput, attack_context, l2_norms, pgd, predictions,  # noqa: F401
                                project_l2, random_start_l2)
from bench.eval.evaluator import Evaluator
from bench.eval.indicators import IndicatorOptions
from bench.models.architectures import feature_extractor_and_head

PGD_STEP_FRACTION = 0.25  # step = eps / 4 (the L2 PGD of Rice et al. 2020 and RobustBench's L2 checks)


def pgd_l2(model, x: Tensor, y: Tensor, *, eps: float, step_size: float, steps: int, random_start: bool = True,
           eval_mode: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """L2 PGD maximising the summed cross-entropy; a detached ``x_adv`` in the L2 ball around ``x`` and in [0, 1]:
    :func:`bench.eval.attacks.pgd` with ``norm="l2"`` (the one L2 PGD of the suite, also the training attack), which
    also handles the model (eval mode, frozen parameters, all restored)."""
    if not (eps > 0 and step_size >= 0 and steps >= 0):
        raise ValueError(f"eps must be > 0, step_size and steps >= 0, got {eps}, {step_size}, {steps}")
    return pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, random_start=random_start, loss="ce",
               eval_mode=eval_mode, generator=generator, norm="l2")


def autoattack_l2(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, batch_size: int = 500, device=None,
                  seed: int = 0) -> dict:
    """pyautoattack's AutoAttack standard in L2 on ``model`` (left in its own layout; its input gradient is made
    contiguous); ``{"robust": BoolTensor[N], "accuracy": float, "x_adv": Tensor}`` with the per-example worst case
    of its record and a re-prediction of ``x_adv``. Modes, requires_grad flags and the global RNG are restored.
    For fewer than 10 classes APGD-T / FAB-T target ``num_classes - 1`` classes, as the L-inf wrapper does."""
    from pyautoattack import AutoAttack  # imported lazily: heavy, and only needed for evaluation

    if x.dim() != 4 or len(x) != len(y):
        raise ValueError(f"expected x of shape (N, C, H, W) and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else x.device
    device = torch.device(device)
    x, y = x.detach().contiguous(), y.detach()
    aa_logger = logging.getLogger("auto-attack")
    old_level = aa_logger.level
    try:
        with attack_context(model, eval_mode=True), \
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            aa_logger.setLevel(logging.WARNING)  # its progress lines off, its warnings (checks) kept
            wrapped = ContiguousInput(model).eval()
            with torch.no_grad():
                num_classes = wrapped(x[:1].to(device)).shape[1]
            if num_classes < 4:
                raise ValueError(f"AutoAttack standard needs at least 4 classes (its targeted DLR loss); this model "
                                 f"has {num_classes}: evaluate without it (n_aa = 0)")
            adversary = AutoAttack(wrapped, norm="L2", eps=eps, version="standard", device=device, seed=seed)
            adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, num_classes - 1)
            adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, num_classes - 1)
            x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
            x_adv = x_adv.detach().to(x.device)
            clean_ok = predictions(wrapped, x, batch_size, device) == y
            adv_ok = predictions(wrapped, x_adv, batch_size, device) == y
    finally:
        aa_logger.setLevel(old_level)
    recorded_ok = y_adv.to(y.device) == y
    robust = clean_ok & adv_ok & recorded_ok
    if (robust != recorded_ok).any():
        warnings.warn(f"AutoAttack (L2) record and re-prediction disagree on {(robust != recorded_ok).sum().item()} "
                      "examples; using the worst case", RuntimeWarning)
    # AutoAttack keeps only perturbations inside the ball; checked, not trusted (tolerance for float error).
    worst = l2_norms(x_adv - x).max().item() if len(x) else 0.0
    if worst > eps + 1e-4 or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError(f"AutoAttack returned x_adv outside the L2 threat model (max L2 {worst:.6f} > eps {eps})")
    return {"robust": robust, "accuracy": robust.float().mean().item(), "x_adv": x_adv}


@dataclass
class L2Evaluator(Evaluator):
    """The evaluator under the L2 threat model: ``eps`` is the L2 radius, PGD-20 is :func:`pgd_l2` (step eps / 4,
    the same per-chunk seeding of the random start), AutoAttack is :func:`autoattack_l2`. Everything else (chunks,
    resume, worst case, order check, fp32 eval copy, the feature gap, here under the L2 attack) is the evaluator's.
    The indicators of attack failure (``bench.eval.indicators``) are built on L-inf attacks (a sign step, noise in
    the L-inf ball, an L-inf eps sweep), so they are not measured here (``checks`` is switched off): an L2 result
    holds no ``indicators`` and no verdict, and docs/evaluation-checks.md says so."""

    def __post_init__(self):
        self.checks = IndicatorOptions(enabled=False)

    def _pgd_chunk(self, model: nn.Module, k: int, n: int, features, checks: bool = False) -> dict[str, Tensor]:
        x, y = self._chunk(k, n)
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 1_000_003 * k)
        feats = features if features is not None else feature_extractor_and_head(model)[0]
        x_adv = pgd_l2(model, x, y, eps=self.eps, step_size=PGD_STEP_FRACTION * self.eps, steps=self.cfg.pgd_steps,
                       generator=gen)
        with torch.inference_mode():
            ok = model(x_adv).argmax(1) == y
            gap = (feats(x) - feats(x_adv)).flatten(1).abs().amax(1)
        return {"ok": ok.cpu(), "gap": gap.float().cpu()}

    def _aa_chunk(self, model: nn.Module, k: int) -> dict[str, Tensor]:
        i = k * self.cfg.batch_size
        j = min(i + self.cfg.batch_size, self.cfg.n_aa, len(self.test))
        x = self.test.images[i:j].float().div(255)
        aa = autoattack_l2(model, x, self.test.labels[i:j], eps=self.eps, batch_size=self.cfg.batch_size,
                           device=self.device, seed=self.seed)
        return {"ok": aa["robust"].cpu()}

    def _key(self, model: nn.Module, features: nn.Module | None) -> str:
        # The L-inf key with the threat model added: an L2 chunk is never read as an L-inf one, nor the reverse.
        return hashlib.sha256(f"l2:{super()._key(model, features)}".encode()).hexdigest()[:16]

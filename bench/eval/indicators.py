"""Indicators of attack failure, measured on every evaluation: numbers that say when a robust accuracy is more
likely a failed attack than a robust model (docs/evaluation-checks.md says what each means, its threshold, its
source and what to do when it trips).

The cheap indicators come out of the PGD-20 that the evaluation runs anyway, on every example it attacks:

* ``zero_gradients``: the input gradient of PGD's first step is all zero or not finite (Pintor et al. 2022,
  "unavailable gradients"; AutoAttack's ``check_zero_gradients``);
* ``pgd_loss_rising``: PGD's loss still rising over its last quarter of steps on an example it did not break
  (Pintor et al., "incomplete optimization");
* ``pgd_best_not_returned``: an iterate along PGD's path was misclassified but the returned point is not
  (Pintor et al., "silent success": the attack's bookkeeping lost what it found);
* ``unstable_predictions``: a second forward pass of the same input gives other outputs (Athalye et al. 2018,
  randomness; AutoAttack's ``check_randomized``);
* ``noise_beats_pgd`` / ``fgsm_beats_pgd``: one random corner of the eps-ball, or one FGSM step, misclassifies an
  example that PGD-20 did not (Carlini et al. 2019, checklist: a weaker attack must not beat a stronger one).

The costlier ones run on the first ``IndicatorOptions.n_costly`` examples of the PGD set:

* ``unbounded_pgd``: PGD with a radius covering the whole pixel range leaves correct examples (Carlini et al.
  2019; Pintor et al., "unconstrained attack failure");
* ``eps_sweep_rises``: accuracy under PGD rises as eps grows, over clean, eps/2, eps, 2 eps and the unbounded
  radius (Carlini et al. 2019).

AutoAttack's own checks (``bench.eval.attacks.AAChecks``) are stored beside them: ``aa_randomized``,
``aa_probabilities``, ``aa_dynamic``, ``aa_zero_gradients``, ``aa_square_beats_whitebox``.

An indicator is ``tripped`` when its value is above its threshold; an evaluation with any tripped indicator is
marked ``unreliable`` (the sorted names). None of them proves a number right: adaptive attacks remain the
evaluator's job (Tramer et al. 2020).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from bench.eval.attacks import AAChecks, PGDTrace, fgsm, margin, pgd


@dataclass(frozen=True)
class IndicatorOptions:
    """Which indicators run, and on how many examples. A runtime choice: kept out of run and evaluation ids."""

    enabled: bool = True
    # the first n examples of the PGD set get the eps sweep and the unbounded PGD (each a PGD of sweep_steps steps)
    n_costly: int = 50
    sweep: tuple[float, ...] = (0.5, 1.0, 2.0)  # radii of the sweep, in units of the evaluated eps
    sweep_steps: int = 10  # step size 2.5 eps / steps (Madry et al.), random start
    unbounded_eps: float = 1.0  # the whole [0, 1] pixel range: no model is robust there


# name -> (threshold, what it measures). Tripped when value > threshold. The thresholds are set from the honest
# models (docs/evaluation-checks.md lists their values): a share of examples, or an accuracy (difference).
INDICATORS: dict[str, tuple[float, str]] = {
    "zero_gradients": (0.001, "share of examples whose first PGD input gradient is zero or not finite"),
    "pgd_loss_rising": (0.05, "share of examples PGD did not break whose margin fell over its last quarter of "
                               "steps by more than what is left of it"),
    "pgd_best_not_returned": (0.01, "share of examples misclassified along PGD's path but not at its end"),
    "unstable_predictions": (0.0, "share of examples whose outputs differ between two forward passes"),
    "noise_beats_pgd": (0.01, "share of examples a random eps-ball corner breaks and PGD does not"),
    "fgsm_beats_pgd": (0.02, "share of examples one FGSM step breaks and PGD does not"),
    "unbounded_pgd": (0.01, "accuracy under PGD with a radius of the whole pixel range"),
    "eps_sweep_rises": (0.02, "largest rise of PGD accuracy from one radius to the next larger one"),
    "aa_randomized": (0.0, "AutoAttack's check: repeated forward passes differ (1 = warned)"),
    "aa_probabilities": (0.0, "AutoAttack's check: the outputs are probabilities, not logits (1 = warned)"),
    "aa_dynamic": (0.0, "AutoAttack's check: the forward pass calls autograd (1 = warned)"),
    "aa_zero_gradients": (0.0, "AutoAttack's check: largest share of attacked examples with zero gradient"),
    "aa_square_beats_whitebox": (0.002, "AutoAttack's check: accuracy drop of Square below the white-box attacks"),
}
CHEAP = ("zero_gradients", "pgd_loss_rising", "pgd_best_not_returned", "unstable_predictions", "noise_beats_pgd",
         "fgsm_beats_pgd")
RISE_TAIL = 0.25  # the "last steps": the last quarter of PGD's steps
LOGIT_TOL = 1e-4  # outputs differ: their L2-normalised difference is above this (AutoAttack's alpha)


def cheap_flags(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, x_adv: Tensor, trace: PGDTrace,
                final_logits: Tensor, *, eps: float, generator: torch.Generator) -> dict[str, Tensor]:
    """Per-example flags of the cheap indicators for one chunk, from PGD's trace and its final logits (the
    evaluator's forward pass of x_adv), plus one more forward pass, one noise corner and one FGSM step."""
    t0 = time.perf_counter()
    final_logits = final_logits.float()
    survived = final_logits.argmax(1) == y
    flags = {"zero_gradients": trace.bad_first_grad, **path_flags(trace, final_logits, survived)}
    with torch.inference_mode():
        again = model(x_adv).float()
        flags["unstable_predictions"] = differ(final_logits, again)
        corner = eps * torch.sign(torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5)
        flags["noise_beats_pgd"] = survived & (model(torch.clamp(x + corner, 0.0, 1.0)).argmax(1) != y)
    x_f = fgsm(model, x, y, eps=eps)
    with torch.inference_mode():
        flags["fgsm_beats_pgd"] = survived & (model(x_f).argmax(1) != y)
    out = {name: flags[name].cpu() for name in CHEAP}
    out["check_seconds"] = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    return out


def path_flags(trace: PGDTrace, final_logits: Tensor, survived: Tensor) -> dict[str, Tensor]:
    """``pgd_loss_rising`` and ``pgd_best_not_returned`` from PGD's per-iterate margins and misclassifications.

    Still rising, per example PGD did not break: its margin fell over the last quarter of the steps by more than
    what is left of it, so another quarter at that pace would break it. Measured on the honest models, PGD-20 with
    step 0.003 at eps 8/255 leaves 1-4% of the examples so, and at eps 0.1 (a path of 0.06 < eps) 8-22%."""
    margins = torch.stack(trace.margins + [margin(final_logits, trace.y)])  # (T + 1, N)
    steps = len(margins) - 1
    tail = max(1, round(steps * RISE_TAIL))
    drop = margins[-1 - tail] - margins[-1]
    rising = survived & (drop > 0) & (margins[-1] < drop)
    lost = survived & torch.stack(trace.wrong).any(0) if trace.wrong else torch.zeros_like(survived)
    return {"pgd_loss_rising": rising, "pgd_best_not_returned": lost}


def differ(a: Tensor, b: Tensor) -> Tensor:
    """Per example: another prediction, or outputs whose L2-normalised difference is above LOGIT_TOL."""
    na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
    nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
    return (a.argmax(1) != b.argmax(1)) | ((na - nb).norm(dim=1) > LOGIT_TOL) | ~torch.isfinite(b).all(1)


def costly_flags(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, eps: float, opts: IndicatorOptions,
                 seed: int) -> dict[str, Tensor]:
    """Per-example correctness over the radii of the sweep for one chunk: ``radii_ok`` (N, 2 + len(sweep)):
    clean, each sweep radius (random start, the same seed for each), and the unbounded radius (no random start:
    a model whose gradient is unavailable stays where it is; an example counts there only if the model gives one
    of the chunk's clean images another class than its label, see below)."""
    with torch.inference_mode():
        cols = [model(x).argmax(1) == y]
    for mult in opts.sweep:
        e = mult * eps
        gen = torch.Generator(device=x.device).manual_seed(seed)
        x_adv = pgd(model, x, y, eps=e, step_size=2.5 * e / opts.sweep_steps, steps=opts.sweep_steps,
                    random_start=True, generator=gen)
        with torch.inference_mode():
            cols.append(model(x_adv).argmax(1) == y)
    e = opts.unbounded_eps
    x_adv = pgd(model, x, y, eps=e, step_size=2.5 * e / opts.sweep_steps, steps=opts.sweep_steps, random_start=False)
    with torch.inference_mode():
        preds = model(x_adv).argmax(1)
        # At radius 1 any image is reachable, so an example can be broken only if the model gives some image
        # another class than its label. Counted: the examples it gives another class to one of the chunk's clean
        # images. A model that answers one class for every input (a constant classifier: real robustness, no
        # failed attack) is not flagged for the examples of that class.
        beatable = (model(x).argmax(1)[None, :] != y[:, None]).any(1)
        cols.append((preds == y) & beatable)
    return {"radii_ok": torch.stack(cols, 1).cpu()}


def entry(name: str, value: float, n: int) -> dict:
    threshold, what = INDICATORS[name]
    return {"value": float(value), "threshold": threshold, "tripped": bool(value > threshold), "n": int(n),
            "what": what}


def summarise(pgd_flags: dict[str, Tensor] | None, radii_ok: Tensor | None, aa_checks: Tensor | None,
              n_aa: int) -> dict[str, dict]:
    """The indicators of one evaluation from the per-example flags of its chunks (``pgd_flags``: CHEAP name ->
    bool (N,); ``radii_ok``: bool (M, columns) of :func:`costly_flags`; ``aa_checks``: (chunks, 5) of
    ``AAChecks.KEYS``)."""
    out: dict[str, dict] = {}
    if pgd_flags is not None:
        for name in CHEAP:
            f = pgd_flags[name]
            out[name] = entry(name, f.float().mean().item() if len(f) else 0.0, len(f))
    if radii_ok is not None and len(radii_ok):
        acc = radii_ok.float().mean(0)
        out["unbounded_pgd"] = entry("unbounded_pgd", acc[-1].item(), len(radii_ok))
        out["eps_sweep_rises"] = entry("eps_sweep_rises", max(0.0, (acc[1:] - acc[:-1]).max().item()), len(radii_ok))
    if aa_checks is not None and len(aa_checks):
        worst = aa_checks.double().amax(0)
        for i, name in enumerate(AAChecks.KEYS):
            out[name] = entry(name, worst[i].item(), n_aa)
    return out


def unreliable(indicators: dict[str, dict]) -> list[str]:
    return sorted(name for name, d in indicators.items() if d["tripped"])


def verdict(names: list[str]) -> str:
    """The printed line: which indicators tripped, or that none did."""
    return ("evaluation potentially unreliable: " + ", ".join(names)) if names else \
        "evaluation checks: no indicator of attack failure tripped"

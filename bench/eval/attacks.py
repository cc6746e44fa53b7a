"""Attacks used for training and evaluation: PGD (L-inf or L2), FGSM and an AutoAttack wrapper.

All attacks work in [0, 1] pixel space (models contain no normalization, see ``bench.models.architectures``):
the adversarial example always satisfies ``||x_adv - x||_inf <= eps`` (``||x_adv - x||_2 <= eps`` per image under
``norm="l2"``) and ``0 <= x_adv <= 1``.

* :func:`pgd` -- Madry et al. 2017 sign-gradient PGD with a uniform random start, as in TRADES
  ``pgd_attack_cifar10.py`` (evaluation: PGD-20, step 0.003) and the training attacks of PGD-AT / AFT;
  ``loss="kl"`` is the TRADES inner maximization (start ``x + 0.001 N(0, 1)``, maximize
  ``KL(softmax f(x) || softmax f(x_adv))``, summed). ``norm="l2"`` is the L2 PGD of Rice et al. 2020
  (``attack_pgd`` with ``norm='l_2'``): a random start in the L2 ball (:func:`random_start_l2`), steps along the
  L2-normalised gradient, each iterate projected onto the ball and then the pixel range (:func:`project_l2`).
* :func:`fgsm` -- one PGD step (FGSM from zero, or FGSM-RS with ``random_start=True``).
* :func:`autoattack` -- ``pyautoattack`` (the PyPI packaging of fra31/auto-attack), ``version="standard"``
  (APGD-CE, APGD-T, FAB-T, Square), returning a per-example worst-case robust flag.

Model handling shared by the gradient attacks: the model is put in eval mode while attacking (BN statistics
frozen, dropout off) and every submodule's own train/eval flag is restored afterwards, even on error;
parameters are temporarily set to ``requires_grad=False`` (gradients are taken w.r.t. the input only with
``torch.autograd.grad``, so nothing is ever accumulated into ``param.grad``) and their flags are restored.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bench.core.config import NORMS

LossArg = str | Callable[[Tensor, Tensor], Tensor]


@contextlib.contextmanager
def attack_context(model: Callable, eval_mode: bool) -> Iterator[None]:
    """Eval mode + frozen parameters for the duration of an attack; restores exactly what it found.

    Per-module training flags are saved (not just ``model.training``) because models can legitimately mix
    modes, e.g. a frozen eval-mode teacher inside a training student; ``model.train(flag)`` would clobber that.
    """
    if not isinstance(model, nn.Module):  # a plain function: nothing to switch or restore
        with torch.enable_grad():
            yield
        return
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        # No parameter gradients are needed for an input attack; skipping them also saves backward compute.
        for p, _ in grads:
            p.requires_grad_(False)
        # Attacks are often called from evaluation code running under torch.no_grad(); they need autograd.
        with torch.enable_grad():
            yield
    finally:
        for m, flag in modes:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    # Project onto the L-inf ball around x, then onto the image box [0, 1] (the box is the tighter constraint
    # near 0/1; doing it second keeps x_adv both in the ball and a valid image).
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def l2_norms(d: Tensor) -> Tensor:
    """Per-image L2 norm of a batch (N, ...) -> (N,)."""
    return d.flatten(1).norm(p=2, dim=1)


def _per_image(v: Tensor, x: Tensor) -> Tensor:
    # (N,) -> (N, 1, 1, ...): one value per image, broadcast over its pixels
    return v.view(-1, *[1] * (x.dim() - 1))


def project_l2(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Onto the L2 ball of radius eps around each image, then onto [0, 1]. The clamp after the projection only
    moves pixels towards x (x is in [0, 1]), so the result stays in the ball."""
    delta = x_adv - x
    scale = (eps / l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
    return torch.clamp(x + delta * _per_image(scale, x), 0.0, 1.0)


def random_start_l2(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """x plus a random point of the ball: a Gaussian direction (uniform on the sphere) times a radius U(0, eps),
    clamped to [0, 1]. Draws N(0, 1) for every pixel, then U(0, 1) per image, from ``generator``."""
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    radius = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype) * eps
    unit = direction / _per_image(l2_norms(direction).clamp_min(1e-12), x)
    return torch.clamp(x + unit * _per_image(radius, x), 0.0, 1.0)


def _step(x_adv: Tensor, grad: Tensor, x: Tensor, *, eps: float, step_size: float, norm: str) -> Tensor:
    """One PGD step from ``x_adv`` (detached) along ``grad``, projected onto the ball and the pixel range."""
    if norm == "l2":
        # A zero gradient (a saturated example) gives a zero step rather than a division by zero.
        unit = grad / _per_image(l2_norms(grad).clamp_min(1e-12), x)
        return project_l2(x_adv + step_size * unit, x, eps)
    return _project(x_adv + step_size * grad.sign(), x, eps)


def pgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    loss: LossArg = "ce",
    eval_mode: bool = True,
    generator: torch.Generator | None = None,
    clamp_start: bool = True,
    trace: "PGDTrace | None" = None,
    norm: str = "linf",
) -> Tensor:
    """PGD maximizing ``loss``; returns a detached ``x_adv`` in the eps-ball around ``x`` and in [0, 1].

    Args:
        model: any callable (usually an ``nn.Module``) mapping images to logits.
        x, y: clean images in [0, 1] and integer labels (``y`` is unused, may be None, for ``loss="kl"``).
        eps, step_size, steps: radius, sign-step size and number of steps (``steps=0`` returns the start point).
        random_start: start at ``x + U(-eps, eps)``; ignored for ``loss="kl"``.
        clamp_start: clamp the start point to [0, 1] before the first gradient. ``False`` takes the first
            gradient at the raw start, as TRADES ``pgd_whitebox`` / ``trades_loss``, AFD ``tl+sl.py`` and
            ``ARREST.py`` do (10-20% of the pixels of a CIFAR x_adv then differ: 10.2% for PGD-20, 13.8% for the
            TRADES attack, 20.1% for ARREST.py's PGD-10, measured on small CNNs); every later iterate is
            projected and clamped either way, and with ``steps=0`` the returned start is always clamped.
        loss: ``"ce"`` (summed cross-entropy), ``"kl"`` (TRADES), or a callable ``(logits, y) -> scalar``.
        eval_mode: put the model in eval mode while attacking (its previous modes are restored).
        generator: optional RNG for the random start (reproducible attacks without touching the global RNG).
        trace: optional :class:`PGDTrace`, handed every iterate's logits and input gradient (the attack's
            checks, ``bench.eval.indicators``); it only reads them, so ``x_adv`` is the same with or without it.
        norm: ``"linf"`` (sign steps, the L-inf ball) or ``"l2"`` (``eps`` the per-image L2 radius, steps of length
            ``step_size`` along the L2-normalised gradient, the L2 ball; the random start is
            :func:`random_start_l2`, already clamped to [0, 1] as in Rice et al.'s ``attack_pgd``, so
            ``clamp_start`` changes nothing there). ``loss="kl"`` starts at ``x + 0.001 N(0, 1)`` under both
            norms, as TRADES' own L2 branch (trades.py, ``distance='l_2'``) does.
    """
    _check_pgd_args(y, eps=eps, step_size=step_size, steps=steps, loss=loss)
    if norm not in NORMS:
        raise ValueError(f"unknown PGD norm {norm!r}; known: {', '.join(NORMS)}")
    x = x.detach()
    with attack_context(model, eval_mode):
        x_adv, objective = _start_and_objective(model, x, y, eps=eps, random_start=random_start, loss=loss,
                                                generator=generator, norm=norm)
        if clamp_start or steps == 0:
            x_adv = torch.clamp(x_adv, 0.0, 1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            (grad,) = torch.autograd.grad(objective(logits), [x_adv])
            if trace is not None:
                trace.record(logits, grad)
            x_adv = _step(x_adv.detach(), grad, x, eps=eps, step_size=step_size, norm=norm)
    return x_adv.detach()


class PGDTrace:
    """What :func:`pgd` saw along its path, per example, for the checks of a failed attack (Pintor et al. 2022):
    the margin ``z_y - max_{j != y} z_j`` of every iterate (``margins``: one tensor per step, iterate 0 = the
    start; the margin, not the cross-entropy, because its sign is the prediction and it moves about linearly
    with a sign step), whether the iterate was misclassified (``wrong``), and whether the first input gradient
    was zero or not finite (``bad_first_grad``). Computed from detached copies, outside the attack's graph."""

    def __init__(self, y: Tensor):
        self.y = y
        self.margins: list[Tensor] = []
        self.wrong: list[Tensor] = []
        self.bad_first_grad: Tensor | None = None

    @torch.no_grad()
    def record(self, logits: Tensor, grad: Tensor) -> None:
        logits = logits.detach().float()
        self.margins.append(margin(logits, self.y))
        self.wrong.append(logits.argmax(1) != self.y)
        if self.bad_first_grad is None:
            g = grad.detach().flatten(1)
            self.bad_first_grad = (g == 0).all(1) | ~torch.isfinite(g).all(1)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Per example: the true class's logit minus the largest other one (negative = misclassified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.amax(1)


def _check_pgd_args(y: Tensor | None, *, eps: float, step_size: float, steps: int, loss: LossArg) -> None:
    """:func:`pgd`'s arguments, refused before any model call or random draw."""
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"eps, step_size and steps must be >= 0, got {eps}, {step_size}, {steps}")
    # An unknown loss name must fail, never silently fall back to something else.
    if isinstance(loss, str) and loss not in ("ce", "kl"):
        raise ValueError(f"unknown PGD loss {loss!r}; known: 'ce', 'kl', or a callable (logits, y) -> loss")
    if not isinstance(loss, str) and not callable(loss):
        raise TypeError(f"loss must be 'ce', 'kl' or a callable, got {type(loss).__name__}")
    if loss != "kl" and y is None:
        raise ValueError("labels y are required unless loss='kl'")


def _start_and_objective(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None,
    *,
    eps: float,
    random_start: bool,
    loss: LossArg,
    generator: torch.Generator | None,
    norm: str = "linf",
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """PGD's unclamped start point and the objective it maximizes, inside :func:`pgd`'s attack context (the
    TRADES target is computed in the attack's own mode). Draws from ``generator`` exactly once: N(0, 1) for
    ``"kl"``, U(0, 1) for an L-inf random start (an L2 one: :func:`random_start_l2`'s draws, clamped)."""
    if loss == "kl":
        # TRADES: the target distribution is f(x) on the clean input, fixed during the attack, computed in
        # the same (eval) mode as the attack itself.
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # TRADES (trades.py) does not clamp its tiny start: clamp_start=False takes the first gradient there.
        x_adv = x + 0.001 * noise

        def objective(logits: Tensor) -> Tensor:
            # KL(p_clean || p_adv) summed over the batch (TRADES uses size_average=False).
            return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")

        return x_adv, objective
    if random_start and norm == "l2":
        x_adv = random_start_l2(x, eps, generator)
    elif random_start:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x + (2.0 * u - 1.0) * eps
    else:
        x_adv = x.clone()
    if loss == "ce":

        def objective(logits: Tensor) -> Tensor:
            # Sum, not mean: only the gradient's sign is used, and a sum avoids vanishing tiny grads.
            return F.cross_entropy(logits, y, reduction="sum")

    else:

        def objective(logits: Tensor) -> Tensor:
            return loss(logits, y)

    return x_adv, objective


def fgsm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    random_start: bool = False,
    step_size: float | None = None,
    eval_mode: bool = True,
    generator: torch.Generator | None = None,
    clamp_start: bool = True,
) -> Tensor:
    """FGSM (one sign step of ``step_size``, default ``eps``) on cross-entropy, projected to the eps-ball.

    ``random_start=True`` gives FGSM-RS (Wong et al. 2020: start in U(-eps, eps), they use step 1.25 eps).
    ``generator`` is an extra, optional keyword (same meaning as in :func:`pgd`).
    """
    return pgd(
        model, x, y, eps=eps, step_size=eps if step_size is None else step_size, steps=1,
        random_start=random_start, loss="ce", eval_mode=eval_mode, generator=generator, clamp_start=clamp_start,
    )


class ContiguousGradient(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (NCHW).

    pyautoattack's zero-gradient check (APGD-T) does ``grad.view(B, -1)``, which crashes on a non-contiguous
    gradient (methods.md, measured pitfall). A channels_last conv returns a channels_last input gradient even
    for an NCHW input. In the installed pyautoattack 0.2.0 APGD accumulates that gradient into
    ``torch.zeros_like(x)``, so in practice only a non-contiguous INPUT crashes it (checked); this guard and the
    NCHW weights below make us independent of that implementation detail.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


class ContiguousInput(nn.Module):
    """What AutoAttack sees: contiguous input in, model's logits out, contiguous input-gradient back."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(ContiguousGradient.apply(x.contiguous()))


def _to_contiguous_format(model: nn.Module) -> list[tuple[nn.Parameter, Tensor]]:
    """Make every non-contiguous (e.g. channels_last) parameter NCHW-contiguous; return (param, old data).

    Done per parameter through ``.data`` so the Parameter objects (and any optimizer holding them) stay
    the same, and so exactly the original storage can be put back afterwards (weights are frozen meanwhile).
    """
    changed = []
    for p in model.parameters():
        if not p.is_contiguous():
            changed.append((p, p.data))
            p.data = p.data.contiguous()
    return changed


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, batch_size: int, device) -> Tensor:
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).to(x.device) for i in range(0, len(x), batch_size)])


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    version: str = "standard",
    batch_size: int = 500,
    device=None,
    seed: int = 0,
    contiguous_weights: bool = True,
) -> dict:
    """Run pyautoattack's AutoAttack (L-inf) and return the per-example worst case.

    Returns ``{"robust": BoolTensor[N], "accuracy": float, "x_adv": Tensor, "checks": dict}`` (``checks``: what
    AutoAttack's own checks warned, :class:`AAChecks`). An example is robust only if it is classified correctly
    clean, AutoAttack's own bookkeeping found no successful attack on it, AND the model (eval mode) still classifies
    the returned ``x_adv`` correctly -- the AND makes the result the worst case over all four attacks even if one
    of the two sources were wrong (fra31/auto-attack#45).

    ``contiguous_weights``: attack with the weights made NCHW-contiguous for the duration (and restored), the safe
    default for a caller's training model; ``False`` keeps their layout (the evaluator's private channels_last copy:
    faster, and the input gradient is still handed to AutoAttack contiguous by ``ContiguousGradient``).
    Side effects avoided: the model's train/eval flags, requires_grad flags and memory format are restored,
    and the global torch RNG (which AutoAttack reseeds with ``seed``) is restored afterwards.
    Fidelity note: for fewer than 10 classes the numbers of APGD-T / FAB-T target classes (9 in the standard
    version) are capped at ``num_classes - 1`` (otherwise APGD-T indexes past the last class).
    """
    from pyautoattack import AutoAttack  # imported lazily: heavy, and only needed for evaluation

    if version not in ("standard", "plus", "rand"):
        raise ValueError(f"unknown AutoAttack version {version!r}; known: 'standard', 'plus', 'rand'")
    if x.dim() != 4 or len(x) != len(y):
        raise ValueError(f"expected x of shape (N, C, H, W) and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    device = _attack_device(model, x, device)

    # Contiguous NCHW input (the pitfall in methods.md); no autograd history from the caller.
    x, y = x.detach().contiguous(), y.detach()
    changed: list[tuple[nn.Parameter, Tensor]] = []
    heard, aa_logger = AAChecks(len(x)), logging.getLogger("auto-attack")
    old_level = aa_logger.level
    try:
        with attack_context(model, eval_mode=True), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # Back to contiguous format so the conv backward yields NCHW input gradients (with the
            # ContiguousGradient guard as a second line of defence for models that permute internally).
            changed = _to_contiguous_format(model) if contiguous_weights else []
            # pyautoattack logs progress at DEBUG/INFO; keep its WARNING-level checks (randomized defense, zero
            # gradients, Square beating white-box attacks), silence the rest; ``heard`` stores the checks' warnings.
            aa_logger.setLevel(logging.WARNING)
            aa_logger.addHandler(heard)
            x_adv, clean_ok, adv_ok, bookkeeping_ok = _run_autoattack(
                AutoAttack, model, x, y, eps=eps, version=version, batch_size=batch_size, device=device, seed=seed)
    finally:
        aa_logger.removeHandler(heard)
        aa_logger.setLevel(old_level)
        for p, original in changed:  # give the caller back its (e.g. channels_last) weights, untouched
            p.data = original

    robust = _worst_case(x, x_adv, eps, clean_ok, adv_ok, bookkeeping_ok)
    return {"robust": robust, "accuracy": robust.float().mean().item(), "x_adv": x_adv, "checks": heard.values()}


class AAChecks(logging.Handler):
    """Collects the warnings of pyautoattack's checks (its ``checks.py``) while it runs, as numbers:

    * ``aa_randomized``: 1 when repeated forward passes gave other outputs (``check_randomized``);
    * ``aa_probabilities``: 1 when the outputs look like probabilities rather than logits (``check_range_output``);
    * ``aa_dynamic``: 1 when the forward pass itself calls autograd (``check_dynamic``);
    * ``aa_zero_gradients``: the largest share of the attacked examples with an all-zero gradient that APGD
      reported (``check_zero_gradients``);
    * ``aa_square_beats_whitebox``: how much lower Square, black-box, put the robust accuracy than the best
      white-box attack (``check_square_sr``; it warns above 0.002).
    """

    KEYS = ("aa_randomized", "aa_probabilities", "aa_dynamic", "aa_zero_gradients", "aa_square_beats_whitebox")

    def __init__(self, n: int):
        super().__init__(level=logging.WARNING)
        self.n = max(1, n)
        self.seen = dict.fromkeys(self.KEYS, 0.0)
        try:  # pyautoattack's dynamic-defense check counts autograd calls in a module-level dict it never resets
            from pyautoattack import checks
            checks.funcs.update(dict.fromkeys(checks.funcs, 0))
        except (ImportError, AttributeError):  # pragma: no cover - another packaging of AutoAttack
            pass

    def emit(self, record: logging.LogRecord) -> None:
        import re

        msg = record.getMessage()
        if "randomized defense" in msg:
            self.seen["aa_randomized"] = 1.0
        elif "probability distribution" in msg:
            self.seen["aa_probabilities"] = 1.0
        elif "dynamic defense" in msg:
            self.seen["aa_dynamic"] = 1.0
        elif "zero gradient" in msg:
            count = re.search(r"there are (?:tensor\()?(\d+)", msg)  # the count is printed as a tensor
            share = int(count.group(1)) / self.n if count else 1.0
            self.seen["aa_zero_gradients"] = max(self.seen["aa_zero_gradients"], share)
        elif "Square Attack has decreased" in msg:
            drop = re.search(r"of ([0-9.]+)%", msg)
            self.seen["aa_square_beats_whitebox"] = float(drop.group(1)) / 100 if drop else 1.0

    def values(self) -> dict[str, float]:
        return dict(self.seen)


def _attack_device(model: nn.Module, x: Tensor, device) -> torch.device:
    """``device`` if given, else the model's (its first parameter's), else the input's."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else x.device
    return torch.device(device)


def _run_autoattack(
    attack_cls: type,
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, version: str, batch_size: int, device: torch.device,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """AutoAttack itself, inside :func:`autoattack`'s contexts: ``(x_adv, clean_ok, adv_ok, bookkeeping_ok)``,
    the three flags per example (clean prediction, re-prediction of ``x_adv``, AutoAttack's own record).
    ``attack_cls`` is pyautoattack's ``AutoAttack``, imported by the caller."""
    wrapped = ContiguousInput(model).eval()
    with torch.no_grad():
        num_classes = wrapped(x[:1].to(device)).shape[1]
    adversary = attack_cls(wrapped, norm="Linf", eps=eps, version=version, device=device, seed=seed)
    if num_classes < 4:
        raise ValueError(f"AutoAttack standard needs at least 4 classes (its targeted DLR loss); this model "
                         f"has {num_classes}: evaluate without it (n_aa = 0)")
    if num_classes < 10:
        adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, num_classes - 1)
        adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, num_classes - 1)
    x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)

    x_adv = x_adv.detach().to(x.device)
    clean_ok = predictions(wrapped, x, batch_size, device) == y
    adv_ok = predictions(wrapped, x_adv, batch_size, device) == y
    bookkeeping_ok = y_adv.to(y.device) == y
    return x_adv, clean_ok, adv_ok, bookkeeping_ok


def _worst_case(x: Tensor, x_adv: Tensor, eps: float, clean_ok: Tensor, adv_ok: Tensor,
                bookkeeping_ok: Tensor) -> Tensor:
    """Robust only where all three sources agree; ``x_adv`` checked against the threat model, not trusted."""
    robust = clean_ok & adv_ok & bookkeeping_ok
    if (robust != bookkeeping_ok).any():
        # Re-prediction disagrees with AutoAttack's own record: nondeterminism or a model bug; keep worst case.
        warnings.warn(
            f"AutoAttack bookkeeping and re-prediction disagree on {(robust != bookkeeping_ok).sum().item()} examples; "
            "using the worst case", RuntimeWarning,
        )
    # AutoAttack only keeps perturbations inside the ball; check rather than trust (tolerance for float error).
    linf = (x_adv - x).abs().flatten(1).amax(1)
    if (linf > eps + 1e-5).any() or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError(f"AutoAttack returned x_adv outside the threat model (max L-inf {linf.max().item():.6f} > eps {eps})")
    return robust

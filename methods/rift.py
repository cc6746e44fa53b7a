"""RiFT: robust critical fine-tuning (Zhu et al., ICCV 2023, "Improving Generalization of Adversarial Training
via Robust Critical Fine-Tuning", arXiv 2308.02533).

Starting from an adversarially trained model theta_AT (a PGD-AT run), three stages:
(a) Module robust criticality, for every Conv2d/Linear weight theta_i (eq. 3 of the paper):
        MRC_i = max_{||dtheta_i||_2 <= ball ||theta_i||_2} R(theta_AT + dtheta_i) - R(theta_AT),   ball = 0.1,
    R = mean CE on a FIXED set of PGD-10 adversarial examples of theta_AT. Relaxed as in the code: SGD (lr 1, no
    momentum) ascent on theta_i alone, epoch by epoch over the set; after each epoch dtheta_i is rescaled onto the
    ball if it left it, R is measured, and the max over epochs is kept. The non-robust-critical module is
    argmin_i MRC_i.
(b) Fine-tune only that module's parameters on CLEAN data with CE (SGD lr 0.001, momentum 0.9, wd 5e-4, batch 128,
    10 epochs, x0.1 at epoch 5); everything else is frozen.
(c) Interpolate theta_a = (1 - a) theta_AT + a theta_FT over every state entry (BatchNorm buffers too), a in
    {0, 0.1, ..., 1}; keep the a with the best clean accuracy among those whose robust accuracy is no lower than
    theta_AT's minus 0.1 percentage points (paper, Sec. 4.3: "the point that most significantly improves the
    generalization while the corresponding adversarial robustness is no less than the original robustness by 0.1").
Public code checked: microsoft/robustlearn RiFT/main.py (``generate_adv_dataset``, ``layer_sharpness``, ``train``,
``main``), RiFT/utils.py (``interpolation``, ``evaluate_cifar_robustness``), RiFT/optimizer.py, RiFT/README.md.

Fidelity notes:
- Data for MRC and for choosing a. The code attacks the TEST split for MRC and reports the interpolation curve on
  the test set (the README then picks a by eye). We never touch the test split: both use a fixed held-out subset
  of the TRAINING split, min(heldout_max, ceil(heldout_fraction * N)) examples chosen by a permutation with its
  own generator (seed 0; the folder data sets are sorted by class, so "the last N" would be one class). They are
  not excluded from fine-tuning (the loop trains on the whole split) and the parent saw them: a limitation.
- MRC set size and cost: the code uses the 10,000 test images, batch 512, 10 ascent epochs. Defaults here:
  heldout_max = 1000 (CPU budget), batch 512, 10 epochs; ``heldout_max``/``mrc_epochs`` scale it down further.
  ``module`` names the module directly (main.py --layer) and skips stage (a).
- Attack step: the code's torchattacks PGD uses alpha = 2/225 (a typo for 2/255, both for MRC and for its PGD-10
  robustness evaluation); we use 2/255.
- MRC details kept from the code: the model is in eval mode throughout, the loss is the batch-mean CE, the
  projection happens only at epoch ends (within an epoch the ascent may leave the ball; every MRC value is
  measured on the ball), ``max_loss`` starts at 0 (so MRC >= -R(theta_AT)), only ``.weight`` tensors are perturbed.
- Fine-tuning: the code trains the parameters whose name contains ``--layer`` (the module's weight and bias, if
  any); we train exactly the chosen module's parameters. The model is in train mode (``model.train()``), so the
  running statistics of EVERY BatchNorm layer keep updating while their affine parameters stay frozen; we follow
  that (the loop's train mode). Their augmentation pads by reflection; ours by zeros (the shared loader).
- theta_FT: the code keeps the epoch with the best TEST accuracy; we take the last epoch (no test-set selection).
- Choosing a: evaluated on the held-out subset with PGD-``select_pgd_steps`` (default 10, the code's robustness
  evaluation; step 2/255, random start, eval mode) and clean accuracy. Ties in clean accuracy go to the smaller a
  (closer to theta_AT). Integer buffers (BatchNorm's num_batches_tracked) are interpolated and rounded, so a = 0
  and a = 1 give the endpoints exactly.
- The MRC stage runs in the first ``on_epoch_start``, outside the loop's per-epoch timer; its wall time is
  recorded as ``rift_mrc_seconds`` in the result's "extra".
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.attacks import pgd
from bench.config import EvalConfig, TrainConfig
from bench.data import Split
from bench.evaluate import Evaluator
from methods.base import Method, MethodError, register

# main.py defaults: SGDM lr 0.001, momentum 0.9, wd 5e-4, 10 epochs, MultiStepLR([epochs // 2], gamma 0.1), batch 128.
RIFT_RECIPE = TrainConfig(epochs=10, lr=0.001, momentum=0.9, weight_decay=5e-4, schedule="piecewise",
                          milestones=(0.5,), gamma=0.1, batch_size=128)


# -- pure pieces (tested directly) ---------------------------------------------------------------------------
def candidate_modules(model: nn.Module) -> list[str]:
    """Every Conv2d/Linear module (layer_sharpness's candidates), in registration order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def project_to_ball(w: Tensor, w0: Tensor, ball: float) -> Tensor:
    """w0 + dw, with dw rescaled onto ||dw|| = ball ||w0|| if it is longer (layer_sharpness's rescale)."""
    diff = w - w0
    ratio = torch.linalg.norm(diff) / torch.linalg.norm(w0)
    return w0 + diff * (ball / ratio) if ratio > ball else w


def interpolate_state(theta_at: dict[str, Tensor], theta_ft: dict[str, Tensor], a: float) -> dict[str, Tensor]:
    """(1 - a) theta_AT + a theta_FT for every state entry; integer entries are rounded back to their dtype."""
    out = {}
    for k, v0 in theta_at.items():
        v1 = theta_ft[k]
        mixed = (1 - a) * v0.double() + a * v1.double()  # double: a = 0 and a = 1 reproduce the endpoints exactly
        out[k] = (mixed if v0.dtype.is_floating_point else mixed.round()).to(v0.dtype)
    return out


def select_alpha(curve: list[dict], tolerance: float) -> float:
    """The a with the best clean accuracy among those whose robust accuracy >= robust(a=0) - tolerance.

    ``curve`` holds {"a", "clean", "robust"} with accuracies as fractions, ``tolerance`` in the same unit
    (0.1 percentage points = 0.001). a = 0 is always eligible; ties go to the smaller a.
    """
    base = next(p for p in curve if p["a"] == 0)
    eligible = [p for p in curve if p["robust"] >= base["robust"] - tolerance - 1e-12]
    return max(eligible, key=lambda p: (p["clean"], -p["a"]))["a"]


@torch.no_grad()
def _mean_ce(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    total = sum(F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum").item()
                for i in range(0, len(x), batch_size))
    return total / len(x)


def worst_case_loss(model: nn.Module, weight: str, x: Tensor, y: Tensor, *, ball: float, epochs: int, lr: float,
                    batch_size: int, generator: torch.Generator) -> tuple[float, list[float]]:
    """Relaxed max of R over ||dtheta|| <= ball ||theta|| for one weight tensor of ``model`` (eval mode, frozen).

    Returns (max R over the epochs, ||dtheta|| / ||theta|| at each measured point). The weight is restored.
    """
    w = model.get_parameter(weight)
    w0 = w.detach().clone()
    w.requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr)  # plain SGD, lr 1 in the code
    max_loss, ratios = 0.0, []
    try:
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=generator).split(batch_size):
                opt.zero_grad(set_to_none=True)
                (-F.cross_entropy(model(x[idx]), y[idx])).backward()  # gradient ASCENT on R
                opt.step()
            with torch.no_grad():
                w.copy_(project_to_ball(w.detach(), w0, ball))
                ratios.append(float(torch.linalg.norm(w - w0) / torch.linalg.norm(w0)))
            max_loss = max(max_loss, _mean_ce(model, x, y, batch_size))
    finally:
        with torch.no_grad():
            w.copy_(w0)
        w.requires_grad_(False)
    return max_loss, ratios


@register
class RiFT(Method):
    name = "rift"
    parent = "adversarial"
    summary = "robust critical fine-tuning: fine-tune the least robust-critical module, interpolate (Zhu et al. 2023)"
    recipe = RIFT_RECIPE

    @dataclass(frozen=True)
    class Hparams:
        module: str = ""  # fine-tune this module and skip MRC (main.py --layer); "" = argmin MRC
        ball: float = 0.1  # relative radius of the weight perturbation (layer_sharpness epsilon=0.1; paper)
        heldout_max: int = 1000  # held-out training examples for MRC and for choosing a (code: 10,000 test images)
        heldout_fraction: float = 0.1  # ... but at most this fraction of the training split
        mrc_epochs: int = 10  # ascent epochs per module (layer_sharpness: range(10))
        mrc_lr: float = 1.0  # layer_sharpness: SGD(lr=1)
        mrc_batch_size: int = 512  # layer_sharpness: batch_size=512
        attack_steps: int = 10  # generate_adv_dataset: PGD steps=10
        attack_step_size: float = 2 / 255  # code: alpha=2/225 (typo for 2/255)
        alpha_steps: int = 10  # a in {0, 1/10, ..., 1} (utils.interpolation: np.arange(0, 1.1, 0.1))
        select_tolerance_pp: float = 0.1  # robustness may drop by at most this many percentage points (paper)
        select_pgd_steps: int = 10  # PGD steps when choosing a (code: evaluate_cifar_robustness, PGD-10)

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        if ctx.parent_model is None:
            raise MethodError("rift fine-tunes an adversarially trained parent, but the run has none")
        self.candidates = candidate_modules(model)
        if hp.module and hp.module not in self.candidates:
            raise MethodError(f"rift.module '{hp.module}' is not a Conv2d/Linear of {type(model).__name__}; "
                              f"known: {', '.join(self.candidates)}")
        self.chosen: str | None = None
        self.mrc: dict[str, float] = {}
        self.mrc_seconds = 0.0
        for p in model.parameters():  # nothing trains until the module is chosen
            p.requires_grad_(False)
        if hp.module:
            self._set_module(hp.module)

    # -- stage (a) --------------------------------------------------------------------------------------------
    def heldout(self) -> Split:
        """A fixed subset of the TRAINING split (never the test split): for MRC and for choosing a."""
        n_total = len(self.ctx.train)
        n = max(1, min(self.hp.heldout_max, math.ceil(self.hp.heldout_fraction * n_total)))
        idx = torch.randperm(n_total, generator=torch.Generator().manual_seed(0))[:n].sort().values
        return Split(self.ctx.train.images[idx], self.ctx.train.labels[idx])

    def compute_mrc(self) -> dict[str, float]:
        """MRC of every Conv2d/Linear weight of theta_AT (the frozen parent), on PGD examples of the parent."""
        hp, dev = self.hp, self.ctx.device
        probe = copy.deepcopy(self.ctx.parent_model).float().to(dev).eval()
        for p in probe.parameters():
            p.requires_grad_(False)
        split = self.heldout()
        x = split.images.to(dev).float().div(255)
        y = split.labels.to(dev)
        gen = torch.Generator(device=dev).manual_seed(self.ctx.seed)
        # The FIXED adversarial set: PGD-10 on theta_AT once, then held constant for every module.
        x_adv = torch.cat([pgd(probe, x[i:i + hp.mrc_batch_size], y[i:i + hp.mrc_batch_size], eps=self.ctx.eps,
                               step_size=hp.attack_step_size, steps=hp.attack_steps, generator=gen)
                           for i in range(0, len(x), hp.mrc_batch_size)])
        origin = _mean_ce(probe, x_adv, y, hp.mrc_batch_size)
        cpu_gen = torch.Generator().manual_seed(self.ctx.seed)  # batch order of the ascent
        mrc = {}
        for name in self.candidates:
            worst, _ = worst_case_loss(probe, f"{name}.weight", x_adv, y, ball=hp.ball, epochs=hp.mrc_epochs,
                                       lr=hp.mrc_lr, batch_size=hp.mrc_batch_size, generator=cpu_gen)
            mrc[name] = worst - origin
        return mrc

    def _set_module(self, name: str) -> None:
        self.chosen = name
        module = self.model.get_submodule(name)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in module.parameters():
            p.requires_grad_(True)

    def on_epoch_start(self, epoch: int) -> None:
        if self.chosen is not None:  # chosen by hparam, or restored from a checkpoint: no recomputation
            return
        t0 = time.perf_counter()
        self.mrc = self.compute_mrc()
        self.mrc_seconds = time.perf_counter() - t0
        self._set_module(min(self.mrc, key=self.mrc.get))

    # -- stage (b) --------------------------------------------------------------------------------------------
    def configure_optimizers(self, train):
        # Over ALL model parameters: the module is only known at the first epoch start, after this call. Frozen
        # parameters never get a gradient, and SGD skips parameters without one (no decay, no momentum).
        return [torch.optim.SGD(self.model.parameters(), lr=train.lr, momentum=train.momentum,
                                weight_decay=train.weight_decay, nesterov=train.nesterov)]

    def loss(self, batch, step):
        if self.chosen is None:
            raise MethodError("rift: no module chosen yet (on_epoch_start was not called)")
        logits = self.model(batch.x)  # CLEAN data
        loss = F.cross_entropy(logits, batch.y)
        return {"loss": loss, "clean_acc": (logits.argmax(1) == batch.y).float().mean()}

    def state_dict(self):
        return {"module": self.chosen, "mrc": dict(self.mrc), "mrc_seconds": self.mrc_seconds}

    def load_state_dict(self, state):
        if not state or state.get("module") is None:
            return
        self.mrc = dict(state["mrc"])
        self.mrc_seconds = float(state.get("mrc_seconds", 0.0))
        self._set_module(state["module"])

    # -- stage (c) --------------------------------------------------------------------------------------------
    def finalize(self, net, evaluate):
        hp = self.hp
        model = net["model"]
        theta_ft = {k: v.detach().clone() for k, v in model.state_dict().items()}
        theta_at = {k: v.detach().to(theta_ft[k].device) for k, v in self.ctx.parent_model.state_dict().items()}
        split = self.heldout()
        n = len(split)
        cfg = EvalConfig(n_clean=n, n_pgd=n, n_aa=0, pgd_steps=hp.select_pgd_steps,
                         pgd_step_size=hp.attack_step_size, batch_size=evaluate.cfg.batch_size)
        ev = Evaluator(split, cfg, self.ctx.eps, evaluate.device, seed=evaluate.seed)
        curve = []
        for i in range(hp.alpha_steps + 1):
            a = i / hp.alpha_steps
            model.load_state_dict(interpolate_state(theta_at, theta_ft, a))
            prepared = ev.prepare(model)
            curve.append({"a": a, "clean": float(ev.correct(prepared, n).float().mean()),
                          "robust": float(ev.pgd_correct(prepared, n).float().mean())})
        a = select_alpha(curve, hp.select_tolerance_pp / 100)
        model.load_state_dict(interpolate_state(theta_at, theta_ft, a))  # in place: the exported model
        return {"rift_module": self.chosen, "rift_mrc": dict(self.mrc), "rift_curve": curve, "rift_alpha": a,
                "rift_heldout": n, "rift_mrc_seconds": self.mrc_seconds}

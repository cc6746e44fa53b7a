"""RiFT: robust critical fine-tuning (Zhu et al., ICCV 2023, "Improving Generalization of Adversarial Training
via Robust Critical Fine-Tuning", arXiv 2308.02533), run the way its public code ran.

Starting from an adversarially trained model theta_AT (a PGD-AT run), three stages:
(a) Choose the module to fine-tune. The authors published the non-robust-critical module of each model and data
    set (RiFT/README.md, table under "The non-robust-critical module of each model on each dataset"):
        ResNet18   CIFAR-10/100 layer2.1.conv2,        Tiny-ImageNet layer3.1.conv2
        ResNet34   CIFAR-10/100 layer2.3.conv2,        Tiny-ImageNet layer3.5.conv2
        WRN-34-10  CIFAR-10 block1.layer.3.conv2,      CIFAR-100 and Tiny-ImageNet block1.layer.2.conv2
    and that module is what they fine-tuned (README demo: ``main.py --layer=layer2.1.conv2``). Our ``resnet18`` and
    ``wrn34_10`` use the same module names for the same layers (bench/models/architectures.py; RiFT/models/resnet.py ResNet18 =
    BasicBlock [2, 2, 2, 2], RiFT/models/wide_resnet.py depth 34 -> 5 blocks per stage, widths 16/160/320/640), so
    the table applies as it is (rule ``published``; ``cifar10-jpeg``, CIFAR-10 re-encoded, counts as CIFAR-10).
    Elsewhere (small_cnn, preact_resnet18, resnet50, zoo models, other data sets) the module is the argmin of the
    module robust criticality (eq. 3) over every Conv2d/Linear EXCEPT the classifier head:
        MRC_i = max_{||dtheta_i||_2 <= 0.1 ||theta_i||_2} R(theta_AT + dtheta_i) - R(theta_AT),
    R = mean CE on a FIXED set of PGD-10 adversarial examples of theta_AT (main.py ``generate_adv_dataset``, l.16-44),
    relaxed as main.py ``layer_sharpness`` (l.47-149) does: plain SGD (lr 1) ascent on theta_i alone, model in eval
    mode, 10 epochs over the set; after each epoch dtheta_i is rescaled onto the ball if it left it (l.115-122), R
    is measured (l.124-136) and the max over epochs kept, starting from 0 (l.104, 138-140). MRC is computed for the
    head too and reported; the README leaves the pick to the user ("choose a module with lowest MRC value ... We
    suggest to choose the **middle layers**"), and a plain argmin over all modules picked the head on both CPU seeds
    (MRC 0.119 vs >= 0.56 for the rest), which made "RiFT" linear-head fine-tuning. ``module_rule`` forces ``mrc``
    (argmin without the head) or ``mrc_all`` (argmin with it); ``module`` names the module (main.py --layer).
(b) Fine-tune only that module on CLEAN data with CE (main.py l.287-290, ``train`` l.152-172): SGD lr 0.001,
    momentum 0.9, wd 5e-4, batch 128, 10 epochs, x0.1 at epoch 5 (main.py defaults l.185-200, MultiStepLR at
    epochs // 2, l.266-267); the whole model in train mode (l.153), so EVERY BatchNorm's running statistics move
    while only the module's parameters are trained. theta_FT is the epoch with the best clean accuracy (main.py
    l.316-320, 329-330; strictly better, so ties keep the earlier epoch) -- measured here on the held-out set.
(c) Interpolate theta_a = a theta_FT + (1 - a) theta_AT over every state entry (utils.py ``interpolation``
    l.26-47; BatchNorm buffers too), a in {0, 0.1, ..., 1} (np.arange(0, 1.1, 0.1)), measuring clean accuracy and
    PGD-10 robust accuracy at each a, and keep "the point that most significantly improves the generalization while
    the corresponding adversarial robustness is no less than the original robustness by 0.1" (the paper, as quoted
    in shared/reference/methods.md; the code only logs the curve and the README says to pick a by hand "while not
    drop robustness so much"). Ties in clean accuracy go to the smaller a.

Public code checked: microsoft/robustlearn @31580cd RiFT/main.py, RiFT/utils.py, RiFT/optimizer.py, RiFT/model.py,
RiFT/dataloader.py (adv_dataset l.213-236), RiFT/README.md, RiFT/env.yaml (torchattacks 3.4.0, whose
attacks/pgd.py l.54-77 is the attack: uniform start clamped to [0, 1], CE sign steps, eval mode).
Differential tests: tests/reference/test_ref_rift.py against tests/reference/ref_rift.py.

Fidelity notes (measured on a PGD-AT parent trained with the cpu grid's recipe, small_cnn on cifar10-jpeg with its
10,000 training images, test clean / PGD-20 43.5 / 28.3 on 1,000 images; torch 2.14.1, CPU):
- Module choice. Old rule (argmin over every Conv2d/Linear): the head on both CPU seeds (MRC 0.119 vs >= 0.56), so
  "RiFT" was linear-head fine-tuning. Now: README table where it applies, else argmin without the head. On the
  measured parent the MRC order was the same in all four variants below (classifier < fc < body.0.0 < body.2.0 <
  body.4.0 < body.6.0): the head is still the argmin over all, fc (the hidden Linear before it) the argmin without it.
- MRC set and ascent. Code: the 10,000 CIFAR TEST images (Tiny-ImageNet: its 100,000 TRAINING images, main.py l.32)
  in shuffled batches of 512 = 20 ascent steps per epoch (Tiny: 196), 10 epochs, SGD lr 1, rescale at epoch ends
  onto ||dw|| <= 0.1 ||w||. Here: the held-out subset of the TRAINING split, min(heldout_max = 10,000,
  heldout_fraction = 0.2 x N) images (CIFAR: 10,000 of 50,000; the cpu grid: 2,000 of its 10,000), cut into
  mrc_steps_per_epoch = 20 batches (batch ceil(n / 20): 100 for 2,000), 10 epochs, lr 1, same rescale: the
  number of ascent steps per epoch, epochs, lr, ball and rescale rule are the code's; the set is smaller. Before
  this change: 1,000 images in batches of 512 = 2 steps per epoch. Measured MRC (origin R = CE of theta_AT on the
  set): old 1,000 / 2 steps / 2/255: body.0.0 0.80, body.2.0 1.06, body.4.0 1.94, body.6.0 7.24, fc 0.50,
  classifier 0.11 (R 1.899); 1,000 / 20 steps: 0.76, 0.79, 1.95, 4.95, 0.31, 0.078; now, 2,000 / 20 steps /
  2/225: 0.27, 0.40, 0.69, 3.61, 0.24, 0.081 (R 1.883). The relaxation's values move by up to a factor 3 with
  the set and batch (body.0.0), the order of the modules did not.
- Held-out data. Never the test split: MRC, theta_FT's epoch and a use a fixed subset of the TRAINING split
  (permutation with its own generator, seed 0; the folder data sets are sorted by class). The parent trained on
  those images and the fine-tuning loop trains on them too (the loop's loader is the whole split): the code's
  test images were unseen by both. Measured on the parent: clean / PGD-10 accuracy 43.4 / 28.75 on the 2,000
  held-out (seen) images, 41.75 / 27.15 on 2,000 training images outside the cpu grid's 10,000 (unseen), 42.45 /
  28.05 on the first 2,000 test images (binomial SE ~1.1 / 1.0 points each); MRC on the unseen 2,000: body.0.0
  0.58, body.2.0 0.72, body.4.0 1.89, body.6.0 4.99, fc 0.20, classifier 0.075 (R 1.921): same order, same choice.
- Attack: the code's torchattacks PGD, alpha = 2/225 (most likely meant 2/255; kept as run), 10 steps, uniform
  start clamped to [0, 1], eval mode, for the MRC set and for the robustness of every a. 2/225 vs 2/255 changed
  the parent's PGD-10 accuracy by <= 0.1 point on each of the three 2,000-image sets above (28.75 vs 28.65,
  27.15 vs 27.25, 28.05 vs 28.1). Our PGD sums the CE where torchattacks averages it: only its sign is used.
- MRC batch orders: each module's ascent draws its own batch orders from a generator seeded with the run's seed,
  so every module sees the same orders (the code draws every module's from one global stream). Not measured: it
  only removes a source of noise between modules.
- Fine-tuning: as the code (module's parameters only; every BatchNorm in train mode, so all running statistics
  move; SGD over all parameters, frozen ones get no gradient; clean CE). The code selects by a SUBSTRING of the
  parameter names (main.py l.289): for the README's modules and every module of our models that is the module's
  own parameters, but a name like ResNet's stem "conv1" would also select every block's conv1; we train the
  named module. Augmentation: the code's crop pads by reflection, the shared loader by zeros (not measured).
- theta_FT: the code keeps the epoch with the best TEST accuracy (strictly better than earlier ones); here the
  epoch with the best held-out clean accuracy (``ft_epoch="best"``; "last" = the final epoch). The cpu grid runs
  one epoch, so there it is the final one.
- Interpolation: a theta_FT + (1 - a) theta_AT over every state entry in the entry's dtype, integer buffers
  truncated as the code's float-into-int64 copy does (BatchNorm with a momentum never reads num_batches_tracked).
  Our a is i / 10, the code's np.arange(0, 1.1, 0.1) differs by one ulp at 0.3, 0.6, 0.7 (no measurable effect).
- Choosing a. The code logs the curve on the test set and leaves the choice to the reader; the paper states the
  rule: best clean accuracy with robustness no more than 0.1 points below a = 0. Default ``select_rule="fixed"``
  (0.1 points, as stated), on the held-out set, every a attacked with the same random starts (the code draws
  fresh ones per evaluation), ties to the smaller a. ``select_rule="paired_se"``: the allowed drop is
  max(0.1 points, select_z x the standard error of robust(a) - robust(0) on the same images,
  sqrt(lost + gained - (gained - lost)^2 / n) / n, lost/gained = images robust only at a = 0 / only at a). On
  10,000 images with a few hundred discordant images this is about the paper's 0.1 points; on 2,000 held-out
  images (0.1 points = 2 images, binomial SE of the accuracy ~1 point) it widens to what the comparison can
  resolve. Measured (cpu grid's RiFT, seed 0, module fc, 1 epoch): the held-out curve is flat (clean 43.40-43.70,
  robust 28.50-28.75 over the 11 a; 0 to 41 discordant images), and fixed 0.1 points, paired_se z = 1 and 2, one
  binomial SE and 0.1 points x sqrt(10,000 / n) all chose a = 0.5: test clean / PGD-20 43.4 / 28.4 (parent
  43.5 / 28.3; a = 1: 43.1 / 28.0).
- Cost: the MRC stage runs in the first ``on_epoch_start`` and the held-out clean accuracy after each epoch in the
  next one, outside the loop's per-epoch timer; the MRC wall time is ``rift_mrc_seconds`` in the result. Measured
  on 1 contended thread: 526 s for the 6 modules on 2,000 images (the old 1,000 images in batches of 512: 144 s);
  the whole run 1,389 s. The README's modules skip the MRC stage entirely (as main.py --layer).
- Under norm l2 (not in the paper or its code): the attack of ``bench.eval.attacks.pgd(norm="l2")``
  (docs/evaluation-threat-models.md) with the step scaled by eps / (8/255) (``Method.attack_step``) for the
  adversarial MRC set; theta_FT's held-out robustness (and a's) is the L2 evaluator's (bench.eval.l2, PGD-10 of step
  eps / 4).
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.config import EvalConfig, TrainConfig
from bench.core.distributed import broadcast_object
from bench.data import Split
from bench.eval.attacks import pgd
from bench.eval.evaluator import Evaluator
from bench.eval.l2 import L2Evaluator
from bench.models.architectures import BasicBlock, ResNet, WideResNet, feature_extractor_and_head
from methods.base import COUNT, POSITIVE, Method, MethodError, OneOf, Range, register

# main.py defaults: SGDM lr 0.001, momentum 0.9, wd 5e-4, 10 epochs, MultiStepLR([epochs // 2], gamma 0.1), batch 128.
RIFT_RECIPE = TrainConfig(epochs=10, lr=0.001, momentum=0.9, weight_decay=5e-4, schedule="piecewise",
                          milestones=(0.5,), gamma=0.1, batch_size=128)

# RiFT/README.md: the non-robust-critical module of each model on each data set (what the authors fine-tuned).
PUBLISHED_MODULES: dict[tuple[str, str], str] = {
    ("resnet18", "cifar10"): "layer2.1.conv2",
    ("resnet18", "cifar100"): "layer2.1.conv2",
    ("resnet18", "tiny-imagenet"): "layer3.1.conv2",
    ("resnet34", "cifar10"): "layer2.3.conv2",
    ("resnet34", "cifar100"): "layer2.3.conv2",
    ("resnet34", "tiny-imagenet"): "layer3.5.conv2",
    ("wrn34_10", "cifar10"): "block1.layer.3.conv2",
    ("wrn34_10", "cifar100"): "block1.layer.2.conv2",
    ("wrn34_10", "tiny-imagenet"): "block1.layer.2.conv2",
}
# Our data set names -> the README's columns (cifar10-jpeg is CIFAR-10's images re-encoded as JPEG).
_README_DATASET = {"cifar10": "cifar10", "cifar10-jpeg": "cifar10", "cifar100": "cifar100",
                   "tiny-imagenet": "tiny-imagenet"}
MODULE_RULES = ("published", "mrc", "mrc_all")
SELECT_RULES = ("fixed", "paired_se")
FT_EPOCH_RULES = ("best", "last")


@dataclass(frozen=True)
class ModuleName:
    """The valid values of ``module``: "" or a dotted module name (whether the model has it is checked when the
    method is built, where the model is known)."""

    def problem(self, v: str) -> str | None:
        return None if re.fullmatch(r"([A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*)?", v) else "must be a dotted module name"


# -- pure pieces (tested directly) ---------------------------------------------------------------------------
def candidate_modules(model: nn.Module) -> list[str]:
    """Every Conv2d/Linear module (layer_sharpness's candidates, main.py l.80-86), in registration order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def head_module(model: nn.Module) -> str:
    """The name of the classifier head (the final Linear whose input is the last hidden layer)."""
    _, head = feature_extractor_and_head(model)
    return next(n for n, m in model.named_modules() if m is head)


def architecture(model: nn.Module) -> str | None:
    """The README's architecture this model is, by structure: "resnet18", "resnet34", "wrn34_10", or None."""
    if isinstance(model, ResNet) and isinstance(model.layer1[0], BasicBlock):
        blocks = tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5))
        return {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}.get(blocks)
    if isinstance(model, WideResNet):
        if len(model.block1.layer) == 5 and model.block1.layer[0].conv2.out_channels == 160:
            return "wrn34_10"
    return None


def published_module(model: nn.Module, dataset: str) -> str | None:
    """The README's non-robust-critical module for this model and data set, if the table has one."""
    arch, data = architecture(model), _README_DATASET.get(dataset)
    return PUBLISHED_MODULES.get((arch, data)) if arch and data else None


def project_to_ball(w: Tensor, w0: Tensor, ball: float) -> Tensor:
    """w0 + dw, with dw rescaled onto ||dw|| = ball ||w0|| if it is longer (main.py l.115-122)."""
    diff = w - w0
    ratio = torch.linalg.norm(diff) / torch.linalg.norm(w0)
    return w0 + diff / ratio * ball if ratio > ball else w


def interpolate_state(theta_at: dict[str, Tensor], theta_ft: dict[str, Tensor], a: float) -> dict[str, Tensor]:
    """a theta_FT + (1 - a) theta_AT for every state entry (utils.py l.35-36), in each entry's dtype. Integer
    entries (BatchNorm's num_batches_tracked, unused by BatchNorm with a momentum) are mixed as floats and
    truncated, as load_state_dict's copy of the code's float result into an int64 buffer does. a = 0 and a = 1
    give the endpoints exactly."""
    out = {}
    for k, v0 in theta_at.items():
        v1 = theta_ft[k]
        if v0.dtype.is_floating_point:
            out[k] = a * v1 + (1 - a) * v0
        else:
            out[k] = (a * v1.double() + (1 - a) * v0.double()).to(v0.dtype)
    return out


def paired_se(lost: int, gained: int, n: int) -> float:
    """Standard error of acc(a) - acc(0) measured on the same n images (and attack starts): lost/gained count
    the images correct only at a = 0 / only at a (the discordant pairs of McNemar's test)."""
    if n < 1:
        return 0.0
    return math.sqrt(max(0.0, lost + gained - (gained - lost) ** 2 / n)) / n


def select_alpha(curve: list[dict], tolerance: float | None = None) -> float:
    """The a with the best clean accuracy among those whose robust accuracy >= robust(a=0) - allowed drop.

    ``curve`` holds {"a", "clean", "robust"} with accuracies as fractions. The allowed drop is ``tolerance``
    (same unit: 0.1 percentage points = 0.001) or, when None, each point's own "allowed_drop". a = 0 is always
    eligible; ties go to the smaller a."""
    base = next(p for p in curve if p["a"] == 0)
    eligible = [p for p in curve
                if p["robust"] >= base["robust"] - (p["allowed_drop"] if tolerance is None else tolerance) - 1e-12]
    return max(eligible, key=lambda p: (p["clean"], -p["a"]))["a"]


@torch.no_grad()
def _mean_ce(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    """Mean CE over ``x``, summed on the device in float64 in batch order (the same numbers as a Python sum of
    each batch's float: one host synchronisation at the end instead of one per batch)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        total += F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum").double()
    return float(total) / len(x)


def worst_case_loss(model: nn.Module, weight: str, x: Tensor, y: Tensor, *, ball: float, epochs: int, lr: float,
                    batch_size: int, generator: torch.Generator) -> tuple[float, list[float]]:
    """Relaxed max of R over ||dtheta|| <= ball ||theta|| for one weight tensor of ``model`` (eval mode, frozen):
    main.py l.102-140. Each epoch is one pass in the order of ``torch.randperm(len(x), generator)``.

    Returns (max R over the epochs, ||dtheta|| / ||theta|| at each measured point). The weight is restored.
    """
    w = model.get_parameter(weight)
    w0 = w.detach().clone()
    w.requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr)  # plain SGD, lr 1 in the code
    max_loss, ratios = 0.0, []  # max_loss starts at 0 (l.104)
    try:
        for _ in range(epochs):
            # the order is drawn on the CPU (the generator's numbers), then moved once: no index copy per batch
            for idx in torch.randperm(len(x), generator=generator).to(x.device).split(batch_size):
                opt.zero_grad(set_to_none=True)
                (-F.cross_entropy(model(x[idx]), y[idx])).backward()  # gradient ASCENT on R (l.112)
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
    label = "RiFT"
    plan_seconds_per_epoch = 25.0  # AFD Table 5 (ResNet18 CIFAR-10, the paper's GPU)
    parent = "adversarial"
    summary = "robust critical fine-tuning: fine-tune the least robust-critical module, interpolate (Zhu et al. 2023)"
    recipe = RIFT_RECIPE

    ranges = {"module": ModuleName(), "module_rule": OneOf(MODULE_RULES), "ball": POSITIVE, "heldout_max": COUNT,
              "heldout_fraction": Range(0.0, 1.0, lo_open=True), "mrc_epochs": COUNT, "mrc_steps_per_epoch": COUNT,
              "mrc_lr": POSITIVE, "attack_steps": COUNT, "attack_step_size": Range(0.0), "alpha_steps": COUNT,
              "ft_epoch": OneOf(FT_EPOCH_RULES), "select_rule": OneOf(SELECT_RULES), "select_tolerance_pp": Range(0.0),
              "select_z": Range(0.0)}

    @dataclass(frozen=True)
    class Hparams:
        module: str = ""  # fine-tune this module, no MRC (main.py --layer); "" = chosen by module_rule
        module_rule: str = "published"  # README table where it applies, else argmin MRC without the head;
        # "mrc": always argmin MRC without the head; "mrc_all": argmin MRC over every module, head included
        ball: float = 0.1  # relative radius of the weight perturbation (layer_sharpness epsilon=0.1; paper)
        heldout_max: int = 10_000  # held-out training examples for MRC, theta_FT's epoch and a (code: 10,000 test)
        heldout_fraction: float = 0.2  # ... but at most this fraction of the training split (CIFAR: 10,000)
        mrc_epochs: int = 10  # ascent epochs per module (layer_sharpness: range(10))
        mrc_steps_per_epoch: int = 20  # ascent steps per epoch (code: 10,000 images in batches of 512 = 20)
        mrc_lr: float = 1.0  # layer_sharpness: SGD(lr=1)
        attack_steps: int = 10  # generate_adv_dataset / evaluate_cifar_robustness: PGD steps=10
        attack_step_size: float = 2 / 225  # code: alpha=2/225 (most likely meant 2/255; as run)
        alpha_steps: int = 10  # a in {0, 1/10, ..., 1} (utils.interpolation: np.arange(0, 1.1, 0.1))
        ft_epoch: str = "best"  # theta_FT: "best" held-out clean accuracy (code: best test accuracy) or "last"
        select_rule: str = "fixed"  # "fixed": drop <= select_tolerance_pp (paper); "paired_se": drop <=
        # max(select_tolerance_pp, select_z x the paired standard error of the drop on the held-out set)
        select_tolerance_pp: float = 0.1  # robustness may drop by at most this many percentage points (paper)
        select_z: float = 1.0  # "paired_se" only: standard errors of the drop allowed

    def __init__(self, model, hp, ctx):
        super().__init__(model, hp, ctx)
        if ctx.parent_model is None:
            raise MethodError("rift fine-tunes an adversarially trained parent, but the run has none")
        for name, value, known in (("module_rule", hp.module_rule, MODULE_RULES),
                                   ("select_rule", hp.select_rule, SELECT_RULES),
                                   ("ft_epoch", hp.ft_epoch, FT_EPOCH_RULES)):
            if value not in known:
                raise MethodError(f"rift.{name} '{value}' is unknown; known: {', '.join(known)}")
        self.candidates = candidate_modules(model)
        self.head = head_module(model)
        if hp.module and hp.module not in self.candidates:
            raise MethodError(f"rift.module '{hp.module}' is not a Conv2d/Linear of {type(model).__name__}; "
                              f"known: {', '.join(self.candidates)}")
        self.chosen: str | None = None
        self.module_source: str | None = None
        self.mrc: dict[str, float] = {}
        self.mrc_seconds = 0.0
        self.ft_acc: list[float] = []  # held-out clean accuracy after each fine-tuning epoch
        self.best_state: dict[str, Tensor] | None = None  # theta_FT candidate with the best of them
        for p in model.parameters():  # nothing trains until the module is chosen
            p.requires_grad_(False)
        published = published_module(model, ctx.info.name)
        if hp.module:
            self._set_module(hp.module, "hparam")
        elif hp.module_rule == "published" and published is not None:
            if published not in self.candidates:  # pragma: no cover - the table and bench/models/architectures.py agree
                raise MethodError(f"rift: published module {published} is not in {type(model).__name__}")
            self._set_module(published, "published")

    # -- stage (a) --------------------------------------------------------------------------------------------
    def heldout(self) -> Split:
        """A fixed subset of the TRAINING split (never the test split): for MRC, theta_FT's epoch and a."""
        n_total = len(self.ctx.train)
        n = max(1, min(self.hp.heldout_max, math.ceil(self.hp.heldout_fraction * n_total)))
        idx = torch.randperm(n_total, generator=torch.Generator().manual_seed(0))[:n].sort().values
        return Split(self.ctx.train.images[idx], self.ctx.train.labels[idx])

    def _probe(self) -> nn.Module:
        """A frozen eval-mode copy of theta_AT in its own dtype (float32 in runs, float64 in the tests)."""
        probe = copy.deepcopy(self.ctx.parent_model).to(self.ctx.device).eval()
        for p in probe.parameters():
            p.requires_grad_(False)
        return probe

    def mrc_set(self) -> tuple[Tensor, Tensor]:
        """The FIXED adversarial set: PGD-10 of theta_AT (eval mode, uniform start clamped to [0, 1]) on the
        held-out images, made once and held constant for every module (generate_adv_dataset)."""
        hp, dev = self.hp, self.ctx.device
        probe = self._probe()
        dtype = next(probe.parameters()).dtype
        split = self.heldout()
        x = split.images.to(dev).to(dtype).div(255)
        y = split.labels.to(dev)
        gen = torch.Generator(device=dev).manual_seed(self.ctx.seed)
        bs = 500
        x_adv = torch.cat([pgd(probe, x[i:i + bs], y[i:i + bs], eps=self.ctx.eps,
                               step_size=self.attack_step(hp.attack_step_size), steps=hp.attack_steps,
                               random_start=True, generator=gen, clamp_start=True, norm=self.ctx.norm)
                           for i in range(0, len(x), bs)])
        return x_adv, y

    def mrc_batch_size(self, n: int) -> int:
        return max(1, math.ceil(n / self.hp.mrc_steps_per_epoch))

    def compute_mrc(self, x_adv: Tensor, y: Tensor) -> dict[str, float]:
        """MRC of every Conv2d/Linear weight of theta_AT (head included) on the adversarial set ``x_adv``.

        Every module sees the same batch orders (its own generator seeded with the run's seed): differences
        between modules are not differences of batch order (the code draws them all from one global stream)."""
        hp = self.hp
        probe = self._probe()
        bs = self.mrc_batch_size(len(x_adv))
        origin = _mean_ce(probe, x_adv, y, bs)
        mrc = {}
        for name in self.candidates:
            worst, _ = worst_case_loss(probe, f"{name}.weight", x_adv, y, ball=hp.ball, epochs=hp.mrc_epochs,
                                       lr=hp.mrc_lr, batch_size=bs,
                                       generator=torch.Generator().manual_seed(self.ctx.seed))
            mrc[name] = worst - origin
        return mrc

    def _set_module(self, name: str, source: str) -> None:
        self.chosen, self.module_source = name, source
        module = self.model.get_submodule(name)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in module.parameters():
            p.requires_grad_(True)

    def _heldout_evaluator(self, device, batch_size: int = 500, seed: int | None = None) -> Evaluator:
        split = self.heldout()
        n = len(split)
        # The code's robustness evaluation (utils.evaluate_cifar_robustness): torchattacks PGD-10, step 2/225,
        # uniform start clamped to [0, 1], model in eval mode.
        cfg = EvalConfig(n_clean=n, n_pgd=n, n_aa=0, pgd_steps=self.hp.attack_steps,
                         pgd_step_size=self.hp.attack_step_size, pgd_clamp_start=True, batch_size=batch_size)
        # Under norm l2 the held-out robustness is the L2 one (PGD-10 in L2 with the L2 evaluator's step, eps / 4).
        evaluator = L2Evaluator if self.ctx.norm == "l2" else Evaluator
        return evaluator(split, cfg, self.ctx.eps, device, seed=self.ctx.seed if seed is None else seed)

    def _record_epoch(self, model: nn.Module, ev: Evaluator) -> None:
        """Held-out clean accuracy of the model at the end of a fine-tuning epoch; keep it if strictly best."""
        # data-parallel runs: rank 0's accuracy decides on every rank (a near-tie read differently on another
        # rank would keep another epoch's weights there)
        acc = broadcast_object(float(ev.correct(ev.prepare(model, ev.memory_format), len(ev.test)).float().mean()))
        if not self.ft_acc or acc > max(self.ft_acc):
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.ft_acc.append(acc)

    def on_epoch_start(self, epoch: int) -> None:
        if self.hp.ft_epoch == "best" and self.chosen is not None and epoch == len(self.ft_acc) + 1:
            self._record_epoch(self.model, self._heldout_evaluator(self.ctx.device))  # the end of epoch - 1
        if self.chosen is not None:  # chosen by hparam or table, or restored from a checkpoint: no MRC
            return
        t0 = time.perf_counter()
        self.mrc = self.compute_mrc(*self.mrc_set())
        self.mrc_seconds = time.perf_counter() - t0
        pool = self.mrc if self.hp.module_rule == "mrc_all" else {k: v for k, v in self.mrc.items() if k != self.head}
        # data-parallel runs: rank 0 decides (ranks that picked different modules would train different
        # parameters and hang in the gradient all-reduce)
        self._set_module(broadcast_object(min(pool, key=pool.get)),
                         "mrc_argmin_all" if self.hp.module_rule == "mrc_all" else "mrc_argmin")

    # -- stage (b) --------------------------------------------------------------------------------------------
    def configure_optimizers(self, train):
        # Over ALL model parameters, as the code (optimizer.py l.16): the module may only be known at the first
        # epoch start, after this call. Frozen parameters never get a gradient, and SGD skips parameters
        # without one (no decay, no momentum).
        return [torch.optim.SGD(self.model.parameters(), lr=train.lr, momentum=train.momentum,
                                weight_decay=train.weight_decay, nesterov=train.nesterov)]

    def loss(self, batch, step):
        if self.chosen is None:
            raise MethodError("rift: no module chosen yet (on_epoch_start was not called)")
        logits = self.model(batch.x)  # CLEAN data
        loss = F.cross_entropy(logits, batch.y)
        return {"loss": loss, "clean_acc": (logits.argmax(1) == batch.y).float().mean()}

    def state_dict(self):
        return {"module": self.chosen, "module_source": self.module_source, "mrc": dict(self.mrc),
                "mrc_seconds": self.mrc_seconds, "ft_acc": list(self.ft_acc),
                "best_state": None if self.best_state is None else {k: v.cpu() for k, v in self.best_state.items()}}

    def load_state_dict(self, state):
        if not state or state.get("module") is None:
            return
        self.mrc = dict(state["mrc"])
        self.mrc_seconds = float(state.get("mrc_seconds", 0.0))
        self.ft_acc = list(state.get("ft_acc", []))
        best = state.get("best_state")
        dev = next(self.model.parameters()).device
        self.best_state = None if best is None else {k: v.to(dev) for k, v in best.items()}
        self._set_module(state["module"], state.get("module_source") or "checkpoint")

    # -- stage (c) --------------------------------------------------------------------------------------------
    def finalize(self, net, evaluator):
        hp = self.hp
        model = net["model"]
        ev = self._heldout_evaluator(evaluator.device, evaluator.cfg.batch_size, evaluator.seed)
        n = len(ev.test)
        if hp.ft_epoch == "best":
            self._record_epoch(model, ev)  # the last epoch
            theta_ft = self.best_state
            ft_epoch = self.ft_acc.index(max(self.ft_acc)) + 1
        else:
            theta_ft = {k: v.detach().clone() for k, v in model.state_dict().items()}
            ft_epoch = self.ctx.epochs
        theta_ft = {k: v.to(model.state_dict()[k].device) for k, v in theta_ft.items()}
        theta_at = {k: v.detach().to(theta_ft[k].device) for k, v in self.ctx.parent_model.state_dict().items()}
        curve, robust0 = [], None
        for i in range(hp.alpha_steps + 1):
            a = i / hp.alpha_steps
            model.load_state_dict(interpolate_state(theta_at, theta_ft, a))
            prepared = ev.prepare(model, ev.memory_format)
            clean_ok = ev.correct(prepared, n)
            robust_ok = ev.pgd_correct(prepared, n)
            robust0 = robust_ok if robust0 is None else robust0
            lost, gained = int((robust0 & ~robust_ok).sum()), int((robust_ok & ~robust0).sum())
            drop = hp.select_tolerance_pp / 100
            if hp.select_rule == "paired_se":
                drop = max(drop, hp.select_z * paired_se(lost, gained, n))
            curve.append({"a": a, "clean": float(clean_ok.float().mean()), "robust": float(robust_ok.float().mean()),
                          "robust_lost": lost, "robust_gained": gained, "allowed_drop": drop})
        a = broadcast_object(select_alpha(curve))  # rank 0 decides: every rank exports the same model
        model.load_state_dict(interpolate_state(theta_at, theta_ft, a))  # in place: the exported model
        return {"rift_module": self.chosen, "rift_module_source": self.module_source, "rift_mrc": dict(self.mrc),
                "rift_mrc_seconds": self.mrc_seconds, "rift_ft_acc": list(self.ft_acc), "rift_ft_epoch": ft_epoch,
                "rift_curve": curve, "rift_alpha": a, "rift_select_rule": hp.select_rule, "rift_heldout": n}

"""The method interface: what a method author writes.

A method is a plugin: one module in ``methods/`` (or in your own package) with one ``Method`` subclass decorated
by ``@register``. It writes five names:

- ``name``: the registry key;
- ``Hparams``: a frozen dataclass whose defaults are its paper's values, each citing its source;
- ``parent``: where training starts: ``None`` (from scratch), ``"natural"`` (a naturally pre-trained model,
  the parent of the adversarial fine-tuning methods) or ``"adversarial"`` (a PGD-AT model, RiFT's parent);
- ``recipe``: its paper's training schedule (a ``TrainConfig``), which grids scale down but keep in shape;
- ``loss(batch, step)`` (most methods: the base class does zero_grad / backward / step), or ``train_step(batch,
  step)`` instead for unusual update rules (Free-AT's replays, AFD's routed losses).

Everything it trains lives in ``self.net`` (a ``ModuleDict`` holding at least ``"model"``): the loop checkpoints
it, keeps its EMA, and hands it to ``export`` which returns the plain classifier that is evaluated. Extra state (a
persistent perturbation, per-example buffers) goes through ``state_dict``/``load_state_dict`` so that a resumed
run continues bit for bit. The other hooks are optional, each with the default most methods keep.

The attack: a method's training attack goes through ``Method.pgd`` (``bench.eval.attacks.pgd`` at the run's eps and
norm). Every method's step hyperparameter is an L-inf value for eps 8/255 (its paper's); under norm "l2" (a run
whose ``eps`` is an L2 radius) ``Method.pgd`` scales it by ``ctx.eps / EPS_8`` (``Method.attack_step``): the step
is the same fraction of the radius as in the paper's L-inf attack. Under L-inf the step is used as given.

What the suite reads about a method (label, ``bench plan``'s prior, capabilities) is ``Declarations``
(methods/declarations.py), which ``Method`` inherits; the registry is methods/registry.py, whose names this module
re-exports.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.config import EPS_8, TrainConfig
from bench.data import Batch, DatasetInfo, Split
from bench.eval.attacks import pgd
from bench.eval.evaluator import Evaluator, FeatureMap  # noqa: F401  (FeatureMap: also for methods' overrides)
from methods import registry
from methods.declarations import Declarations
# The registry, re-exported: methods and plugins write ``from methods.base import register, MethodError``.
from methods.registry import (PARENT_KINDS, REGISTRY, MethodError, check_ranges, get_method,  # noqa: F401
                              make_hparams, parent_method, register, resolve_hparams)


class Method(Declarations):
    """What a method author writes. The five names first: every method sets them (``parent`` and ``recipe`` have
    defaults: from scratch, the default schedule). Then the optional hooks, each with the default that most methods
    keep. What the suite reads about a method (its label, planning prior, capabilities) is inherited from
    ``Declarations`` (methods/declarations.py) and overridden on the method where the default is not right."""

    # -- the five names every method writes ----------------------------------------------------------------
    name: ClassVar[str]
    Hparams: ClassVar[type]
    parent: ClassVar[str | None] = None
    recipe: ClassVar[TrainConfig] = TrainConfig()

    def loss(self, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        """Return {"loss": scalar tensor to minimise, ...logged scalar tensors}."""
        raise NotImplementedError(f"method '{self.name}' implements neither loss() nor train_step()")

    # -- optional: override what does not fit ---------------------------------------------------------------
    summary: ClassVar[str] = ""  # one line for `bench list`
    # The valid values of each hyperparameter (a Range or a OneOf per name), checked by resolve_hparams before
    # anything runs: `--set afd.gamma=-1` is refused in one line instead of training with the term reversed.
    # Every numeric and choice hyperparameter of a built-in method has one (tests/test_methods.py).
    ranges: ClassVar[dict[str, "Range | OneOf"]] = {}

    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        """One weight update; instead of ``loss`` for unusual update rules (Free-AT's replays, AFD's routed
        losses). Overriding it changes the default of ``grad_scaler_problem`` (methods/declarations.py)."""
        out = self.loss(batch, step)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        for opt in self.optimizers:
            opt.step()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Extra state beyond ``self.net`` and the optimizers (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method '{self.name}' has no extra state but the checkpoint has {sorted(state)}")

    def configure_optimizers(self, train: TrainConfig) -> list[torch.optim.Optimizer]:
        """One SGD over every trainable parameter of ``self.net`` (override to route parameters)."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        return [torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                                nesterov=train.nesterov)]

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (also the first epoch after a resume)."""

    def sync_state(self, world: Any) -> None:
        """Data-parallel runs (bench/core/distributed.py): called on every rank at each epoch's end, before the
        checkpoint. Make the extra state whole on every rank when ranks wrote different parts of it (ATAS's
        per-example buffers, Free-AT's per-position perturbation: ``bench.core.distributed.merge_latest``). Default:
        nothing (state that every rank computes alike)."""

    def export(self, net: nn.ModuleDict) -> nn.Module:
        """The plain classifier to evaluate, built from ``net`` (the live net or its EMA copy)."""
        return net["model"]

    def gap_features(self, net: nn.ModuleDict) -> nn.Module:
        """The features the method classifies from, x -> f(x), on which the feature gap of Figure 1a is measured
        (per epoch and in the final evaluation), built from ``net``: the same net ``export`` gets (the EMA copy
        when the run keeps one), so the gap is measured on the model that is evaluated. Default: the exported
        model's last hidden layer. Override when the method classifies from other features (AFD: f1 = D1 g,
        which the export folds into its classifier). Return a ``FeatureMap`` (its ``what`` is recorded with the
        gap); the evaluator works on a private fp32 eval-mode copy of it, so sharing ``net``'s modules is fine."""
        return FeatureMap(self.export(net))

    def finalize(self, net: nn.ModuleDict, evaluator: Evaluator) -> dict[str, Any]:
        """Post-training stage (RiFT's interpolation). May change ``net`` in place; returns result fields.
        ``evaluator`` is the run's (its device, eval config and seed: RiFT builds its held-out one from them)."""
        return {}

    def extra_metrics(self, net: nn.ModuleDict, test: Split, evaluator: Evaluator) -> dict[str, float]:
        """Method-specific test metrics recorded in the result (AFD: natural accuracy of f1 and f2)."""
        return {}

    # -- what the base class gives every method ---------------------------------------------------------------
    def __init__(self, model: nn.Module, hp: Any, ctx: Context):
        check_ranges(self.name, self.ranges, hp)  # also for Hparams built directly, not through resolve_hparams
        self.hp = hp
        self.ctx = ctx
        self.net = nn.ModuleDict({"model": model})
        self.optimizers: list[torch.optim.Optimizer] = []

    @property
    def model(self) -> nn.Module:
        return self.net["model"]

    def frozen_parent(self) -> nn.Module:
        """A frozen, eval-mode copy of the parent (the teacher of feature-alignment methods)."""
        if self.ctx.parent_model is None:
            raise MethodError(f"method '{self.name}' needs a parent model but the run has none")
        # channels_last like the student (train.py): the teacher's forward in NCHW was 2.8x slower on this CPU in
        # bf16 (1.7x in fp32), i.e. AFD's one extra forward cost ~6% of its step instead of ~2%.
        teacher = copy.deepcopy(self.ctx.parent_model).eval().to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def pgd(self, x: Tensor, y: Tensor, *, steps: int, step_size: float, model: nn.Module | None = None,
            **kw: Any) -> Tensor:
        """The run's attack: ``bench.eval.attacks.pgd`` at the run's eps and norm, the step from ``attack_step``."""
        return pgd(model if model is not None else self.model, x, y, eps=self.ctx.eps,
                   step_size=self.attack_step(step_size), steps=steps, norm=self.ctx.norm, **kw)

    def attack_step(self, step_size: float) -> float:
        """The attack's step from a step hyperparameter (an L-inf value for eps 8/255): as given under L-inf; under
        L2 scaled by eps / (8/255), so that it is the same fraction of the radius (2/255 at 8/255 -> eps / 4)."""
        return step_size * self.ctx.eps / EPS_8 if self.ctx.norm == "l2" else step_size


@dataclass(frozen=True)
class Context:
    """What a method may know about the run it is part of, beyond its model and hyperparameters."""

    info: DatasetInfo
    eps: float
    device: torch.device
    epochs: int
    steps_per_epoch: int
    seed: int
    train: Split  # the full training split on the CPU (RiFT's held-out set, ATAS's buffer sizes)
    parent_model: nn.Module | None = None  # the parent's exported plain model (frozen copy), if any
    train_cfg: TrainConfig | None = None
    norm: str = "linf"  # the run's threat model (RunConfig.norm): eps is an L2 radius under "l2"


@dataclass(frozen=True)
class StepInfo:
    """Where the loop is: methods with per-epoch behaviour (ARREST's first half, ATAS's warm-up) read it."""

    epoch: int  # 0-based
    step: int  # 0-based within the epoch
    global_step: int


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric hyperparameter: lo <= v <= hi (either end may be open-ended: None)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo < v instead of lo <= v

    def problem(self, v: Any) -> str | None:
        if isinstance(v, float) and v != v:
            return "is not a number"
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return f"must be {'>' if self.lo_open else '>='} {self.lo}"
        if self.hi is not None and v > self.hi:
            return f"must be <= {self.hi}"
        return None


@dataclass(frozen=True)
class OneOf:
    """The valid values of a choice hyperparameter."""

    values: tuple[Any, ...]

    def problem(self, v: Any) -> str | None:
        return None if v in self.values else f"must be one of {', '.join(repr(x) for x in self.values)}"


# The ranges methods declare most often.
WEIGHT = Range(0.0)  # a loss weight: >= 0 (a negative one reverses its term)
POSITIVE = Range(0.0, lo_open=True)
COUNT = Range(1)  # steps, replays, epochs: >= 1
FRACTION = Range(0.0, 1.0)  # probabilities, fractions, interpolation weights


# -- small helpers shared by methods ---------------------------------------------------------------------
def angular_distance(u: Tensor, v: Tensor) -> Tensor:
    """Mean over the batch of 1 - cos(u, v) (AFD's D, AFKD's RGKD distance)."""
    return (1 - F.cosine_similarity(u.flatten(1), v.flatten(1), dim=1)).mean()


def __getattr__(attr: str) -> Any:
    # PLUGIN_LOAD_ERROR is set on methods.registry after import (methods/__init__.py); a re-exported copy would stay
    # None, so ``methods.base.PLUGIN_LOAD_ERROR`` (read by the CLI) is looked up there each time.
    if attr == "PLUGIN_LOAD_ERROR":
        return registry.PLUGIN_LOAD_ERROR
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")

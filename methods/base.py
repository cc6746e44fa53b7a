"""The method interface every training method implements, and the one registry that names them.

A method is a plugin: one module in ``methods/`` with one class decorated by ``@register``. It declares

- ``Hparams``: a frozen dataclass whose defaults are its paper's values, each citing its source;
- ``parent``: where training starts: ``None`` (from scratch), ``"natural"`` (a naturally pre-trained model,
  the parent of the adversarial fine-tuning methods) or ``"adversarial"`` (a PGD-AT model, RiFT's parent);
- ``recipe``: its paper's training schedule (a ``TrainConfig``), which grids scale down but keep in shape;

and implements either ``loss(batch)`` (most methods: the base class does zero_grad / backward / step) or
``train_step(batch)`` for unusual update rules (Free-AT's replays, AFD's routed losses). Everything it trains
lives in ``self.net`` (a ``ModuleDict`` holding at least ``"model"``): the loop checkpoints it, keeps its EMA,
and hands it to ``export`` which returns the plain classifier that is evaluated. Extra state (a persistent
perturbation, per-example buffers) goes through ``state_dict``/``load_state_dict`` so that a resumed run
continues bit for bit.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.config import ConfigError, TrainConfig, coerce_like
from bench.data.datasets import Batch, DatasetInfo, Split
from bench.eval.attacks import pgd
from bench.eval.evaluator import FeatureMap  # noqa: F401  (also the base of methods' gap_features overrides)


class MethodError(ConfigError):
    """Unknown method or bad hyperparameters (one line, exit code 2 at the CLI)."""


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


@dataclass(frozen=True)
class StepInfo:
    """Where the loop is: methods with per-epoch behaviour (ARREST's first half, ATAS's warm-up) read it."""

    epoch: int  # 0-based
    step: int  # 0-based within the epoch
    global_step: int


class Method:
    name: ClassVar[str]
    Hparams: ClassVar[type]
    parent: ClassVar[str | None] = None
    recipe: ClassVar[TrainConfig] = TrainConfig()
    summary: ClassVar[str] = ""
    # The valid values of each hyperparameter (a Range or a OneOf per name), checked by resolve_hparams before
    # anything runs: `--set afd.gamma=-1` is refused in one line instead of training with the term reversed.
    # Every numeric and choice hyperparameter of a built-in method has one (tests/test_methods.py).
    ranges: ClassVar[dict[str, "Range | OneOf"]] = {}
    # One gradient step per example for its attack (Free-AT, FGSM-GA, ATAS): the loop then probes FGSM vs PGD
    # accuracy after every epoch and records catastrophic overfitting (bench/train/loop.py).
    single_step: ClassVar[bool] = False
    # The public code drops the last partial batch of every epoch (FGSM-GA's data.py: drop_last=True).
    drop_last: ClassVar[bool] = False

    # -- capabilities: what the loop, the launchers and the report ask of a method (defaults; override) ---------
    # The name tables and figures print ("" = ``name``).
    label: ClassVar[str] = ""
    # The parent kind this method trains, if it is the one that makes them: "natural" (natural pre-training) or
    # "adversarial" (PGD-AT). A fine-tuning method's ``parent`` names the kind; the grids train it with the
    # registered method that ``produces`` it (at most one per kind).
    produces: ClassVar[str | None] = None
    # `bench plan`'s prior before anything is measured: seconds per epoch of ResNet18 on CIFAR-10 on the AFD
    # paper's GPU (its Table 5), or an estimate from the closest measured method (``plan_seconds_guessed``).
    plan_seconds_per_epoch: ClassVar[float | None] = None
    plan_seconds_guessed: ClassVar[bool] = False

    @classmethod
    def display_label(cls) -> str:
        """``label`` as declared on this class itself: a subclass is another method (a plugin deriving from vAFT
        is not "vAFT" in a table), so the label and the plan's prior are not inherited."""
        return vars(cls).get("label") or cls.name

    @classmethod
    def plan_prior(cls) -> tuple[float, bool] | None:
        """(seconds per epoch, guessed) as declared on this class itself, or None."""
        seconds = vars(cls).get("plan_seconds_per_epoch")
        return None if seconds is None else (float(seconds), bool(vars(cls).get("plan_seconds_guessed", False)))

    @classmethod
    def compile_problem(cls, hp: Any) -> str | None:
        """Why this method's training step must not run under torch.compile (one line), or None. The loop then
        trains that run eagerly (its evaluation still compiles: it runs the plain exported model)."""
        return None

    @classmethod
    def grad_scaler_problem(cls, hp: Any) -> str | None:
        """Why this method cannot train in fp16 with a gradient scaler (one line), or None. Default: fine exactly
        when the method does not override ``train_step`` (the loop then runs loss -> scaled backward ->
        scaler.step -> update). A method with its own ``train_step`` that returns None here promises that it
        scales every backward with ``self.grad_scaler`` (``bench.train.loop.precision.backward``), steps every
        optimizer through it and calls ``update()`` once per weight update."""
        if cls.train_step is Method.train_step:
            return None
        return "its own train_step does not go through the gradient scaler fp16 needs"

    @classmethod
    def data_parallel_problem(cls, hp: Any) -> str | None:
        """Why one run of this method cannot train on several processes (one line), or None. A method whose loss
        couples the examples of a batch beyond what the loop makes whole (per-rank shards, gradients averaged,
        ``sync_state``) says so here and is refused before anything starts."""
        return None

    @classmethod
    def batchnorm_sync_problem(cls, hp: Any) -> str | None:
        """Why this method cannot train with SyncBatchNorm on several GPUs (one line), or None. The loop then
        normalises per rank (as on CPUs) and averages the running statistics every epoch; the result says so."""
        return None

    def __init__(self, model: nn.Module, hp: Any, ctx: Context):
        check_ranges(self.name, self.ranges, hp)  # also for Hparams built directly, not through resolve_hparams
        self.hp = hp
        self.ctx = ctx
        self.net = nn.ModuleDict({"model": model})
        self.optimizers: list[torch.optim.Optimizer] = []

    # -- convenience ---------------------------------------------------------------------------------------
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
        return pgd(model if model is not None else self.model, x, y, eps=self.ctx.eps, step_size=step_size,
                   steps=steps, **kw)

    # -- what the loop calls -----------------------------------------------------------------------------
    def configure_optimizers(self, train: TrainConfig) -> list[torch.optim.Optimizer]:
        """One SGD over every trainable parameter of ``self.net`` (override to route parameters)."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        return [torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                                nesterov=train.nesterov)]

    def loss(self, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        """Return {"loss": scalar tensor to minimise, ...logged scalar tensors}."""
        raise NotImplementedError(f"method '{self.name}' implements neither loss() nor train_step()")

    def train_step(self, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        out = self.loss(batch, step)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        for opt in self.optimizers:
            opt.step()
        return out

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (also the first epoch after a resume)."""

    def sync_state(self, world: Any) -> None:
        """Data-parallel runs (bench/core/distributed.py): called on every rank at each epoch's end, before the
        checkpoint. Make the extra state whole on every rank when ranks wrote different parts of it (ATAS's
        per-example buffers, Free-AT's per-position perturbation: ``bench.core.distributed.merge_latest``). Default:
        nothing (state that every rank computes alike)."""

    def state_dict(self) -> dict[str, Any]:
        """Extra state beyond ``self.net`` and the optimizers (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method '{self.name}' has no extra state but the checkpoint has {sorted(state)}")

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

    def finalize(self, net: nn.ModuleDict, evaluate: Callable[..., dict]) -> dict[str, Any]:
        """Post-training stage (RiFT's interpolation). May change ``net`` in place; returns result fields."""
        return {}

    def extra_metrics(self, net: nn.ModuleDict, test: Split, evaluator: Any) -> dict[str, float]:
        """Method-specific test metrics recorded in the result (AFD: natural accuracy of f1 and f2)."""
        return {}


# -- registry ----------------------------------------------------------------------------------------------
REGISTRY: dict[str, type[Method]] = {}
PARENT_KINDS = (None, "natural", "adversarial")
# Set by methods/__init__.py when an installed plugin failed to load: named where a method is not found.
PLUGIN_LOAD_ERROR: MethodError | None = None


def register(cls: type[Method]) -> type[Method]:
    if not dataclasses.is_dataclass(cls.Hparams) or not cls.Hparams.__dataclass_params__.frozen:
        raise TypeError(f"{cls.__name__}.Hparams must be a frozen dataclass")
    if cls.name in REGISTRY:
        raise ValueError(f"method name '{cls.name}' registered twice ({REGISTRY[cls.name].__name__}, {cls.__name__})")
    if cls.parent not in PARENT_KINDS:
        raise ValueError(f"{cls.__name__}.parent must be None, 'natural' or 'adversarial'")
    produces = vars(cls).get("produces")
    if produces is not None:
        if produces not in PARENT_KINDS[1:]:
            raise ValueError(f"{cls.__name__}.produces must be 'natural' or 'adversarial'")
        other = [m for m in REGISTRY.values() if vars(m).get("produces") == produces]
        if other:
            raise ValueError(f"{cls.__name__} and {other[0].__name__} both produce {produces} parents: one may")
    REGISTRY[cls.name] = cls
    return cls


def parent_method(kind: str) -> str:
    """The registered method that trains parents of ``kind`` ("natural", "adversarial")."""
    for name, cls in REGISTRY.items():
        if vars(cls).get("produces") == kind:
            return name
    raise MethodError(f"no registered method produces {kind} parents")


def get_method(name: str) -> type[Method]:
    try:
        return REGISTRY[name]
    except KeyError:
        why = f" (a plugin failed to load: {PLUGIN_LOAD_ERROR})" if PLUGIN_LOAD_ERROR else ""
        raise MethodError(f"unknown method '{name}'; known: {', '.join(sorted(REGISTRY))}{why}") from None


def resolve_hparams(name: str, overrides: dict[str, Any] | None = None) -> tuple[tuple[str, Any], ...]:
    """The method's full hyperparameters (paper defaults + overrides) as sorted pairs for a RunConfig."""
    cls = get_method(name)
    known = {f.name: f for f in fields(cls.Hparams)}
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if key not in known:
            raise MethodError(f"method '{name}' has no hyperparameter '{key}'; known: {', '.join(sorted(known)) or 'none'}")
        overrides[key] = _coerce(name, key, value, getattr(cls.Hparams(), key))
    hp = cls.Hparams(**overrides)
    check_ranges(name, cls.ranges, hp)
    return tuple(sorted(dataclasses.asdict(hp).items()))


def check_ranges(name: str, ranges: dict, hp: Any) -> None:
    """MethodError (one line) for the first hyperparameter outside its declared Range / OneOf."""
    for key, rule in ranges.items():
        if hasattr(hp, key):
            why = rule.problem(getattr(hp, key))
            if why:
                raise MethodError(f"hyperparameter {name}.{key} {why} (got {getattr(hp, key)!r})")


def make_hparams(name: str, pairs: tuple[tuple[str, Any], ...]) -> Any:
    return get_method(name).Hparams(**dict(pairs))


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    ok, value = coerce_like(default, value)
    if not ok:
        raise MethodError(f"hyperparameter {method}.{key} expects {type(default).__name__}, got {value!r}")
    return value


# -- small helpers shared by methods ---------------------------------------------------------------------
def angular_distance(u: Tensor, v: Tensor) -> Tensor:
    """Mean over the batch of 1 - cos(u, v) (AFD's D, AFKD's RGKD distance)."""
    return (1 - F.cosine_similarity(u.flatten(1), v.flatten(1), dim=1)).mean()

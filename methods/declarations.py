"""What the suite reads about a method: the declarations the loop, the launchers, the planner and the report ask.

A method author writes a ``methods.base.Method`` subclass (its name, hyperparameters, parent, recipe and loss); the
suite never names a method, it asks these declarations instead. ``Method`` inherits them with their defaults, and a
method overrides the few that are not right for it:

- what tables and figures print: ``label`` (``display_label()``);
- the parent kind it trains, if it is the one that makes them: ``produces``;
- the data it trains on: ``single_step`` (catastrophic-overfitting probes), ``drop_last``;
- the threat models it can train under: ``norms`` (why not: ``norm_reason``, ``norm_problem()``);
- ``bench plan``'s prior: ``plan_seconds_per_epoch``, ``plan_seconds_guessed`` (``plan_prior()``);
- capabilities, one line of why not or None: ``compile_problem``, ``grad_scaler_problem``,
  ``data_parallel_problem``, ``batchnorm_sync_problem``.
"""
from __future__ import annotations

from typing import Any, ClassVar


class Declarations:
    """The suite-read half of a method (the base of ``methods.base.Method``; defaults, override on the method)."""

    # The name tables and figures print ("" = ``name``).
    label: ClassVar[str] = ""
    # The parent kind this method trains, if it is the one that makes them: "natural" (natural pre-training) or
    # "adversarial" (PGD-AT). A fine-tuning method's ``parent`` names the kind; the grids train it with the
    # registered method that ``produces`` it (at most one per kind).
    produces: ClassVar[str | None] = None
    # One gradient step per example for its attack (Free-AT, FGSM-GA, ATAS): the loop then probes FGSM vs PGD
    # accuracy after every epoch and records catastrophic overfitting (bench/train/loop.py).
    single_step: ClassVar[bool] = False
    # The public code drops the last partial batch of every epoch (FGSM-GA's data.py: drop_last=True).
    drop_last: ClassVar[bool] = False
    # `bench plan`'s prior before anything is measured: seconds per epoch of ResNet18 on CIFAR-10 on the AFD
    # paper's GPU (its Table 5), or an estimate from the closest measured method (``plan_seconds_guessed``).
    plan_seconds_per_epoch: ClassVar[float | None] = None
    plan_seconds_guessed: ClassVar[bool] = False
    # The norms of the threat models (bench.core.config.NORMS) it can train under. A method whose attack goes
    # through ``methods.base.Method.pgd`` (or takes no attack) trains under both; one whose algorithm is an L-inf
    # attack by construction (sign steps of FGSM, a perturbation clipped per pixel) declares ("linf",) and says why
    # in ``norm_reason`` (what follows "method <name>" in the refusal).
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    norm_reason: ClassVar[str] = ""

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

    # -- capabilities: why a run of this method cannot use a feature (one line), or None --------------------
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
        scales every backward with ``self.grad_scaler`` (``bench.core.numerics.backward``), steps every
        optimizer through it and calls ``update()`` once per weight update."""
        if keeps_the_base_train_step(cls):
            return None
        return "its own train_step does not go through the gradient scaler fp16 needs"

    @classmethod
    def norm_problem(cls, norm: str) -> str | None:
        """Why this method cannot train under the threat model of ``norm`` (one line, the refusal), or None."""
        if norm in cls.norms:
            return None
        why = cls.norm_reason or f"trains under {', '.join(cls.norms)} only"
        return f"method {cls.name} {why}: it cannot train under norm {norm}"

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


def keeps_the_base_train_step(cls: type) -> bool:
    """Whether ``cls`` trains with ``methods.base.Method.train_step`` itself (loss -> backward -> step), the update
    the loop runs through the gradient scaler (bench/train/precision.py asks the same of the class). ``Method`` is
    found as the class in ``cls``'s MRO that derives from ``Declarations`` directly: this module sits below
    methods.base and cannot import it."""
    method = next((k for k in cls.__mro__ if Declarations in k.__bases__), None)
    return method is not None and getattr(cls, "train_step", None) is vars(method).get("train_step")

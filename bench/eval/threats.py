"""Threat models beyond a run's own: which ones an evaluation measures, and measuring them.

A run's own evaluation is the one its config names (L-inf at ``eps`` for the paper's runs; L2 for a run trained
under L2). ``bench run --threat`` / a grid's declared threat models and ``bench eval --threat`` add:

* ``l2``: the L2 evaluation (``bench.eval.l2.L2Evaluator``: PGD-20 with step eps/4, AutoAttack standard with
  norm='L2') at ``eps_l2`` (default: the data set's, ``bench.data.L2_EPS``), stored under ``metrics["l2"]``;
* ``corruptions``: accuracy on every corruption and severity of a common-corruption set (``published``: CIFAR-10-C,
  CIFAR-100-C, Tiny-ImageNet-C under the data root; ``generated``: ``bench.data.generated_corruptions``' seeded
  CIFAR-sized set, named apart), on the first ``eval.n_clean`` images of each, and their mean, stored under
  ``metrics["corruptions"]``.

They never change a run's id: the run's model is the same; they are further measurements of it, added to its
result (a finished run is measured from its saved model, ``bench.train.loop``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from bench.core.config import ConfigError, EvalConfig, parse_fraction
from bench.data import L2_EPS
from bench.data.corruptions import check_corruption_dataset, corruption_set_name
from bench.eval.corruption_accuracy import corruption_accuracy
from bench.eval.evaluator import Evaluator
from bench.eval.l2 import L2Evaluator

THREATS = ("linf", "l2", "corruptions")
CORRUPTION_SOURCES = ("published", "generated")


def parse_threats(text: str) -> tuple[str, ...]:
    """``--threat linf,l2,corruptions`` -> the threat models in THREATS' order; ConfigError in one line."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    unknown = [t for t in names if t not in THREATS]
    if unknown or not names:
        raise ConfigError(f"--threat {text!r}: unknown threat model {unknown[0] if unknown else '(none)'!r}; known: "
                          f"{', '.join(THREATS)} (comma-separated)")
    return tuple(t for t in THREATS if t in names)


def parse_eps_l2(value: Any, what: str = "--eps-l2") -> float:
    """An L2 radius in [0, 1] pixels, > 0 and finite (a number or a fraction); the upper end, the diameter of the
    pixel cube sqrt(C * H * W), is checked once the data set is known (:func:`check_eps_l2`)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        eps = parse_fraction(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r}: expected a number like 0.5") from None
    if not (eps > 0 and math.isfinite(eps)):
        raise ConfigError(f"{what} must be a finite number > 0 (an L2 radius over the image in [0, 1] pixels), got "
                          f"{value}")
    return eps


def check_eps_l2(eps: float, channels: int, size: int) -> None:
    """No two images of C x H x W pixels in [0, 1] are further apart than sqrt(C * H * W) in L2."""
    top = math.sqrt(channels * size * size)
    if eps > top:
        raise ConfigError(f"--eps-l2 {eps} is outside (0, {top:.4g}]: no two {channels}x{size}x{size} images in "
                          f"[0, 1] are further apart in L2")


@dataclass(frozen=True)
class Threats:
    """The threat models to measure: names in THREATS' order, the L2 radius (None: the data set's) and the
    corruption set's source (None: published)."""

    names: tuple[str, ...] = ("linf",)
    eps_l2: float | None = None
    corruptions: str | None = None

    @classmethod
    def parse(cls, threat: str, eps_l2: Any = None, corruptions: str | None = None) -> Threats:
        """From the command line's ``--threat``, ``--eps-l2``, ``--corruptions``; ConfigError in one line."""
        names = parse_threats(threat)
        if eps_l2 is not None and "l2" not in names:
            raise ConfigError("--eps-l2 is the radius of --threat l2: add l2 to --threat or leave --eps-l2 out")
        if corruptions is not None and "corruptions" not in names:
            raise ConfigError("--corruptions chooses the set of --threat corruptions: add corruptions to --threat")
        if corruptions is not None and corruptions not in CORRUPTION_SOURCES:
            raise ConfigError(f"--corruptions {corruptions!r}: known: {', '.join(CORRUPTION_SOURCES)}")
        return cls(names, None if eps_l2 is None else parse_eps_l2(eps_l2), corruptions)

    @property
    def extra(self) -> bool:
        """Whether anything beyond L-inf is asked for."""
        return any(t != "linf" for t in self.names)

    def radius(self, dataset: str) -> float:
        """The L2 radius for ``dataset``; ConfigError when it has no default and none was given."""
        if self.eps_l2 is not None:
            return self.eps_l2
        if dataset not in L2_EPS:
            raise ConfigError(f"--threat l2: data set {dataset!r} has no default L2 radius; give one with --eps-l2")
        return L2_EPS[dataset]

    @property
    def source(self) -> str:
        return self.corruptions or "published"

    def check(self, dataset: str) -> None:
        """Everything about ``dataset`` that can be said before any data is read; ConfigError / DataError."""
        if "l2" in self.names:
            self.radius(dataset)
        if "corruptions" in self.names:
            check_corruption_dataset(dataset, self.source)

    def missing(self, metrics: dict, dataset: str, own_norm: str = "linf") -> tuple[str, ...]:
        """The threat models beyond L-inf whose measurement ``metrics`` lacks (or holds for another radius or
        corruption set). A run trained under L2 has its L2 evaluation as its own: ``l2`` is never missing there."""
        out = []
        l2 = metrics.get("l2") or {}
        if "l2" in self.names and own_norm != "l2" and l2.get("eps") != self.radius(dataset):
            out.append("l2")
        corr = metrics.get("corruptions") or {}
        if "corruptions" in self.names and corr.get("dataset") != corruption_set_name(dataset, self.source):
            out.append("corruptions")
        return tuple(out)


def measure_more(model: nn.Module, which: tuple[str, ...], *, test, eval_cfg: EvalConfig, device, dataset: str,
                 threats: Threats, corrupted, seed: int, memory_format, fold_bn: bool, features: nn.Module | None,
                 log: Callable[[str], None], state_dir: Path | None) -> tuple[dict, dict | None]:
    """The metrics entries of the threat models ``which`` (``"l2"``, ``"corruptions"``) of ``model``, ``{"l2":
    {...}, "corruptions": {...}}``, and the L2 evaluation's clean-accuracy fields (None without ``l2``). That clean
    accuracy is the L-inf one's (the same images): it is left out of ``"l2"``, for the caller to use where nothing
    else measured it. The corruption set ``corrupted`` was loaded by the caller (checked before anything ran)."""
    kw = dict(seed=seed, memory_format=memory_format, fold_bn=fold_bn)
    out: dict[str, Any] = {}
    clean = None
    if "l2" in which:
        eps = threats.radius(dataset)
        l2 = L2Evaluator(test, eval_cfg, eps, device, **kw).run(model, log=lambda s: log(f"L2 {s}"),
                                                                  features=features, state_dir=state_dir)
        out["l2"] = {"eps": eps, **{k: v for k, v in l2.items() if k not in SHARED}}
        out["l2"]["per_example"] = {k: v for k, v in l2["per_example"].items() if k != "clean"}
        out["l2"]["seconds"] = {k: v for k, v in l2["seconds"].items() if k != "clean"}
        clean = clean_of(l2)
    if "corruptions" in which:
        prepared = Evaluator(test, eval_cfg, 0.0, device, **kw).ready(model)[0]
        out["corruptions"] = corruption_accuracy(prepared, corrupted, device, eval_cfg.batch_size,
                                                 n=eval_cfg.n_clean, log=log)
    return out, clean


# What the L2 evaluation shares with the L-inf one (the clean images and the evaluated copy's kernel choices).
SHARED = ("clean", "n_clean", "eval_layout", "eval_bn_folded")


def clean_of(l2: dict) -> dict:
    """The top-level clean-accuracy fields of an evaluation measured in L2 alone."""
    return {"clean": l2["clean"], "n_clean": l2["n_clean"], "per_example": {"clean": l2["per_example"]["clean"]},
            "seconds": {"clean": l2["seconds"]["clean"]}, "eval_layout": l2.get("eval_layout"),
            "eval_bn_folded": l2.get("eval_bn_folded")}


def timed_clean(ev: Evaluator, prepared: nn.Module, n: int) -> dict:
    """Clean accuracy alone (an evaluation of corruptions only reads its numbers against it)."""
    t0 = time.perf_counter()
    ok = ev.correct(prepared, n)
    return {"clean": float(ok.float().mean()), "n_clean": len(ok), "seconds": {"clean": time.perf_counter() - t0}}

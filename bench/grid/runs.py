"""Runs and their parents: a run of a method with its paper recipe, and a grid's runs as a dependency graph.

A fine-tuning run names its parent run inside its own config, so a grid is a dependency graph: ``expand``
adds the parents, drops duplicates (same config hash = same run, whichever grid asked for it) and orders
parents before children.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.core.config import EvalConfig, RunConfig, TrainConfig, run_id
from methods import get_method, parent_method, resolve_hparams


def make_run(method: str, *, model: str, dataset: str, train: TrainConfig | None = None,
             epochs: int | None = None, hparams: dict[str, Any] | None = None, eval: EvalConfig = EvalConfig(),
             seed: int = 0, parent: RunConfig | None = None, parent_train: TrainConfig | None = None,
             parent_epochs: int | None = None, **train_changes: Any) -> RunConfig:
    """A run of ``method`` with its paper recipe (``epochs`` and ``train_changes`` scale it), and, when the
    method fine-tunes, its parent: a run of the method that ``produces`` its parent kind (natural pre-training,
    PGD-AT)."""
    cls = get_method(method)
    train = train or cls.recipe
    if epochs is not None:
        train = replace(train, epochs=epochs)
    if train_changes:
        train = replace(train, **train_changes)
    if parent is None and cls.parent is not None:
        parent = make_run(parent_method(cls.parent), model=model, dataset=dataset, train=parent_train, epochs=parent_epochs,
                          eval=eval, seed=0)
    return RunConfig(method=method, hparams=resolve_hparams(method, hparams), model=model, dataset=dataset,
                     train=train, eval=eval, seed=seed, parent=parent)


def expand(runs: list[RunConfig]) -> list[RunConfig]:
    """Runs plus all their ancestors, each once, parents before children, otherwise in the grid's order."""
    seen: dict[str, RunConfig] = {}

    def visit(cfg: RunConfig) -> None:
        if cfg.parent is not None:
            visit(cfg.parent)
        seen.setdefault(run_id(cfg), cfg)

    for cfg in runs:
        visit(cfg)
    return list(seen.values())


def seeded(runs: list[RunConfig], seeds: int) -> list[RunConfig]:
    return [replace(r, seed=s) for s in range(seeds) for r in runs]


def unique(runs: list[RunConfig]) -> list[RunConfig]:
    """Each run once (by run id), in order."""
    out: dict[str, RunConfig] = {}
    for r in runs:
        out.setdefault(run_id(r), r)
    return list(out.values())

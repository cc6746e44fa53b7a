"""Grids: plain functions returning the run configs of an experiment.

A fine-tuning run names its parent run inside its own config, so a grid is a dependency graph: ``expand``
adds the parents, drops duplicates (same config hash = same run, whichever grid asked for it) and orders
parents before children. Fine-tuning runs of several seeds share one parent (seed 0), as the paper fine-tunes
one pre-trained model; the seed-to-seed spread is then the spread of the method, not of the pre-training.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from bench.config import ConfigError, EvalConfig, RunConfig, TrainConfig, run_id
from methods import get_method, resolve_hparams

GRIDS: dict[str, Callable[[int], list[RunConfig]]] = {}


def grid(fn: Callable[[int], list[RunConfig]]) -> Callable[[int], list[RunConfig]]:
    GRIDS[fn.__name__] = fn
    return fn


def get_grid(name: str, seeds: int = 1) -> list[RunConfig]:
    if "/" in name or "\\" in name:
        raise ConfigError(f"grid name '{name}' contains a path separator; known grids: {', '.join(sorted(GRIDS))}")
    if name not in GRIDS:
        raise ConfigError(f"unknown grid '{name}'; known: {', '.join(sorted(GRIDS))}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (got {seeds})")
    return GRIDS[name](seeds)


def make_run(method: str, *, model: str, dataset: str, train: TrainConfig | None = None,
             epochs: int | None = None, hparams: dict[str, Any] | None = None, eval: EvalConfig = EvalConfig(),
             seed: int = 0, parent: RunConfig | None = None, parent_train: TrainConfig | None = None,
             parent_epochs: int | None = None, **train_changes: Any) -> RunConfig:
    """A run of ``method`` with its paper recipe (``epochs`` and ``train_changes`` scale it), and, when the
    method fine-tunes, its parent: a ``standard`` run for "natural", a ``pgd_at`` run for "adversarial"."""
    cls = get_method(method)
    train = train or cls.recipe
    if epochs is not None:
        train = replace(train, epochs=epochs)
    if train_changes:
        train = replace(train, **train_changes)
    if parent is None and cls.parent is not None:
        parent_method = "standard" if cls.parent == "natural" else "pgd_at"
        parent = make_run(parent_method, model=model, dataset=dataset, train=parent_train, epochs=parent_epochs,
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


# -- grids ----------------------------------------------------------------------------------------------------
DEMO_EVAL = EvalConfig(n_clean=300, n_pgd=300, n_aa=100, batch_size=300)


@grid
def demo(seeds: int = 1) -> list[RunConfig]:
    """Natural pre-training, then vAFT and AFD, on the embedded digits with the small CNN: offline, minutes."""
    common = dict(model="small_cnn", dataset="digits", eval=DEMO_EVAL, parent_epochs=15)
    return seeded([make_run("vaft", epochs=4, **common), make_run("afd", epochs=4, **common)], seeds)

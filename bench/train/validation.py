"""The one gate a run passes before anything is written: its values, and what its method declares it cannot do
at them (fp16 without the gradient scaler, several processes per run, a threat model its attack cannot have), for
the run and its parents.

Every entry point calls :func:`validate_run` once (the command line, a grid file's loading, the local and SLURM
preflights) and the loop once more (``bench.train.loop.execute``: a run may be executed from Python directly).
Every refusal is a ConfigError in one line (exit code 2 on the command line).
"""
from __future__ import annotations

from typing import Any

from bench.core.config import ConfigError, RunConfig
from methods import get_method, make_hparams


def check_method_precision(cls: type, hp: Any, precision: str) -> None:
    """ConfigError (one line) when the method class ``cls`` cannot train at ``precision``: fp16 needs the gradient
    scaler, which a method declares it goes through (``Method.grad_scaler_problem``)."""
    if precision != "fp16":
        return
    why = cls.grad_scaler_problem(hp)
    if why:
        raise ConfigError(f"method {cls.name} does not support fp16: use bf16 or fp32 ({why})")


def validate_run(cfg: RunConfig, procs: int = 1) -> None:
    """A run's values (``RunConfig.validate``) and what its method declares it cannot do at them, for the run and
    its parents, on ``procs`` processes per run: ConfigError in one line."""
    cfg.validate()
    precision = cfg.train.precision
    node: RunConfig | None = cfg
    while node is not None:
        cls = get_method(node.method)
        try:
            hp = make_hparams(node.method, tuple(node.hparams)) if node.hparams else cls.Hparams()
        except TypeError:  # hyperparameters of another version of the method: reported where they are resolved
            hp = None
        check_method_precision(cls, hp, node.train.precision)
        why = cls.norm_problem(node.norm)
        if why:
            raise ConfigError(why)
        why = cls.data_parallel_problem(hp) if procs > 1 else None
        if why:
            raise ConfigError(f"method {cls.name} cannot train one run on {procs} processes: {why}; run it with "
                              "one process per run")
        node = node.parent
    if procs > 1 and precision == "fp16":
        raise ConfigError("fp16 with several processes per run is not supported (the gradient scaler's skip "
                          "decision is per rank): use bf16 or fp32")

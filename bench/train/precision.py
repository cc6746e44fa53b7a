"""What a method may do at a training precision, and the step function the loop calls per batch.

The numerics themselves (TF32 policy, autocast, the gradient scaler's helpers) are ``bench.core.numerics``; this
module asks the method's declarations (``Method.grad_scaler_problem``) and so sits above methods/.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from bench.core.config import ConfigError
from bench.core.numerics import backward, make_grad_scaler, step, training_context
from methods import get_method, make_hparams
from methods.base import Method


def check_method_precision(cls: type, hp: Any, precision: str) -> None:
    """ConfigError (one line) when the method class ``cls`` cannot train at ``precision``: fp16 needs the gradient
    scaler, which a method declares it goes through (``Method.grad_scaler_problem``)."""
    if precision != "fp16":
        return
    why = cls.grad_scaler_problem(hp)
    if why:
        raise ConfigError(f"method {cls.name} does not support fp16: use bf16 or fp32 ({why})")


def check_run(cfg: Any, procs: int = 1) -> None:
    """A run's values (``RunConfig.validate``) and what its method declares it cannot do at them (fp16 without
    the gradient scaler; several processes per run), for the run and its parents: ConfigError in one line. Every
    entry point calls this before anything is written (the command line, grid files, the local and SLURM
    preflights, the loop)."""
    cfg.validate()
    while cfg is not None:
        cls = get_method(cfg.method)
        try:
            hp = make_hparams(cfg.method, tuple(cfg.hparams)) if cfg.hparams else cls.Hparams()
        except TypeError:  # hyperparameters of another version of the method: reported where they are resolved
            hp = None
        check_method_precision(cls, hp, cfg.train.precision)
        why = cls.data_parallel_problem(hp) if procs > 1 else None
        if why:
            raise ConfigError(f"method {cls.name} cannot train one run on {procs} processes: {why}; run it with "
                              "one process per run")
        cfg = cfg.parent


def scaled_train_step(method, batch, info) -> dict[str, torch.Tensor]:
    """``Method.train_step`` (loss -> zero_grad -> backward -> step) with ``method.grad_scaler``."""
    out = method.loss(batch, info)
    for opt in method.optimizers:
        opt.zero_grad(set_to_none=True)
    backward(out["loss"], method.grad_scaler)
    step(method.optimizers, method.grad_scaler)
    return out


def make_step(method, precision: str, device: torch.device, benchmark: bool = False) -> Callable[[Any, Any], dict]:
    """The function the loop calls per batch: the method's step inside :func:`training_context`; for fp16 with a
    gradient scaler (``method.grad_scaler``, checkpointed by the loop). Refuses (ConfigError) a method whose
    update cannot be scaled."""
    scaler = make_grad_scaler(precision, device)
    method.grad_scaler = scaler
    if scaler is not None:
        check_method_precision(type(method), getattr(method, "hp", None), precision)
    base = scaler is not None and type(method).train_step is Method.train_step

    def run(batch, info) -> dict:
        with training_context(device, precision, benchmark):
            return scaled_train_step(method, batch, info) if base else method.train_step(batch, info)

    return run

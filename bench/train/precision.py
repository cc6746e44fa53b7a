"""What a method may do at a training precision, and the step function the loop calls per batch.

The numerics themselves (TF32 policy, autocast, the gradient scaler's helpers) are ``bench.core.numerics``; what
a method declares it cannot do at a precision is checked by ``bench.train.validation``, the run's one gate.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from bench.core.numerics import backward, make_grad_scaler, step, training_context
from bench.train.validation import check_method_precision
from methods.base import Method


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

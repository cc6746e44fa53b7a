"""Learning-rate (and momentum) schedules as pure functions of the position in training.

Being a pure function of (epoch, step) rather than a stateful scheduler object is what makes resume exact:
after a restart the loop simply asks for the lr at the position it resumes from.

Every schedule is a function of the fraction of the run's ITERATIONS done, so a recipe scaled down to a few
epochs keeps every phase its paper's has (by epochs, TRADES' decay at epoch 75 of 76 would round to epoch 7 of 7
and never happen). At the paper's epoch counts the boundaries fall exactly on the epochs the public code uses.
"""
from __future__ import annotations

import math

from bench.core.config import CYCLIC_BASE_MOMENTUM, TrainConfig

# lr 0.025 for epochs 1-10, 0.02 for 11-12, 0.01 for 13-14, 0.005 for 15-16, 0.0025 for 17-18, 0.00125 for
# 19-20. Written as (fraction of training done, multiplier of the base lr) so a scaled-down run keeps its
# shape; at 20 epochs it gives exactly the code's values.
AFT_STEPS = ((0.5, 1.0), (0.6, 0.8), (0.7, 0.4), (0.8, 0.2), (0.9, 0.1), (1.0, 0.05))


def milestone_iteration(fraction: float, total: int) -> int:
    """The iteration at which a milestone given as a fraction of the run takes effect: round(fraction * total),
    kept inside [1, total - 1] so a run of two or more iterations always has both the phase before it and the
    phase after it (a milestone at 75/76 of a 7-epoch run decays during its last epoch instead of never)."""
    it = round(fraction * total)
    return min(max(1, it), total - 1) if total >= 2 else it


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of epoch ``epoch`` (0-based)."""
    total = cfg.epochs * steps_per_epoch
    t = epoch * steps_per_epoch + step
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "piecewise":
        # torch's MultiStepLR with milestones as fractions of the run's iterations (at the paper's epoch counts
        # they are epoch boundaries, as the public codes' epoch-wise decays)
        k = sum(1 for m in cfg.milestones if t >= milestone_iteration(m, total))
        return cfg.lr * cfg.gamma**k
    if cfg.schedule == "aft":
        for i, (end, mult) in enumerate(AFT_STEPS[:-1]):
            if t < milestone_iteration(end, total):
                return cfg.lr * mult
        return cfg.lr * AFT_STEPS[-1][1]
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / total))
    if cfg.schedule == "cyclic":
        # FGSM-GA (tml-epfl/understanding-fast-adv-training): triangle 0 -> lr at `cyclic_peak` -> 0,
        # as np.interp([t], [0, peak*T, T], [0, lr, 0]) updated every iteration; Free-AT's CyclicLR is the same
        # triangle with the peak at half the run.
        peak = cfg.cyclic_peak * total
        return cfg.lr * (t / peak if t < peak else max(0.0, (total - t) / (total - peak)))
    raise ValueError(f"unknown schedule {cfg.schedule}")


def momentum_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """SGD momentum at that position: constant, except a cyclic schedule with ``cycle_momentum``, where it moves
    opposite to the lr as torch's CyclicLR does: momentum - (momentum - 0.8) * lr / max_lr (0.9 -> 0.8 -> 0.9)."""
    if cfg.schedule == "cyclic" and cfg.cycle_momentum and cfg.lr > 0:
        scale = lr_at(cfg, epoch, step, steps_per_epoch) / cfg.lr
        return cfg.momentum - (cfg.momentum - CYCLIC_BASE_MOMENTUM) * scale
    return cfg.momentum


def apply(cfg: TrainConfig, optimizers, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Set every optimizer's lr (times a group's ``lr_scale``) and, when the schedule cycles it, momentum, for
    that position; returns the lr."""
    lr = lr_at(cfg, epoch, step, steps_per_epoch)
    momentum = momentum_at(cfg, epoch, step, steps_per_epoch) if cfg.cycle_momentum else None
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            if momentum is not None and "momentum" in group:
                group["momentum"] = momentum
    return lr

"""Learning-rate schedules as one pure function of the position in training.

Being a pure function of (epoch, step) rather than a stateful scheduler object is what makes resume exact:
after a restart the loop simply asks for the lr at the position it resumes from.
"""
from __future__ import annotations

import math

from bench.config import TrainConfig

# AFT schedule of the ARREST / AFD public code (changzhang777/AFD ARREST.py, tl+sl.py), for 20 epochs:
# lr 0.025 for epochs 1-10, 0.02 for 11-12, 0.01 for 13-14, 0.005 for 15-16, 0.0025 for 17-18, 0.00125 for
# 19-20. Written as (fraction of training done, multiplier of the base lr) so a scaled-down run keeps its
# shape; at 20 epochs it gives exactly the code's values.
AFT_STEPS = ((0.5, 1.0), (0.6, 0.8), (0.7, 0.4), (0.8, 0.2), (0.9, 0.1), (1.0, 0.05))


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of epoch ``epoch`` (0-based)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "piecewise":
        # epoch-wise, like torch's MultiStepLR with milestones given as fractions of the epochs
        # (a milestone never falls on epoch 0: a 1-epoch smoke run keeps the base lr)
        k = sum(1 for m in cfg.milestones if epoch >= max(1, round(m * cfg.epochs)))
        return cfg.lr * cfg.gamma**k
    if cfg.schedule == "aft":
        done = epoch / cfg.epochs
        for end, mult in AFT_STEPS:
            if done < end - 1e-9:
                return cfg.lr * mult
        return cfg.lr * AFT_STEPS[-1][1]
    total = cfg.epochs * steps_per_epoch
    t = epoch * steps_per_epoch + step  # per-iteration schedules
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / total))
    if cfg.schedule == "cyclic":
        # FGSM-GA (tml-epfl/understanding-fast-adv-training): triangle 0 -> lr at `cyclic_peak` -> 0,
        # as np.interp([t], [0, peak*T, T], [0, lr, 0]) updated every iteration.
        peak = cfg.cyclic_peak * total
        return cfg.lr * (t / peak if t < peak else max(0.0, (total - t) / (total - peak)))
    raise ValueError(f"unknown schedule {cfg.schedule}")


def per_iteration(cfg: TrainConfig) -> bool:
    return cfg.schedule in ("cosine", "cyclic")

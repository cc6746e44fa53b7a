"""Training curves where people look: each run's per-epoch scalars as TensorBoard event files.

Written when the optional ``tensorboard`` package is installed (``pip install -e '.[tensorboard]'``), one folder per
run, ``<results>/tensorboard/<method>-<run_id>/``, so ``tensorboard --logdir results/tensorboard`` shows every run
of every grid side by side. Every numeric field of an epoch's log entry is a scalar (losses, lr, adversarial
accuracy, feature gap, step sizes, ...) at step = epoch. The run's JSON log stays the source of truth: the event
files are a view of it, and a resumed run first drops the events of epochs it is about to redo (``purge_step``),
so a kill between an epoch's events and its checkpoint leaves no duplicate.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def run_dir(results: str | Path, method: str, rid: str) -> Path:
    return Path(results) / "tensorboard" / f"{method}-{rid}"


class EpochWriter:
    """Writes one epoch log entry at a time; a no-op when tensorboard is not installed."""

    def __init__(self, results: str | Path, method: str, rid: str, resume_epoch: int):
        self._writer = None
        if available():
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at steps >= the first epoch still to train are from a run that was cut off
            self._writer = SummaryWriter(log_dir=str(run_dir(results, method, rid)),
                                         purge_step=resume_epoch + 1 if resume_epoch else None)

    def write(self, entry: dict[str, Any]) -> None:
        if self._writer is None:
            return
        step = int(entry["epoch"])
        for key, value in entry.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

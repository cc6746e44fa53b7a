"""A run's result file: the fields every result carries, for a run that trained and for one that never did."""
from __future__ import annotations

import datetime as dt
import time

import torch

from bench.core import numerics
from bench.core.config import ConfigError, RunConfig, run_id, to_dict
from bench.core.fingerprint import changed_modules, code_fingerprint
from bench.core.provenance import provenance
from methods import get_method


def current_code(method: str) -> dict | None:
    """The fingerprint of the code a run of ``method`` goes through now (bench/core/fingerprint.py; cached per
    process), or None when no such method is registered (a failed result of an unknown name records none)."""
    try:
        return code_fingerprint(get_method(method))
    except ConfigError:
        return None


def stale_modules(result: dict) -> list[str] | None:
    """The modules whose code changed since a done ``result`` was computed ([] when none did), or None when it is
    not known: the result recorded no fingerprint (it predates them) or its method is not registered."""
    if not isinstance(result.get("code"), dict):
        return None
    current = current_code((result.get("config") or {}).get("method", ""))
    return None if current is None else changed_modules(result.get("code"), current)


def run_result(cfg: RunConfig, rid: str, device: torch.device | str, started: str, wall: tuple[float, int] | None,
               train_seconds: float, epoch_log: list, *, status: str, reason: str | None = None,
               metrics: dict | None = None, extra: dict | None = None,
               thread_counts: list[int] | None = None, code: dict | None = None) -> dict:
    """A run's result file. ``wall`` is (perf_counter origin, processes so far), or None for a run that never
    started (its parent failed, or it crashed before training: :func:`failed_result`). ``code``: the fingerprint
    of the code that computed it (:func:`current_code`), so that a later edit shows it as stale."""
    wall_seconds, processes = (time.perf_counter() - wall[0], wall[1]) if wall is not None else (0.0, 0)
    return {
        "run_id": rid, "status": status, "reason": reason, "config": to_dict(cfg), "metrics": metrics or {},
        "extra": extra or {}, "epochs": epoch_log, "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(1, len(epoch_log)),
        "precision_effective": numerics.effective_precision(cfg.train.precision, torch.device(device)),
        # wall_seconds over every process that ran it (wall_processes: 1 = never interrupted)
        "wall_seconds": wall_seconds, "wall_processes": processes, "started": started,
        "thread_counts": thread_counts or [],  # torch threads of each process that trained it; `threads`: this one's
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "code": code,
        **provenance(device),
    }


def failed_result(cfg: RunConfig, reason: str, device: torch.device | str, traceback: str | None = None) -> dict:
    """The result of a run recorded as failed by its runner without having trained (its parent did not finish,
    or it crashed outside the loop's own failure handling); ``traceback`` when a crash is the reason."""
    result = run_result(cfg, run_id(cfg), device, "", None, 0.0, [], status="failed", reason=reason,
                        code=current_code(cfg.method))
    if traceback is not None:
        result["traceback"] = traceback
    return result

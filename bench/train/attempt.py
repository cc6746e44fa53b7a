"""One run as a runner does it (the local runner, the node-local pool, a SLURM job): ``execute``, and a crash
recorded as the run's failed result so that the rest of the grid goes on."""
from __future__ import annotations

import traceback
from typing import Callable

from bench.core import distributed
from bench.core.config import ConfigError, RunConfig, run_id
from bench.core.runtime import Runtime
from bench.core.store import Store
from bench.train.loop import execute
from bench.train.rerun import Rerun
from bench.train.result import failed_result


def execute_recording_crash(cfg: RunConfig, rt: Runtime, *, log: Callable[[str], None] = print,
                            need_model: bool = False, if_free: bool = False, rerun: Rerun = Rerun()) -> dict:
    """``bench.train.loop.execute``; bad input (ConfigError) is re-raised, to stop the grid with one line; any
    other exception becomes the run's failed result with its traceback (:func:`record_crash`), returned."""
    try:
        return execute(cfg, rt, log=log, need_model=need_model, if_free=if_free, rerun=rerun)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a crash in one run must not lose the rest of the grid
        return record_crash(cfg, rt, e, log)


def record_crash(cfg: RunConfig, rt: Runtime, e: BaseException, log: Callable[[str], None] = print) -> dict:
    """Record ``e`` as the run's failed result, reason and traceback, and log it. Rank 0 writes it, unless another
    runner holds the run's lock or finished the run meanwhile (a late crash must not overwrite their result)."""
    rid = run_id(cfg)
    result = failed_result(cfg, f"{type(e).__name__}: {e}", rt.torch_device(),
                           "".join(traceback.format_exception(e)))
    if distributed.from_env().main:
        store = Store(rt.results)
        with store.lock(rid, blocking=False) as got:
            if got and store.status(rid) != "done":
                store.write(rid, result)
    log(f"[{rid}] {cfg.method} FAILED: {result['reason']}")
    return result

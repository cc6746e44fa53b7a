"""A node-local scheduler: one worker process per device, independent runs trained concurrently.

``bench run --grid table1 --gpus 0,1,2,3`` starts four workers, worker i on ``cuda:i`` (``--workers K`` starts K
CPU workers, for machines without GPUs and for the tests). Every worker walks the grid in dependency order and
trains the first run that is

* not done (nor failed since this pool started: a failed run is not tried twice in one pool),
* runnable (its parent is done), and
* free: its lock is not held by another runner (another worker, another ``bench run``, a SLURM job). A held run
  is skipped for the next runnable one, not waited on (``execute(..., if_free=True)``).

Workers coordinate only through the result store and its locks, so a worker that dies (killed, out of memory)
releases its run's lock with its process, and the next worker that looks finds the run free and resumes it from
its last checkpoint. A worker with nothing runnable waits a little and looks again until every run of the grid
is done or failed. A run whose parent failed in this pool is recorded as failed with that reason, as the
one-process runner does. Results are those of a one-process run: the same run ids, files and numbers.

Stale runs (finished by code that changed since) are named, one line each, before the workers start; ``--rerun``
(bench/train/rerun.py) makes the results it chooses "todo": the worker that takes such a run archives the old
result under the run's lock and trains it from scratch. Only results finished before the pool started are chosen,
so no run is re-run twice.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import multiprocessing
import time
from typing import Callable

from bench.core.config import ConfigError, RunConfig, from_dict, run_id, to_dict
from bench.core.runtime import Runtime
from bench.core.store import CorruptFile, Store
from bench.grid.runner import parents_needing_model, preflight, stale_note
from bench.grid.runs import expand
from bench.train.attempt import execute_recording_crash
from bench.train.threat_evals import lacks_threats
from bench.train.rerun import Rerun
from bench.train.result import failed_result

POLL_SECONDS = 2.0  # a worker with nothing runnable looks again after this long


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _status(store: Store, rid: str, since: str, rerun: Rerun = Rerun()) -> str:
    """done | failed (in this pool) | todo (``rerun`` chooses its stored result: to archive and train again)."""
    try:
        res = store.read(rid)
    except CorruptFile:
        return "todo"
    if res is None or rerun.wants(res):
        return "todo"
    if res.get("status") == "done":
        return "done"
    if res.get("status") == "failed" and (res.get("finished") or "") >= since:
        return "failed"
    return "todo"


def work(ordered: list[RunConfig], rt: Runtime, since: str, name: str, log: Callable[[str], None] = print,
         poll: float = POLL_SECONDS, rerun: str | None = None) -> None:
    """One worker: train runnable, free runs of ``ordered`` until every run is done or failed in this pool
    (``rerun``: ``bench run --rerun``, for results finished before ``since``)."""
    store = Store(rt.results)
    again = Rerun(rerun, since)
    needed = parents_needing_model(ordered, store)
    ids = {run_id(c): c for c in ordered}
    while True:
        status = {rid: _status(store, rid, since, again) for rid in ids}
        todo = [rid for rid, s in status.items() if s == "todo" or (s == "done" and rid in needed
                                                                      and not store.model_path(rid).exists())
                or (s == "done" and lacks_threats(ids[rid], rt, store))]  # measured on its saved model
        if not todo:
            return
        started = False
        for rid in todo:
            cfg = ids[rid]
            pid = run_id(cfg.parent) if cfg.parent is not None else None
            if pid is not None and pid in ids and status[pid] == "failed":
                reason = f"parent {pid} ({cfg.parent.method}) did not finish"
                store.write(rid, failed_result(cfg, reason, rt.torch_device()))
                log(f"[{name}] {rid} {cfg.method}: skipped, {reason}")
                started = True
                break
            if pid is not None and pid in ids and (status[pid] != "done" or not store.model_path(pid).exists()):
                continue  # its parent is still to train (here or on another worker)
            # a crash in one run is recorded and does not stop the worker
            res = execute_recording_crash(cfg, rt, log=lambda s: log(f"[{name}] {s}"), need_model=rid in needed,
                                          if_free=True, rerun=again)
            if res.get("status") == "held":
                continue  # another runner trains it: the next runnable one
            started = True
            break
        if not started:
            time.sleep(poll)


def _worker(cfgs: list[dict], rt: dict, since: str, name: str, rerun: str | None = None) -> None:
    """A worker process (module-level: pickled by multiprocessing's spawn)."""
    ordered = [from_dict(c) for c in cfgs]
    work(ordered, Runtime(**rt), since, name, log=lambda s: print(s, flush=True), rerun=rerun)


def run_pool(runs: list[RunConfig], rt: Runtime, devices: list[str], log: Callable[[str], None] = print,
             rerun: str | None = None) -> dict:
    """Train ``runs`` (and their parents) with one worker process per entry of ``devices``; returns the results.
    A worker that dies is reported; its run is resumed by the others. ``rerun``: ``bench run --rerun``."""
    if rt.procs > 1:
        raise ConfigError("--gpus / --workers run one process per run: leave out --gpus-per-run / --procs-per-run")
    ordered = expand(runs)
    preflight(ordered, rt)
    since = _now()
    store = Store(rt.results)
    for cfg in ordered:  # stale runs and runs to re-run, one line each, before any worker starts
        try:
            note = stale_note(cfg, store.read(run_id(cfg)), Rerun(rerun, since), ordered)
        except CorruptFile:
            note = None
        if note is not None:
            log(f"{run_id(cfg)} {cfg.method} on {cfg.model}/{cfg.dataset} seed {cfg.seed}: {note}")
    cfgs = [to_dict(c) for c in ordered]
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i, device in enumerate(devices):
        wrt = dataclasses.asdict(dataclasses.replace(rt, device=device))
        p = ctx.Process(target=_worker, args=(cfgs, wrt, since, f"{device}#{i}", rerun), daemon=False)
        p.start()
        procs.append((device, p))
    log(f"{len(procs)} worker(s) on {', '.join(devices)}: {len(ordered)} run(s)")
    for device, p in procs:
        p.join()
        if p.exitcode != 0:
            log(f"worker on {device} ended with exit code {p.exitcode}: its run, if any, resumes on the others "
                "(or on the next bench run)")
    return {run_id(c): store.read(run_id(c)) or {"run_id": run_id(c), "status": "missing"} for c in ordered}


def devices_from(gpus: str | None, workers: int | None, available: int) -> list[str]:
    """``--gpus 0,1,2,3`` -> cuda:0..3 (checked against the visible devices); ``--workers K`` -> K CPU workers."""
    if gpus is not None and workers is not None:
        raise ConfigError("give --gpus (one worker per GPU) or --workers (CPU workers), not both")
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1 (got {workers})")
        return ["cpu"] * workers
    try:
        ids = [int(s) for s in (gpus or "").split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--gpus {gpus}: expected GPU numbers like 0,1,2,3") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise ConfigError(f"--gpus {gpus}: expected distinct GPU numbers like 0,1,2,3")
    if max(ids) >= available:
        raise ConfigError(f"--gpus {gpus}: this machine has {available} CUDA device(s)")
    return [f"cuda:{i}" for i in ids]

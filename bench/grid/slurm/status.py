"""`bench status` for every executor: each run's state from the result files, the local locks and the jobs
recorded at submission (joined with squeue and sacct). Needs no submitit: a local grid's status works without it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.core.config import RunConfig, run_id
from bench.core.fingerprint import describe_changes
from bench.core.store import CorruptFile, Store, atomic_write_bytes
from bench.grid.runner import parents_needing_model
from bench.grid.runs import expand
from bench.grid.slurm.scheduler import QUEUED_STATES, RUNNING_STATES, JobState, SchedulerError, query_jobs
from bench.train.result import stale_modules


# -- job records ------------------------------------------------------------------------------------------------
def jobs_dir(results: Path) -> Path:
    return Path(results) / "jobs"


def read_job(results: Path, rid: str) -> dict | None:
    try:
        return json.loads((jobs_dir(results) / f"{rid}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_job(results: Path, rid: str, record: dict) -> None:
    atomic_write_bytes(jobs_dir(results) / f"{rid}.json", (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


# -- status ---------------------------------------------------------------------------------------------------------
@dataclass
class RunStatus:
    cfg: RunConfig
    run_id: str
    state: str  # done / stale (done by other code: reason names the changed modules) / running / queued / failed /
    # corrupt / missing / unknown
    reason: str = ""
    job_id: str | None = None
    # done or stale: the reliability indicators tripped in its evaluation (the result's metrics.unreliable); none
    # where nothing tripped or the result predates the indicators
    unreliable: tuple[str, ...] = ()


def grid_status(runs: list[RunConfig], results: Path, *, query: Callable[[list[str]], dict] = query_jobs,
                expand_parents: bool = True) -> list[RunStatus]:
    """Per run (and parent): done / stale (done, by code that changed since: the modules) / running / queued /
    failed (with reason) / corrupt / missing, from the result files, the local locks and the scheduler (jobs
    recorded in <results>/jobs)."""
    store = Store(results)
    ordered = expand(runs) if expand_parents else runs
    records = {run_id(c): read_job(results, run_id(c)) for c in ordered}
    job_ids = [r["job_id"] for r in records.values() if r]
    scheduler_error = None
    try:
        jobs = query(job_ids) if job_ids else {}
    except SchedulerError as e:
        jobs, scheduler_error = {}, str(e)
    out: list[RunStatus] = []
    by_id: dict[str, RunStatus] = {}
    needed = parents_needing_model(ordered, store)
    for cfg in ordered:
        rec = records[run_id(cfg)]
        job = jobs.get(rec["job_id"]) if rec else None
        st = _run_status(cfg, store, rec, job, scheduler_error, run_id(cfg) in needed, by_id)
        out.append(st)
        by_id[st.run_id] = st
    return out


def _run_status(cfg: RunConfig, store: Store, rec: dict | None, job: JobState | None, scheduler_error: str | None,
                needed: bool, by_id: dict[str, RunStatus]) -> RunStatus:
    """One run's state: its result first, then its job, its lock, and what is left (``by_id``: the runs before it,
    its parent among them)."""
    rid = run_id(cfg)
    try:
        result, corrupt = store.read(rid), None
    except CorruptFile as e:
        result, corrupt = None, str(e)
    job_id = rec["job_id"] if rec else None
    if result is not None and result["status"] == "done" and needed and not (
            job is not None and job.state in QUEUED_STATES | RUNNING_STATES):
        return RunStatus(cfg, rid, "missing", "done, but its model file is missing and a child needs it: "
                         "will train again", job_id)
    if result is not None and result["status"] == "done":
        changed = stale_modules(result)
        tripped = tuple((result.get("metrics") or {}).get("unreliable") or ())
        if changed:
            return RunStatus(cfg, rid, "stale", f"{describe_changes(changed)} changed", job_id, tripped)
        return RunStatus(cfg, rid, "done", job_id=job_id, unreliable=tripped)
    if job is not None and job.state in QUEUED_STATES:
        return RunStatus(cfg, rid, "queued", job.reason, job_id)
    if job is not None and job.state in RUNNING_STATES:
        return RunStatus(cfg, rid, "running", f"slurm job {job_id}", job_id)
    if (store.root / "locks" / f"{rid}.lock").is_file() and store.is_locked(rid):  # a folder there locks nothing
        return RunStatus(cfg, rid, "running", "locked by a process on this machine", job_id)
    if corrupt is not None:
        return RunStatus(cfg, rid, "corrupt", corrupt, job_id)
    if result is not None:  # a failed result: its own reason says why
        return RunStatus(cfg, rid, result["status"], str(result.get("reason") or ""), job_id)
    if rec is not None and scheduler_error is not None:
        return RunStatus(cfg, rid, "unknown", f"slurm job {job_id}: {scheduler_error}", job_id)
    if rec is not None:
        return RunStatus(cfg, rid, "failed", _why_the_job_failed(cfg, rec, job, by_id), job_id)
    ckpt = store.ckpt_dir(rid) / "last.pt"
    return RunStatus(cfg, rid, "missing", "has a checkpoint: will resume" if ckpt.exists() else "", job_id)


def _why_the_job_failed(cfg: RunConfig, rec: dict, job: JobState | None, by_id: dict[str, RunStatus]) -> str:
    """A recorded job that left no result: its parent failed (the job was cancelled), it ended in a SLURM state,
    or it left the queue without a word (its log says more)."""
    job_id = rec["job_id"]
    parent = by_id.get(run_id(cfg.parent)) if cfg.parent is not None else None
    if parent is not None and parent.state == "failed":
        return f"parent {parent.run_id} ({cfg.parent.method}) failed; slurm job {job_id} was cancelled"
    if job is not None:
        return f"slurm job {job_id} ended {job.state}" + (f" ({job.reason})" if job.reason else "")
    return f"slurm job {job_id} left the queue without a result (log: {rec.get('stderr', '?')})"

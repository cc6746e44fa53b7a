"""The SLURM executor: a grid as job arrays linked by ``afterok`` dependencies, submitted through submitit.

What is submitted
-----------------
``expand`` gives every run of the grid plus its parents. Runs already done, queued or running are left alone;
the rest (missing, failed, corrupt) are grouped into job arrays:

* runs whose parent needs no new job (no parent, parent done, or parent already queued) go into one array per
  resource set (model x data set in the profile), with ``afterok`` on the parent's queued job if there is one;
* runs whose parent is submitted now go into one array per (parent, resource set), depending on exactly that
  parent's array task (``afterok:<array>_<task>``), so a child starts as soon as its own parent is done and a
  failed parent cancels its children (``--kill-on-invalid-dep=yes``) instead of leaving them pending forever.

Each job is a :class:`RunJob` (a ``submitit.helpers.Checkpointable``) called with the run's config as a plain
dict: it rebuilds the config inside the job and calls ``bench.train.loop.execute``, which takes the run's lock,
resumes from the last epoch checkpoint and writes the result atomically, once. On timeout or preemption
submitit calls ``checkpoint``, which resubmits the same callable with the same config; the requeued job resumes
from the checkpoint. A job whose process is killed outright and is requeued by SLURM does the same.

Code snapshot: the ``bench`` and ``methods`` packages are copied, at submission, into
``<results>/slurm/snapshots/<content hash>/`` and the jobs run with that folder as their working directory
(``--chdir``), so editing the repository while jobs wait in the queue does not change what they run. Unlike
``submitit.helpers.RsyncSnapshot`` (``git ls-files``), the copy includes files not yet committed.

Bookkeeping: ``<results>/jobs/<run_id>.json`` (written atomically) records the SLURM job id of each run's
latest submission; ``bench status`` joins it with ``squeue`` (and ``sacct`` when accounting exists).
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import submitit

from bench.core.config import ConfigError, RunConfig, from_dict, run_id, to_dict
from bench.core.runtime import Runtime
from bench.core.store import CorruptFile, Store, atomic_write_bytes
from bench.data.datasets import default_data_root, load_dataset
from bench.grid.runner import parents_needing_model
from bench.grid.runs import expand
from bench.models.architectures import MODELS, ModelError
from bench.train.attempt import execute_recording_crash, record_crash
from bench.train.validation import validate_run

REPO = Path(__file__).resolve().parents[2]
PROFILES_FILE = REPO / "slurm" / "profiles.toml"
DEFAULT_PROFILE = "gpu"
SNAPSHOT_PACKAGES = ("bench", "methods")


class SchedulerError(ConfigError):
    """SLURM cannot be reached, or refuses what we ask (unknown partition, a failed sbatch)."""


class ProfileError(ConfigError):
    """An unknown profile name or an invalid entry in the profile file."""


# -- profiles --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    """What one job asks SLURM for."""

    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem: str = "4G"
    time: str = "01:00:00"
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 256
    # One run on several processes (bench/core/distributed.py): ``tasks`` per node (0: one per GPU when gpus > 1,
    # else 1) on ``nodes`` nodes; the ranks come from SLURM's environment. cpus is per task.
    tasks: int = 0
    nodes: int = 1

    @property
    def tasks_per_node(self) -> int:
        return self.tasks or (self.gpus if self.gpus > 1 else 1)

    @property
    def world_size(self) -> int:
        return self.tasks_per_node * self.nodes

    @property
    def time_min(self) -> int:
        return parse_time(self.time)

    @property
    def mem_gb(self) -> float:
        return parse_mem_gb(self.mem)

    def describe(self) -> str:
        parts = [f"partition {self.partition or '(default)'}", f"gpus {self.gpus}", f"cpus {self.cpus}",
                 f"mem {self.mem}", f"time {self.time}"]
        if self.world_size > 1:
            parts.append(f"{self.world_size} processes per run ({self.nodes} node(s) x {self.tasks_per_node} tasks)")
        parts += [f"account {self.account}"] if self.account else []
        parts += [f"qos {self.qos}"] if self.qos else []
        return ", ".join(parts)


_RESOURCE_KEYS = {f for f in Resources.__dataclass_fields__}


def parse_time(text: str | int) -> int:
    """SLURM time ("MM", "HH:MM:SS", "D-HH:MM:SS", or minutes as an int) in whole minutes (rounded up)."""
    if isinstance(text, int):
        return text
    s = str(text).strip()
    try:
        days, _, rest = s.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if len(parts) == 1:
            h, m, sec = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, sec = parts[0], parts[1], 0
        elif len(parts) == 3:
            h, m, sec = parts
        else:
            raise ValueError
        minutes = (int(days) if days else 0) * 1440 + h * 60 + m + (1 if sec else 0)
    except ValueError:
        raise ProfileError(f"time '{text}' is not a SLURM time: write minutes, HH:MM:SS or D-HH:MM:SS") from None
    if minutes < 1:
        raise ProfileError(f"time '{text}' must be at least one minute")
    return minutes


def parse_mem_gb(text: str | int | float) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().upper().removesuffix("B")
    scale = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
    try:
        return float(s[:-1]) * scale[s[-1]] if s and s[-1] in scale else float(s) / 1024  # bare number: MB
    except ValueError:
        raise ProfileError(f"mem '{text}' is not a memory size: write e.g. 16G or 4000M") from None


def load_profiles(path: Path | None = None) -> dict[str, dict]:
    path = Path(path or os.environ.get("BENCH_SLURM_PROFILES") or PROFILES_FILE)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"SLURM profile file {path} not found: create it (see slurm/profiles.toml) "
                           "or set BENCH_SLURM_PROFILES") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"SLURM profile file {path} is not valid TOML: {e}") from None
    return data


def get_profile(name: str | None, path: Path | None = None) -> tuple[str, dict]:
    profiles = load_profiles(path)
    name = name or os.environ.get("BENCH_SLURM_PROFILE") or DEFAULT_PROFILE
    if name not in profiles or not isinstance(profiles[name], dict):
        raise ProfileError(f"unknown SLURM profile '{name}'; known: {', '.join(sorted(profiles))} "
                           f"(in {path or os.environ.get('BENCH_SLURM_PROFILES') or PROFILES_FILE})")
    return name, profiles[name]


def _resources_from(entries: dict, base: Resources, where: str) -> Resources:
    unknown = set(entries) - _RESOURCE_KEYS - {"resources"}
    if unknown:
        raise ProfileError(f"profile {where}: unknown key(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(_RESOURCE_KEYS))}")
    values = {k: v for k, v in entries.items() if k in _RESOURCE_KEYS}
    res = replace(base, **values)
    if not isinstance(res.gpus, int) or res.gpus < 0:
        raise ProfileError(f"profile {where}: gpus must be an integer >= 0 (got {res.gpus!r})")
    if not isinstance(res.cpus, int) or res.cpus < 1:
        raise ProfileError(f"profile {where}: cpus must be an integer >= 1 (got {res.cpus!r})")
    if not isinstance(res.tasks, int) or res.tasks < 0:
        raise ProfileError(f"profile {where}: tasks must be an integer >= 0 (0: one per GPU) (got {res.tasks!r})")
    if not isinstance(res.nodes, int) or res.nodes < 1:
        raise ProfileError(f"profile {where}: nodes must be an integer >= 1 (got {res.nodes!r})")
    if res.gpus > 1 and res.tasks not in (0, res.gpus):
        raise ProfileError(f"profile {where}: {res.gpus} GPUs per node need one task each (tasks = {res.gpus} or 0)")
    res.time_min, res.mem_gb  # noqa: B018 - validate now, not at submission
    return res


def resources_for(profile_name: str, profile: dict, model: str, dataset: str) -> Resources:
    """The profile's defaults, then every ``[NAME.resources]`` pattern matching "model/dataset", in file order."""
    res = _resources_from(profile, Resources(), profile_name)
    key = f"{model}/{dataset}"
    for pattern, entries in (profile.get("resources") or {}).items():
        if fnmatch.fnmatchcase(key, pattern):
            res = _resources_from(entries, res, f"{profile_name}.resources.\"{pattern}\"")
    return res


# -- the scheduler ---------------------------------------------------------------------------------------------
def _slurm_cmd(args: list[str], timeout: float = 30) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SchedulerError(f"SLURM is not reachable: '{args[0]}' is not installed here "
                             "(start a cluster with slurm/cluster.sh, or use --executor local)") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"SLURM is not reachable: '{' '.join(args)}' timed out after {timeout:.0f} s") from None
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip().splitlines()
        raise SchedulerError(f"SLURM is not reachable: '{' '.join(args[:2])}' failed: {msg[-1] if msg else out.returncode}")
    return out.stdout


def partitions() -> list[str]:
    """Partition names (raises SchedulerError when the controller does not answer)."""
    return sorted({p.strip().rstrip("*") for p in _slurm_cmd(["sinfo", "-h", "-o", "%P"]).split() if p.strip()})


def check_partitions(resources: list[Resources]) -> None:
    known = partitions()
    for res in resources:
        if res.partition is not None and res.partition not in known:
            raise SchedulerError(f"unknown SLURM partition '{res.partition}'; this cluster has: {', '.join(known)}"
                                 " (fix the profile in slurm/profiles.toml or pick another with --profile)")


@dataclass(frozen=True)
class JobState:
    state: str  # SLURM state name: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    reason: str = ""


def query_jobs(job_ids: list[str]) -> dict[str, JobState]:
    """State of each job id ("123" or "123_4") from squeue (queued, running and recently ended jobs) and, when
    accounting storage exists, sacct for the ones squeue no longer knows. Raises SchedulerError if squeue fails."""
    if not job_ids:
        return {}
    states: dict[str, JobState] = {}
    out = _slurm_cmd(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%r"])
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = JobState(parts[1], "" if parts[2] in ("None", "(null)") else parts[2])
    rest = [j for j in job_ids if j not in states]
    if rest:
        try:
            out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,Reason", "-j", ",".join(rest)],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                for line in out.stdout.splitlines():
                    parts = line.strip().split("|")
                    if len(parts) >= 2 and parts[0] in rest:
                        states[parts[0]] = JobState(parts[1].split()[0], parts[2] if len(parts) > 2 else "")
        except (OSError, subprocess.SubprocessError):
            pass  # no accounting storage: those jobs are simply no longer known
    return states


QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                 "STOPPED", "SIGNALING"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT"}


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
    state: str  # done / running / queued / failed / corrupt / missing / unknown
    reason: str = ""
    job_id: str | None = None


def grid_status(runs: list[RunConfig], results: Path, *, query: Callable[[list[str]], dict] = query_jobs,
                expand_parents: bool = True) -> list[RunStatus]:
    """Per run (and parent): done / running / queued / failed (with reason) / corrupt / missing, from the result
    files, the local locks and the scheduler (jobs recorded in <results>/jobs)."""
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
        rid = run_id(cfg)
        try:
            result = store.read(rid)
        except CorruptFile as e:
            result, corrupt = None, str(e)
        else:
            corrupt = None
        rec = records[rid]
        job_id = rec["job_id"] if rec else None
        job = jobs.get(job_id) if job_id else None
        if result is not None and result["status"] == "done" and rid in needed and not (
                job is not None and job.state in QUEUED_STATES | RUNNING_STATES):
            st = RunStatus(cfg, rid, "missing", "done, but its model file is missing and a child needs it: "
                           "will train again", job_id)
        elif result is not None and result["status"] == "done":
            st = RunStatus(cfg, rid, "done", job_id=job_id)
        elif job is not None and job.state in QUEUED_STATES:
            st = RunStatus(cfg, rid, "queued", job.reason, job_id)
        elif job is not None and job.state in RUNNING_STATES:
            st = RunStatus(cfg, rid, "running", f"slurm job {job_id}", job_id)
        elif (store.root / "locks" / f"{rid}.lock").exists() and store.is_locked(rid):
            st = RunStatus(cfg, rid, "running", "locked by a process on this machine", job_id)
        elif corrupt is not None:
            st = RunStatus(cfg, rid, "corrupt", corrupt, job_id)
        elif result is not None:  # a failed result: its own reason says why
            st = RunStatus(cfg, rid, result["status"], str(result.get("reason") or ""), job_id)
        elif rec is not None and scheduler_error is not None:
            st = RunStatus(cfg, rid, "unknown", f"slurm job {job_id}: {scheduler_error}", job_id)
        elif rec is not None:
            parent = by_id.get(run_id(cfg.parent)) if cfg.parent is not None else None
            if parent is not None and parent.state == "failed":
                why = f"parent {parent.run_id} ({cfg.parent.method}) failed; slurm job {job_id} was cancelled"
            elif job is not None:
                why = f"slurm job {job_id} ended {job.state}" + (f" ({job.reason})" if job.reason else "")
            else:
                why = f"slurm job {job_id} left the queue without a result (log: {rec.get('stderr', '?')})"
            st = RunStatus(cfg, rid, "failed", why, job_id)
        else:
            ckpt = store.ckpt_dir(rid) / "last.pt"
            st = RunStatus(cfg, rid, "missing", "has a checkpoint: will resume" if ckpt.exists() else "", job_id)
        out.append(st)
        by_id[rid] = st
    return out


# -- the job ---------------------------------------------------------------------------------------------------------
class RunJob(submitit.helpers.Checkpointable):
    """What a SLURM job runs: one run, given as ``to_dict(cfg)``, with the runtime settings as a plain dict."""

    def __init__(self, runtime: dict[str, Any]):
        self.runtime = runtime

    def __call__(self, cfg_dict: dict) -> dict:

        cfg = from_dict(cfg_dict)
        rt = Runtime(**{k: (Path(v) if k in ("results", "data_root", "cache_dir") and v is not None else v)
                        for k, v in self.runtime.items()})
        rid = run_id(cfg)
        if rid != cfg_dict.get("_run_id", rid):
            raise RuntimeError(f"config rebuilt in the job hashes to {rid}, not {cfg_dict['_run_id']}: "
                               "the snapshot's bench.core.config differs from the submitter's")

        def log(msg: str) -> None:
            print(msg, flush=True)

        log(f"[{rid}] slurm job {os.environ.get('SLURM_JOB_ID')} (array {os.environ.get('SLURM_ARRAY_JOB_ID')}_"
            f"{os.environ.get('SLURM_ARRAY_TASK_ID')}, restart {os.environ.get('SLURM_RESTART_COUNT', 0)}) "
            f"on {os.environ.get('SLURMD_NODENAME')}, code {os.getcwd()}")
        try:
            # submitted although done only when a child needs its missing model file (grid_status)
            result = execute_recording_crash(cfg, rt, log=log, need_model=True)
        except ConfigError as e:  # bad input found in the job: recorded too, for `bench status`
            record_crash(cfg, rt, e, log)
            raise
        # a run that is not done fails the job, so that `afterok` children are cancelled instead of starting
        # without their parent
        if result.get("status") != "done":
            raise RuntimeError(f"run {rid} ({cfg.method}) {result.get('status')}: {result.get('reason')}")
        return {"run_id": rid, "status": "done", "metrics": result.get("metrics", {})}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Timeout or preemption: requeue the same run; execute() resumes from its last epoch checkpoint.
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# -- planning the submission ---------------------------------------------------------------------------------------
@dataclass
class ArrayJob:
    index: int
    runs: list[RunConfig]
    resources: Resources
    after: list[str]  # dependencies: queued job ids, or "@<array index>:<task>" for arrays of this submission
    job_ids: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        cells = sorted({f"{c.model}/{c.dataset}" for c in self.runs})
        return ", ".join(cells)


@dataclass
class SubmissionPlan:
    arrays: list[ArrayJob]
    skipped: list[RunStatus]  # done / queued / running: left alone

    def describe(self) -> str:
        lines = []
        for arr in self.arrays:
            deps = ", ".join(_show_dep(d) for d in arr.after) or "none"
            lines.append(f"array {arr.index}: {len(arr.runs)} job(s) on {arr.label} [{arr.resources.describe()}]"
                         f"  afterok: {deps}")
            for t, cfg in enumerate(arr.runs):
                jid = f"  job {arr.job_ids[t]}" if arr.job_ids else ""
                lines.append(f"  [{t}] {run_id(cfg)}  {cfg.method:10s} {cfg.model}/{cfg.dataset} seed {cfg.seed} "
                             f"epochs {cfg.train.epochs}" + (f"  parent {run_id(cfg.parent)}" if cfg.parent else "")
                             + jid)
        n = sum(len(a.runs) for a in self.arrays)
        skipped = {}
        for s in self.skipped:
            skipped[s.state] = skipped.get(s.state, 0) + 1
        lines.append(f"{n} job(s) in {len(self.arrays)} array(s)"
                     + (("; not submitted: " + ", ".join(f"{v} {k}" for k, v in sorted(skipped.items())))
                        if skipped else ""))
        return "\n".join(lines)


def _show_dep(dep: str) -> str:
    if dep.startswith("@"):
        a, t = dep[1:].split(":")
        return f"array {a} task [{t}]"
    return f"job {dep}"


def plan_submission(runs: list[RunConfig], results: Path, profile_name: str, profile: dict,
                    statuses: list[RunStatus] | None = None) -> SubmissionPlan:
    """Which runs to submit, grouped into arrays with their dependencies (pure: submits nothing)."""
    statuses = statuses if statuses is not None else grid_status(runs, results)
    state = {s.run_id: s for s in statuses}
    # "unknown" (a recorded job the scheduler could not be asked about) is never resubmitted blindly
    todo = [s.cfg for s in statuses if s.state in ("missing", "failed", "corrupt")]
    skipped = [s for s in statuses if s.run_id not in {run_id(c) for c in todo}]
    todo_ids = {run_id(c) for c in todo}

    # where each todo run will be: (array, task); arrays keyed by (resources, dependency)
    where: dict[str, tuple[int, int]] = {}
    arrays: list[ArrayJob] = []
    keyed: dict[tuple, ArrayJob] = {}
    for cfg in todo:  # expand() order: parents first
        res = resources_for(profile_name, profile, cfg.model, cfg.dataset)
        dep: str | None = None
        if cfg.parent is not None:
            pid = run_id(cfg.parent)
            if pid in todo_ids:
                a, t = where[pid]
                dep = f"@{a}:{t}"
            elif state.get(pid) is not None and state[pid].state in ("queued", "running") and state[pid].job_id:
                dep = state[pid].job_id
        key = (res, dep)
        if key not in keyed:
            keyed[key] = ArrayJob(index=len(arrays), runs=[], resources=res, after=[dep] if dep else [])
            arrays.append(keyed[key])
        arr = keyed[key]
        where[run_id(cfg)] = (arr.index, len(arr.runs))
        arr.runs.append(cfg)
    return SubmissionPlan(arrays, skipped)


# -- submitting ------------------------------------------------------------------------------------------------------
def snapshot_code(results: Path) -> Path:
    """Copy the code a job runs (bench/, methods/) into <results>/slurm/snapshots/<hash>/ (reused if identical)."""
    files = sorted(p for pkg in SNAPSHOT_PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    dest = Path(results).resolve() / "slurm" / "snapshots" / h.hexdigest()[:12]
    if not dest.exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for p in files:
            target = tmp / p.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        try:
            tmp.rename(dest)
        except OSError:  # another submitter made the same snapshot at the same time
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def job_runtime(rt: Runtime, res: Resources) -> dict[str, Any]:
    """The runtime a job gets: absolute paths (the job's working directory is the snapshot), the device from
    the profile unless --device named one, threads from SLURM_CPUS_PER_TASK unless --threads was given, and
    the runtime options of the command line (compile, evaluation layout and folding, determinism policy)."""
    data_root = (rt.data_root or default_data_root()).expanduser().resolve()
    cache = rt.cache_dir or (Path(os.environ["BENCH_CACHE_DIR"]) if os.environ.get("BENCH_CACHE_DIR") else None)
    device = rt.device if rt.device != "auto" else ("cuda" if res.gpus > 0 else "cpu")
    return {"results": str(Path(rt.results).resolve()), "data_root": str(data_root),
            "cache_dir": str(cache.expanduser().resolve()) if cache else None, "device": device,
            "progress": False, "threads": rt.threads, "compile": rt.compile, "eval_layout": rt.eval_layout,
            "eval_fold_bn": rt.eval_fold_bn, "determinism": rt.determinism}


def submit(plan: SubmissionPlan, rt: Runtime, profile_name: str, *, log: Callable[[str], None] = print) -> None:
    """Submit the plan's arrays in order (parents first), recording each run's job id."""
    if not plan.arrays:
        return
    check_partitions([a.resources for a in plan.arrays])
    results = Path(rt.results).resolve()
    snap = snapshot_code(results)
    log_folder = results / "slurm" / "logs" / "%j"
    for arr in plan.arrays:
        res = arr.resources
        deps = []
        for d in arr.after:
            if d.startswith("@"):
                a, t = (int(x) for x in d[1:].split(":"))
                deps.append(plan.arrays[a].job_ids[t])
            else:
                deps.append(d)
        ex = submitit.SlurmExecutor(folder=log_folder, max_num_timeout=20)
        params: dict[str, Any] = dict(
            job_name=f"bench-{arr.runs[0].method}" if len({c.method for c in arr.runs}) == 1 else "bench",
            time=res.time_min, cpus_per_task=res.cpus, mem=f"{max(1, round(res.mem_gb * 1024))}MB",
            ntasks_per_node=res.tasks_per_node, nodes=res.nodes, array_parallelism=res.array_parallelism,
            signal_delay_s=120,
            additional_parameters={"chdir": str(snap), "kill-on-invalid-dep": "yes", "requeue": True})
        if res.partition:
            params["partition"] = res.partition
        if res.gpus:
            params["gpus_per_node"] = res.gpus
        if res.world_size > 1:  # one failed rank ends the job instead of leaving the others in a collective
            params["srun_args"] = ["--kill-on-bad-exit=1"]
        if res.account:
            params["account"] = res.account
        if res.qos:
            params["qos"] = res.qos
        if deps:
            params["dependency"] = "afterok:" + ":".join(deps)
        ex.update_parameters(**params)
        job_rt = job_runtime(rt, res)
        payloads = [{**to_dict(c), "_run_id": run_id(c)} for c in arr.runs]
        try:
            jobs = ex.map_array(RunJob(job_rt), payloads)
        except Exception as e:  # noqa: BLE001 - sbatch's own message is the useful part
            msg = str(e).strip().splitlines()
            raise SchedulerError(f"sbatch refused array {arr.index} ({arr.label}): "
                                 f"{msg[-1] if msg else type(e).__name__}") from None
        arr.job_ids = [j.job_id for j in jobs]
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for cfg, job in zip(arr.runs, jobs):
            write_job(results, run_id(cfg), {
                "run_id": run_id(cfg), "job_id": job.job_id, "submitted": now, "profile": profile_name,
                "resources": res.__dict__, "dependency": params.get("dependency"), "snapshot": str(snap),
                "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "method": cfg.method})
        log(f"submitted array {arr.index} as job {jobs[0].job_id.split('_')[0]}: {len(jobs)} run(s) on {arr.label}"
            + (f", afterok {','.join(deps)}" if deps else ""))


def preflight(runs: list[RunConfig], procs: int = 1) -> None:
    """Checks that need no data and no device (those are the job's): names and values."""
    for cfg in runs:
        validate_run(cfg, procs=procs)
        if cfg.model not in MODELS:
            raise ModelError(f"unknown model '{cfg.model}'; known: {', '.join(MODELS)}")


def run_slurm(runs: list[RunConfig], rt: Runtime, profile: str | None, *, dry_run: bool = False,
              log: Callable[[str], None] = print) -> SubmissionPlan:
    """`bench run --executor slurm`: submit what is missing or failed; with dry_run, only print it."""
    name, prof = get_profile(profile)
    ordered = expand(runs)
    preflight(ordered, rt.procs)
    if dry_run:
        try:
            statuses = grid_status(runs, rt.results)
        except SchedulerError:
            statuses = None
        plan = plan_submission(runs, rt.results, name, prof, statuses)
        log(f"dry run, profile '{name}': nothing is submitted")
        log(plan.describe())
        return plan
    partitions()  # fail with one line before anything is written if the controller does not answer

    for ds in sorted({c.dataset for c in ordered}):
        load_dataset(ds, rt.data_root, rt.cache_dir)  # a missing data set fails here, not in 30 queued jobs
    Store(rt.results).check_writable()
    plan = plan_submission(runs, rt.results, name, prof)
    submit(plan, rt, name, log=log)
    log(plan.describe())
    return plan


def wait(plan: SubmissionPlan, *, poll: float = 5.0, timeout: float | None = None) -> None:
    """Block until every submitted job has left the queue (used by tests and `bench run --wait`)."""
    import time

    ids = [j for a in plan.arrays for j in a.job_ids]
    t0 = time.monotonic()
    while ids:
        states = query_jobs(ids)
        ids = [j for j in ids if j in states and states[j].state in QUEUED_STATES | RUNNING_STATES]
        if not ids:
            return
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise TimeoutError(f"jobs still queued or running after {timeout:.0f} s: {', '.join(ids)}")
        time.sleep(poll)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `python -m bench run --executor slurm`")

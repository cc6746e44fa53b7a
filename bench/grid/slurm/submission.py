"""Submitting a grid: the plan (job arrays and their ``afterok`` dependencies), the submission through submitit
of the code snapshot (``snapshot``), the preflight and ``bench run --executor slurm`` itself, and waiting for the
jobs."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit

from bench.core.config import RunConfig, run_id, to_dict
from bench.core.runtime import Runtime
from bench.core.store import CorruptFile, Store
from bench.data import default_data_root, load_dataset
from bench.grid.runner import stale_note
from bench.grid.runs import expand
from bench.grid.slurm.job import RunJob
from bench.grid.slurm.profiles import (PROFILES_FILE, Resources, get_profile, profiles_file, resources_for,
                                       with_overrides)
from bench.grid.slurm.scheduler import (QUEUED_STATES, RUNNING_STATES, SchedulerError, check_partitions, partitions,
                                        query_jobs)
from bench.grid.slurm.snapshot import plugin_modules, plugin_sources, snapshot_code
from bench.grid.slurm.status import RunStatus, grid_status, write_job
from bench.train.threat_evals import lacks_threats
from bench.models.architectures import MODELS, ModelError
from bench.train.rerun import Rerun, archive_if_chosen
from bench.train.validation import validate_run


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
    todo = [s.cfg for s in statuses if s.state in ("missing", "failed", "corrupt", "measure")]
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
def job_runtime(rt: Runtime, res: Resources) -> dict[str, Any]:
    """The runtime a job gets: absolute paths (the job's working directory is the snapshot), the device from
    the profile unless --device named one, threads from SLURM_CPUS_PER_TASK unless --threads was given, and
    the runtime options of the command line (compile, evaluation layout and folding, the indicators of attack
    failure and their subset, determinism policy, the threat models beyond each run's own evaluation)."""
    data_root = (rt.data_root or default_data_root()).expanduser().resolve()
    cache = rt.cache_dir or (Path(os.environ["BENCH_CACHE_DIR"]) if os.environ.get("BENCH_CACHE_DIR") else None)
    device = rt.device if rt.device != "auto" else ("cuda" if res.gpus > 0 else "cpu")
    return {"results": str(Path(rt.results).resolve()), "data_root": str(data_root),
            "cache_dir": str(cache.expanduser().resolve()) if cache else None, "device": device,
            "progress": False, "threads": rt.threads, "compile": rt.compile, "eval_layout": rt.eval_layout,
            "eval_fold_bn": rt.eval_fold_bn, "eval_checks": rt.eval_checks, "eval_checks_n": rt.eval_checks_n,
            "determinism": rt.determinism, "threats": list(rt.threats), "eps_l2": rt.eps_l2,
            "corruptions": rt.corruptions}


def submit(plan: SubmissionPlan, rt: Runtime, profile_name: str, *, log: Callable[[str], None] = print) -> None:
    """Submit the plan's arrays in order (parents first), recording each run's job id."""
    if not plan.arrays:
        return
    check_partitions([a.resources for a in plan.arrays])
    results = Path(rt.results).resolve()
    modules = plugin_modules()
    snap = snapshot_code(results, plugin_sources(modules))
    log_folder = results / "slurm" / "logs" / "%j"
    # The snapshot first on the job's path, whatever its environment's PYTHONPATH holds (a relative entry would
    # resolve inside the snapshot, an absolute one to the live source), and even under PYTHONSAFEPATH, where
    # `python -m` does not put the working directory on the path.
    setup = [f"export PYTHONPATH={shlex.quote(str(snap))}${{PYTHONPATH:+:$PYTHONPATH}}"]
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
            signal_delay_s=120, setup=setup,
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
            jobs = ex.map_array(RunJob(job_rt, plugin_modules=modules, snapshot=str(snap)), payloads)
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
              log: Callable[[str], None] = print, rerun: str | None = None,
              overrides: dict[str, str | None] | None = None) -> SubmissionPlan:
    """`bench run --executor slurm`: submit what is missing or failed; with dry_run, only print it. ``rerun``
    (`bench run --rerun`): the results it chooses are archived here, under each run's lock, and their runs submitted
    as missing ones (with dry_run: shown as submitted, nothing archived). ``overrides``: partition, account or qos
    for every job, over the profile's (--partition, --account, --qos)."""
    name, prof = get_profile(profile)
    prof = with_overrides(prof, overrides or {})
    ordered = expand(runs)
    preflight(ordered, rt.procs)
    _say_stale(ordered, Store(rt.results), Rerun(rerun), log)
    frozen = plugin_sources()  # a plugin that cannot be frozen is refused before anything is written
    if dry_run:
        try:
            statuses = grid_status(runs, rt.results)
        except SchedulerError:
            statuses = None
        if statuses is not None and rerun is not None:
            chosen = _chosen(ordered, Store(rt.results), Rerun(rerun))
            statuses = [dataclasses.replace(s, state="missing") if s.run_id in chosen else s for s in statuses]
        plan = plan_submission(runs, rt.results, name, prof, statuses and _to_measure(statuses, rt))
        where = "" if profiles_file() == PROFILES_FILE else f" (from {profiles_file()})"
        log(f"dry run, profile '{name}'{where}: nothing is submitted")
        log(plan.describe())
        for top, src in frozen.items():
            log(f"plugin {top} frozen into the code snapshot from {src}")
        return plan
    partitions()  # fail with one line before anything is written if the controller does not answer

    for ds in sorted({c.dataset for c in ordered}):
        load_dataset(ds, rt.data_root, rt.cache_dir)  # a missing data set fails here, not in 30 queued jobs
    store = Store(rt.results)
    store.check_writable()
    if rerun is not None:
        _archive_chosen(ordered, store, Rerun(rerun), log)
    plan = plan_submission(runs, rt.results, name, prof, _to_measure(grid_status(runs, rt.results), rt))
    submit(plan, rt, name, log=log)
    log(plan.describe())
    return plan


def _to_measure(statuses: list[RunStatus], rt: Runtime) -> list[RunStatus]:
    """Done runs that lack a threat model of ``bench run --threat`` and have their saved model: submitted as
    "measure" jobs, which measure it on that model (bench.train.threat_evals) without training."""
    store = Store(rt.results)
    return [dataclasses.replace(s, state="measure", reason="done; measuring its other threat models on its saved "
                                "model") if s.state in ("done", "stale") and lacks_threats(s.cfg, rt, store) else s
            for s in statuses]


def _stored(store: Store, rid: str) -> dict | None:
    try:
        return store.read(rid)
    except CorruptFile:
        return None


def _say_stale(ordered: list[RunConfig], store: Store, rerun: Rerun, log: Callable[[str], None]) -> None:
    """One line per stale run that stays as it is (those ``rerun`` chooses get theirs when archived)."""
    for cfg in ordered:
        stored = _stored(store, run_id(cfg))
        note = None if rerun.wants(stored) else stale_note(cfg, stored, Rerun(), ordered)
        if note is not None:
            log(f"{run_id(cfg)} {cfg.method} on {cfg.model}/{cfg.dataset} seed {cfg.seed}: {note}")


def _chosen(ordered: list[RunConfig], store: Store, rerun: Rerun) -> set[str]:
    return {run_id(c) for c in ordered if rerun.wants(_stored(store, run_id(c)))}


def _archive_chosen(ordered: list[RunConfig], store: Store, rerun: Rerun, log: Callable[[str], None]) -> None:
    """Archive the results ``rerun`` chooses, each under its run's lock (a run another process holds is left
    alone), so that the submission sees their runs as missing."""
    for cfg in ordered:
        rid = run_id(cfg)
        with store.lock(rid, blocking=False) as got:
            archived = archive_if_chosen(cfg, store, rerun, _stored(store, rid)) if got else None
        if archived is not None:
            log(f"{rid} {cfg.method}: --rerun {rerun.what}: its result is archived as {archived}; submitting it")


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

"""The SLURM executor: a grid as job arrays linked by ``afterok`` dependencies, submitted through submitit.

What is submitted
-----------------
``expand`` gives every run of the grid plus its parents. Runs already done (stale ones too, named in one line
each), queued or running are left alone; the rest (missing, failed, corrupt, and the results ``--rerun`` chose,
archived first under each run's lock) are grouped into job arrays:

* runs whose parent needs no new job (no parent, parent done, or parent already queued) go into one array per
  resource set (model x data set in the profile), with ``afterok`` on the parent's queued job if there is one;
* runs whose parent is submitted now go into one array per (parent, resource set), depending on exactly that
  parent's array task (``afterok:<array>_<task>``), so a child starts as soon as its own parent is done and a
  failed parent cancels its children (``--kill-on-invalid-dep=yes``) instead of leaving them pending forever.

Each job is a :class:`RunJob` (a ``submitit.helpers.Checkpointable``) called with the run's config as a plain
dict: it rebuilds the config inside the job and calls ``bench.train.loop.execute`` (through
``bench.train.attempt``, which records a crash as the run's failed result), which takes the run's lock,
resumes from the last epoch checkpoint and writes the result atomically, once. On timeout or preemption
submitit calls ``checkpoint``, which resubmits the same callable with the same config; the requeued job resumes
from the checkpoint. A job whose process is killed outright and is requeued by SLURM does the same.

Code snapshot: the ``bench`` and ``methods`` packages, and every loaded plugin's top-level package or module, are
copied, at submission, into ``<results>/slurm/snapshots/<content hash>/`` and the jobs run with that folder as
their working directory (``--chdir``) and first on ``PYTHONPATH``, so editing the repository or a plugin while jobs
wait in the queue does not change what they run (``snapshot``). Unlike ``submitit.helpers.RsyncSnapshot``
(``git ls-files``), the copy includes files not yet committed.

Bookkeeping: ``<results>/jobs/<run_id>.json`` (written atomically) records the SLURM job id of each run's
latest submission; ``bench status`` joins it with ``squeue`` (and ``sacct`` when accounting exists).

One concern per module: ``profiles`` (the resources a job asks for), ``scheduler`` (asking SLURM), ``status``
(job records and each run's state), ``snapshot`` (the code a job runs), ``job`` (what a job runs),
``submission`` (planning, submitting, waiting). The job and the submission import submitit; they and the snapshot
are loaded on first use of one of their names, so that ``bench status`` of a local grid does not need submitit.
"""
from __future__ import annotations

import importlib
from typing import Any

from bench.grid.slurm.profiles import (DEFAULT_PROFILE, OVERRIDABLE, PROFILES_FILE, REPO, ProfileError, Resources,
                                       get_profile, load_profiles, parse_mem_gb, parse_time, profiles_file,
                                       resources_for, user_profiles_file, with_overrides)
from bench.grid.slurm.scheduler import (QUEUED_STATES, RUNNING_STATES, JobState, SchedulerError, check_partitions,
                                        partitions, query_jobs)
from bench.grid.slurm.status import RunStatus, grid_status, jobs_dir, read_job, write_job

# names of the modules that import submitit, by the module that holds them
_ON_FIRST_USE = {"RunJob": "job", "ArrayJob": "submission", "SubmissionPlan": "submission",
                 "SNAPSHOT_PACKAGES": "snapshot", "plan_submission": "submission", "snapshot_code": "snapshot",
                 "SnapshotError": "snapshot", "plugin_modules": "snapshot", "plugin_sources": "snapshot",
                 "job_runtime": "submission", "submit": "submission", "preflight": "submission",
                 "run_slurm": "submission", "wait": "submission"}


def __getattr__(name: str) -> Any:
    """``bench.grid.slurm.run_slurm`` and the other names of the job and the submission, imported when asked for."""
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["DEFAULT_PROFILE", "OVERRIDABLE", "PROFILES_FILE", "QUEUED_STATES", "REPO", "RUNNING_STATES", "JobState",
           "ProfileError", "Resources", "RunStatus", "SchedulerError", "check_partitions", "get_profile", "grid_status",
           "jobs_dir", "load_profiles", "parse_mem_gb", "parse_time", "partitions", "profiles_file", "query_jobs",
           "read_job", "resources_for", "user_profiles_file", "with_overrides", "write_job", *_ON_FIRST_USE]

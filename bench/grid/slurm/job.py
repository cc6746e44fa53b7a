"""What a SLURM job runs: one run, rebuilt from its config inside the job (imports submitit)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import submitit

from bench.core.config import ConfigError, from_dict, run_id
from bench.core.runtime import Runtime
from bench.train.attempt import execute_recording_crash, record_crash
from methods import plugins


class RunJob(submitit.helpers.Checkpointable):
    """What a SLURM job runs: one run, given as ``to_dict(cfg)``, with the runtime settings as a plain dict."""

    def __init__(self, runtime: dict[str, Any], plugin_modules: tuple[str, ...] = (), snapshot: str | None = None):
        self.runtime = runtime
        self.plugin_modules = tuple(plugin_modules)  # the plugin modules the submitter had loaded
        self.snapshot = snapshot  # the code snapshot the job runs (bench.grid.slurm.snapshot)

    def __call__(self, cfg_dict: dict) -> dict:
        self._load_plugins()
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
            # submitted although done only when a child needs its missing model file (grid_status), or to measure
            # the threat models of `bench run --threat` on its saved model (bench.train.threat_evals)
            result = execute_recording_crash(cfg, rt, log=log, need_model=True)
        except ConfigError as e:  # bad input found in the job: recorded too, for `bench status`
            record_crash(cfg, rt, e, log)
            raise
        # a run that is not done fails the job, so that `afterok` children are cancelled instead of starting
        # without their parent
        if result.get("status") != "done":
            raise RuntimeError(f"run {rid} ({cfg.method}) {result.get('status')}: {result.get('reason')}")
        return {"run_id": rid, "status": "done", "metrics": result.get("metrics", {})}

    def _load_plugins(self) -> None:
        """Import the submitter's plugin modules (those from the environment or an entry point are imported
        already), and fail the job if one came from outside the snapshot: it would not be the submitted code."""
        plugins.load_modules(self.plugin_modules)
        for module in self.plugin_modules:
            top = sys.modules[module.split(".")[0]]
            where = Path(getattr(top, "__file__", None) or "?").resolve()
            if self.snapshot is not None and not where.is_relative_to(Path(self.snapshot).resolve()):
                raise RuntimeError(f"plugin {module} was imported from {where}, not from the code snapshot "
                                   f"{self.snapshot}: a module of the same name comes first on the job's path")
            print(f"plugin {module} from {where}", flush=True)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Timeout or preemption: requeue the same run; execute() resumes from its last epoch checkpoint.
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

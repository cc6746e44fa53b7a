"""Asking SLURM: its partitions and the state of jobs (squeue, and sacct when accounting exists)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

from bench.core.config import ConfigError
from bench.grid.slurm.profiles import Resources


class SchedulerError(ConfigError):
    """SLURM cannot be reached, or refuses what we ask (unknown partition, a failed sbatch)."""



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

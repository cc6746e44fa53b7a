"""Against the real single-node cluster of slurm/cluster.sh: a parent and two children through
`--executor slurm`, and a job requeued mid-run that finishes from its checkpoint with its result written once.

Skipped, saying why, when `sinfo` cannot reach a controller (start one with `bash slurm/cluster.sh start`)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from bench.core.config import run_id
from conftest import tiny_run, write_tiny_folder

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _sinfo_problem() -> str | None:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "sinfo is not installed (bash slurm/cluster.sh start installs and starts a cluster)"
    except subprocess.TimeoutExpired:
        return "sinfo timed out: no SLURM controller answers"
    if out.returncode != 0:
        return f"no SLURM controller answers sinfo: {out.stderr.strip()[:200]} (bash slurm/cluster.sh start)"
    if not any(s.strip().rstrip("*") in ("idle", "mix", "alloc") for s in out.stdout.split()):
        return f"the SLURM node is not usable (state {out.stdout.strip()})"
    return None


_PROBLEM = _sinfo_problem()
pytestmark.append(pytest.mark.skipif(_PROBLEM is not None, reason=f"SLURM not reachable: {_PROBLEM}"))


@pytest.fixture
def folder(tmp_path) -> str:
    return f"folder:{write_tiny_folder(tmp_path / 'tiny').resolve()}"


def test_grid_of_a_parent_and_two_children(tmp_path, folder, monkeypatch, capsys):
    from bench.grid import grids
    from bench.grid import runs as runs_mod
    from bench.cli import main
    from bench.core.store import Store

    runs = [tiny_run("vaft", folder), tiny_run("afd", folder)]
    monkeypatch.setitem(grids.GRIDS, "tiny_slurm", lambda seeds=1: runs_mod.seeded(runs, seeds))
    results = tmp_path / "results"
    args = ["--grid", "tiny_slurm", "--results", str(results)]
    assert main(["run", *args, "--executor", "slurm", "--profile", "local", "--threads", "1", "--wait"]) == 0
    out = capsys.readouterr().out
    assert "2 job(s)" in out and "afterok" in out
    store = Store(results)
    full = runs_mod.expand(runs)
    assert [r.method for r in full] == ["standard", "vaft", "afd"]
    for cfg in full:
        result = store.read(run_id(cfg))
        assert result["status"] == "done", result.get("reason")
        assert len(result["epochs"]) == cfg.train.epochs
        record = json.loads((results / "jobs" / f"{run_id(cfg)}.json").read_text())
        assert "/slurm/snapshots/" in record["snapshot"]
        assert result["threads"] == 1
    # the children depended on the parent's job
    parent_job = json.loads((results / "jobs" / f"{run_id(full[0])}.json").read_text())["job_id"]
    child = json.loads((results / "jobs" / f"{run_id(full[1])}.json").read_text())
    assert child["dependency"] == f"afterok:{parent_job}"
    # status: all done; a second run submits nothing
    assert main(["status", *args]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "3 done"
    assert main(["run", *args, "--executor", "slurm", "--profile", "local"]) == 0
    assert "0 job(s) in 0 array(s); not submitted: 3 done" in capsys.readouterr().out


def _requeue_mid_run(tmp_path, cfg, profile: str, checkpoint_timeout: float, finish_timeout: float):
    """Submit ``cfg`` with ``profile``, wait for its first epoch checkpoint, `scontrol requeue` the job, wait for it
    to finish; return (result, the job's log, results folder). Asserts it was requeued mid-run and resumed from a
    checkpoint (not from scratch)."""
    from bench.core.runtime import Runtime
    from bench.grid.slurm import run_slurm, wait
    from bench.core.store import Store

    results = tmp_path / "results"
    plan = run_slurm([cfg], Runtime(results=results, threads=1), profile, log=lambda s: None)
    job = plan.arrays[0].job_ids[0]
    rid = run_id(cfg)
    store = Store(results)
    last = store.ckpt_dir(rid) / "last.pt"
    t0 = time.monotonic()
    while not last.exists():
        assert time.monotonic() - t0 < checkpoint_timeout, f"the job wrote no checkpoint in {checkpoint_timeout} s"
        assert store.read(rid) is None
        time.sleep(0.5)
    time.sleep(1.0)
    assert store.read(rid) is None, "the run finished before it could be requeued: raise its epochs"
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    wait(plan, poll=3, timeout=finish_timeout)
    result = store.read(rid)
    assert result["status"] == "done", result.get("reason")
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, cfg.train.epochs + 1))
    log = Path(json.loads((results / "jobs" / f"{rid}.json").read_text())["stdout"]).read_text()
    assert "resuming standard at epoch" in log, log[-2000:]
    assert int(log.split("resuming standard at epoch ")[1].split("/")[0]) > 1  # not from scratch
    return result, log, results, plan


def test_requeued_job_resumes_from_checkpoint(tmp_path, folder, monkeypatch):
    """`scontrol requeue` kills the running job and queues it again (SLURM holds it ~150 s, BeginTime): the run
    resumes from its last epoch checkpoint, and its result is written once, after the last epoch."""
    cfg = tiny_run("standard", folder, epochs=400)
    # A tiny epoch takes ~10 ms on a quiet machine: without a pause the job could finish before the requeue lands.
    # The job inherits this (sbatch exports the environment): every checkpoint write waits 50 ms, so 400 epochs
    # take at least 20 s.
    monkeypatch.setenv("BENCH_TEST_SLOW_WRITES", "0.05")
    _, log, results, _ = _requeue_mid_run(tmp_path, cfg, "local", checkpoint_timeout=120, finish_timeout=400)
    assert log.count(f"[{run_id(cfg)}] standard clean") == 1  # evaluated, hence written, once
    assert not list((results / "runs").glob(".*.tmp"))


def test_two_task_profile_runs_one_run_on_two_ranks_and_resumes_after_a_requeue(tmp_path, folder, monkeypatch):
    """The `local2` profile (tasks = 2): one job of 2 tasks trains one run data-parallel (gloo), the ranks found
    from SLURM's environment; `scontrol requeue` mid-run kills both and the requeued job resumes the run."""
    cfg = tiny_run("standard", folder, epochs=200)
    monkeypatch.setenv("BENCH_TEST_SLOW_WRITES", "0.1")  # >= 20 s of epochs: time for the requeue to land
    result, _, _, plan = _requeue_mid_run(tmp_path, cfg, "local2", checkpoint_timeout=180, finish_timeout=500)
    assert plan.arrays[0].resources.world_size == 2
    assert result["processes"]["count"] == 2

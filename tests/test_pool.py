"""The node-local scheduler (bench/grid/pool.py), on the CPU with two workers: every run trained exactly once,
results identical to a sequential run, a run held by another runner skipped rather than waited on, and a killed
worker's run resumed by the other."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.core.config import ConfigError, run_id
from bench.core.runtime import Runtime
from bench.core.store import Store
from bench.grid.pool import devices_from, run_pool, work
from conftest import REPO, tiny_run

GRID = """
methods = ["vaft", "afd", "afkd"]
models = ["small_cnn"]
datasets = ["digits"]
seeds = 1
epochs = {epochs}
[train]
n_train = {n_train}
batch_size = 32
[parent]
epochs = {epochs}
[eval]
n_clean = 60
n_pgd = 60
n_aa = 0
pgd_steps = 3
batch_size = 60
"""


def _strip(res: dict) -> tuple:
    return ([{k: v for k, v in e.items() if not k.endswith("seconds")} for e in res["epochs"]],
            res["metrics"]["per_example"])


def test_devices_and_bad_lists_are_one_line():
    assert devices_from("0,2", None, 4) == ["cuda:0", "cuda:2"]
    assert devices_from(None, 3, 0) == ["cpu"] * 3
    for gpus, workers, avail, msg in (("0,0", None, 4, "distinct"), ("x", None, 4, "GPU numbers"),
                                      ("4", None, 4, "has 4 CUDA device"), ("0", 2, 4, "not both"),
                                      (None, 0, 0, ">= 1")):
        with pytest.raises(ConfigError, match=msg) as e:
            devices_from(gpus, workers, avail)
        assert "\n" not in str(e.value)


def test_a_held_run_is_skipped_for_the_next_runnable_one(tmp_path):
    """Run A is held by another runner: the worker trains B (also runnable) instead of waiting for A, and finishes
    once the holder releases A and it is done."""
    a, b = tiny_run("standard", "digits", epochs=1), tiny_run("standard", "digits", epochs=1, seed=1)
    rt = Runtime(results=tmp_path, device="cpu", progress=False, threads=1)
    store = Store(tmp_path)
    log = []
    with store.lock(run_id(a)):
        import threading

        t = threading.Thread(target=work, args=([a, b], rt, "0", "w"), kwargs={"log": log.append, "poll": 0.2})
        t.start()
        deadline = time.monotonic() + 120
        while store.status(run_id(b)) != "done" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.status(run_id(b)) == "done" and store.status(run_id(a)) == "missing"  # B first, A held
    t.join(timeout=300)  # A is free now: the worker trains it and stops
    assert not t.is_alive() and store.status(run_id(a)) == "done"


@pytest.mark.slow
def test_two_workers_train_each_run_once_with_the_sequential_results(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(epochs=2, n_train=256))
    from bench.grid.gridfile import load
    from bench.grid.runner import run_local

    runs = load(grid).runs
    seq = run_local(runs, Runtime(results=tmp_path / "seq", device="cpu", progress=False, threads=1),
                    log=lambda s: None)
    lines: list[str] = []
    pooled = run_pool(runs, Runtime(results=tmp_path / "pool", device="cpu", progress=False, threads=1),
                      ["cpu", "cpu"], log=lines.append)
    assert set(pooled) == set(seq) and len(seq) == 4
    for rid, res in pooled.items():
        assert res["status"] == "done" and res["wall_processes"] == 1, rid
        assert _strip(res) == _strip(seq[rid]), rid  # the same numbers as one process running them in order


_KILL = """
import sys
sys.path.insert(0, {repo!r})
from bench.cli import main

if __name__ == "__main__":  # the workers are spawned: they import this file again
    sys.exit(main(["run", "--grid", {grid!r}, "--results", {results!r}, "--workers", "2", "--threads", "1",
                   "--device", "cpu"]))
"""


def _workers(parent: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().split()
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[3]) == parent and b"multiprocessing" in cmd:
                out.append(int(d.name))
    return sorted(out)


@pytest.mark.slow
def test_a_killed_workers_run_is_resumed_by_the_other(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID.format(epochs=4, n_train=512))
    results = tmp_path / "results"
    script = tmp_path / "run.py"
    script.write_text(_KILL.format(repo=str(REPO), grid=str(grid), results=str(results)))
    log = tmp_path / "log.txt"
    proc = subprocess.Popen([sys.executable, str(script)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    # wait until a child run has its first checkpoint, then kill the worker that holds it
    deadline = time.monotonic() + 600
    victim = None
    while victim is None and time.monotonic() < deadline:
        ckpts = [p for p in (results / "ckpt").glob("*/last.pt")] if (results / "ckpt").exists() else []
        for ck in ckpts:
            rid = ck.parent.name
            res = json.loads((results / "runs" / f"{rid}.json").read_text()) if (results / "runs" / f"{rid}.json").exists() else None
            if res is None or res.get("status") != "done":
                victim = rid
                break
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    if victim is None:
        proc.kill()
        proc.wait()
        pytest.fail("no run reached its first checkpoint: " + log.read_text()[-3000:])
    holders = []
    for pid in _workers(proc.pid):
        fds = Path(f"/proc/{pid}/fd")
        try:
            if any(os.readlink(fds / f).endswith(f"{victim}.lock") for f in os.listdir(fds)):
                holders.append(pid)
        except OSError:
            continue
    assert len(holders) == 1, holders
    os.kill(holders[0], signal.SIGKILL)
    proc.wait(timeout=900)
    out = log.read_text()
    assert "ended with exit code -9" in out, out[-2000:]
    res = json.loads((results / "runs" / f"{victim}.json").read_text())
    assert res["status"] == "done" and res["wall_processes"] == 2, res.get("wall_processes")  # resumed, not redone
    store = Store(results)
    from bench.grid.gridfile import load

    for cfg in load(grid).runs:
        assert store.status(run_id(cfg)) == "done"

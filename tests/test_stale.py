"""Results that know their code: every result records the fingerprint of the code that computed it; a done run
whose code changed since is "stale" in `bench status`, `bench run` (one line, skipped unless `--rerun stale`,
which archives the old result and trains from scratch) and the tables' notes. A comment-only edit is not a change.

The command-line tests run a tiny grid file (a plugin method defined in the test's folder, and vAFT with its
natural parent) in fresh processes: the code's digests are read once per process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.core.config import run_id
from bench.core.runtime import Runtime
from bench.core.store import Store
from bench.grid.runner import run_local
from bench.train.rerun import Rerun
from bench.train.result import current_code, failed_result, stale_modules
from bench.train.tblog import run_dir
from conftest import REPO, tiny_run


def _rt(tmp_path, data):
    return Runtime(results=tmp_path / "results", data_root=data.parent, device="cpu", progress=False)


def _older(result: dict, module: str) -> dict:
    """``result`` as if ``module``'s code had been another when it was computed."""
    code = json.loads(json.dumps(result["code"]))
    code["modules"][module] = "0" * 12
    code["digest"] = "f" * 12
    return {**result, "code": code}


def test_done_and_failed_results_record_the_current_code(tmp_path, tiny_folder):
    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=1)
    res = run_local([cfg], _rt(tmp_path, tiny_folder), log=lambda s: None)[run_id(cfg)]
    assert res["status"] == "done" and res["code"] == current_code("standard")
    assert "methods.standard" in res["code"]["modules"] and stale_modules(res) == []
    assert failed_result(cfg, "why", torch.device("cpu"))["code"] == current_code("standard")
    assert stale_modules({k: v for k, v in res.items() if k != "code"}) is None  # predates fingerprints
    assert stale_modules(_older(res, "methods.standard")) == ["methods.standard"]


def test_status_and_report_name_a_stale_run(tmp_path, tiny_folder):
    from bench.grid.slurm import grid_status
    from bench.report.tables import load, report

    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=1)
    rt = _rt(tmp_path, tiny_folder)
    run_local([cfg], rt, log=lambda s: None)
    store, rid = Store(rt.results), run_id(cfg)
    fresh = store.read(rid)
    assert [s.state for s in grid_status([cfg], rt.results, query=lambda ids: {})] == ["done"]
    assert not load([cfg], rt.results).stale.any() and "other code" not in report([cfg], rt.results)
    store.write(rid, _older(fresh, "bench.eval.attacks"))
    [st] = grid_status([cfg], rt.results, query=lambda ids: {})
    assert (st.state, st.reason) == ("stale", "bench.eval.attacks changed")
    assert load([cfg], rt.results).stale.tolist() == [True]
    from bench.grid.slurm import get_profile, plan_submission  # SLURM leaves it alone and says so

    plan = plan_submission([cfg], rt.results, *get_profile(None), [st])
    assert not plan.arrays and plan.describe().endswith("not submitted: 1 stale")
    for fmt in ("markdown", "latex", "csv"):
        assert "1 of the 1 runs was computed by other code than the current one" in report([cfg], rt.results, fmt)
    store.write(rid, {k: v for k, v in fresh.items() if k != "code"})  # a result from before fingerprints
    assert grid_status([cfg], rt.results, query=lambda ids: {})[0].state == "done"
    assert load([cfg], rt.results).stale.tolist() == [False]


def test_slurm_says_stale_and_reruns_by_archiving_before_it_submits(tmp_path, tiny_folder, monkeypatch):
    from bench.grid.slurm import submission

    cfg = tiny_run("standard", f"folder:{tiny_folder}", epochs=1)
    rt = _rt(tmp_path, tiny_folder)
    run_local([cfg], rt, log=lambda s: None)
    store, rid = Store(rt.results), run_id(cfg)
    store.write(rid, _older(store.read(rid), "methods.standard"))
    lines: list[str] = []
    plan = submission.run_slurm([cfg], rt, None, dry_run=True, log=lines.append)
    assert not plan.arrays and "done, stale (methods.standard changed): skipped" in lines[0]
    lines.clear()
    plan = submission.run_slurm([cfg], rt, None, dry_run=True, log=lines.append, rerun="stale")
    assert [run_id(c) for a in plan.arrays for c in a.runs] == [rid] and store.read(rid)["status"] == "done"
    monkeypatch.setattr(submission, "partitions", lambda: None)  # no cluster here: what is submitted is the plan
    monkeypatch.setattr(submission, "submit", lambda plan, rt, name, log: None)
    lines.clear()
    plan = submission.run_slurm([cfg], rt, None, log=lines.append, rerun="stale")
    assert [run_id(c) for a in plan.arrays for c in a.runs] == [rid] and store.read(rid) is None
    assert any("--rerun stale: its result is archived as" in s for s in lines)
    assert len(list((rt.results / "runs" / "archive").glob(f"{rid}.*.json"))) == 1


def test_rerun_choices_pick_the_results_to_archive():
    code = current_code("standard")
    done = {"status": "done", "config": {"method": "standard"}, "code": code, "finished": "2026-01-01T00:00:00+00:00"}
    stale = _older(done, "bench.train.loop")
    failed = {**done, "status": "failed"}
    old = {k: v for k, v in stale.items() if k != "code"}
    before = "2026-06-01T00:00:00+00:00"
    pick = {what: [r is not None and Rerun(what, before).wants(r) for r in (done, stale, failed, old, None)]
            for what in (None, "stale", "failed", "all")}
    assert pick == {None: [False] * 5, "stale": [False, True, False, False, False],
                    "failed": [False, False, True, False, False], "all": [True, True, True, True, False]}
    assert not Rerun("all", "2025-01-01T00:00:00+00:00").wants(done)  # finished by this very command: kept


def test_archive_keeps_the_result_and_removes_model_and_checkpoints(tmp_path):
    store = Store(tmp_path)
    store.write("r1", {"run_id": "r1", "status": "done"})
    store.model_path("r1").parent.mkdir(parents=True)
    store.model_path("r1").write_bytes(b"m")
    (store.ckpt_dir("r1")).mkdir(parents=True)
    (store.ckpt_dir("r1") / "last.pt").write_bytes(b"c")
    path = store.archive("r1")
    assert path.parent == tmp_path / "runs" / "archive" and path.name.startswith("r1.")
    assert json.loads(path.read_text())["status"] == "done"
    assert store.read("r1") is None and not store.model_path("r1").exists() and not store.ckpt_dir("r1").exists()
    assert [p.name for p, _ in store.all_results()] == []  # the archive is not a result of the grid


def test_a_rerun_parent_names_its_children_and_trains_from_scratch(tmp_path, tiny_folder):
    child = tiny_run("vaft", f"folder:{tiny_folder}", epochs=1, parent_epochs=1)
    rt = _rt(tmp_path, tiny_folder)
    run_local([child], rt, log=lambda s: None)
    store, pid = Store(rt.results), run_id(child.parent)
    old = _older(store.read(pid), "methods.standard")
    store.write(pid, old)
    lines: list[str] = []
    run_local([child], rt, log=lines.append)
    stale_line = next(s for s in lines if s.startswith(f"[1/2] {pid}"))
    assert "done, stale (methods.standard changed): skipped" in stale_line and "--rerun stale" in stale_line
    assert store.read(pid) == old and not (rt.results / "runs" / "archive").exists()
    lines.clear()
    tblog_dir = run_dir(rt.results, "standard", pid)
    archived_at = time.time()
    run_local([child], rt, log=lines.append, rerun="stale")
    parent_line = next(s for s in lines if s.startswith(f"[1/2] {pid}"))
    assert "archived and trained again from scratch" in parent_line
    assert f"its children {run_id(child)} (vaft) depend on it" in parent_line
    assert not any("resuming" in s for s in lines)  # the old checkpoints were removed with the old result
    assert not any(p.stat().st_mtime < archived_at for p in tblog_dir.rglob("*") if p.is_file())
    new = store.read(pid)
    assert new["code"] == current_code("standard") and new["finished"] >= old["finished"]
    [archived] = (rt.results / "runs" / "archive").glob(f"{pid}.*.json")
    assert json.loads(archived.read_text()) == json.loads(json.dumps(old))
    assert store.read(run_id(child))["status"] == "done"  # the child stands: its own code did not change


# -- the command line, in fresh processes ----------------------------------------------------------------------
PLUGIN = '''from methods import get_method, register

Standard = get_method("standard")


@register
class MineStale(Standard):
    name = "mine_stale"
    summary = "natural training under another name"
    WEIGHT = 1.0  # a comment
'''


def _grid(tmp_path: Path, data: Path) -> Path:
    grid = tmp_path / "stale_grid.toml"
    grid.write_text(f'plugins = ["mine_stale"]\nmethods = ["mine_stale", "vaft"]\nmodels = ["small_cnn"]\n'
                    f'datasets = ["folder:{data}"]\nepochs = 1\n[parent]\nepochs = 1\n[train]\nbatch_size = 8\n'
                    '[eval]\nn_clean = 12\nn_pgd = 12\nn_aa = 0\npgd_steps = 3\nbatch_size = 12\nn_gap = 12\n')
    return grid


def _bench(tmp_path: Path, *argv: str, code: int = 0) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "plug"), str(REPO)]), BENCH_PLUGINS="",
               BENCH_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == code, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _results_of(results: Path, method: str) -> list[dict]:
    return [r for r in (json.loads(p.read_text()) for p in (results / "runs").glob("*.json"))
            if r["config"]["method"] == method]


@pytest.mark.slow
def test_an_edited_plugin_is_stale_in_status_run_and_report_until_rerun(tmp_path, tiny_folder):
    (tmp_path / "plug").mkdir()
    plugin = tmp_path / "plug" / "mine_stale.py"
    plugin.write_text(PLUGIN)
    grid, results = _grid(tmp_path, tiny_folder), tmp_path / "results"
    # --no-eval-checks: these tests read the runs' status lines; the indicators of attack failure, which a tiny
    # run's weak evaluation may trip (and add to those lines), are tests/test_indicators.py's business
    where = ["--grid", str(grid), "--results", str(results), "--device", "cpu", "--threads", "1", "--no-eval-checks"]
    _bench(tmp_path, "run", *where)
    [first] = _results_of(results, "mine_stale")
    assert first["status"] == "done" and "mine_stale" in first["code"]["modules"]

    plugin.write_text(PLUGIN.replace("# a comment", "# a comment, rewritten\n    # and one more"))
    status = _bench(tmp_path, "status", *where[:4])
    assert "(stale" not in status and status.strip().endswith("3 done")

    plugin.write_text(PLUGIN.replace("WEIGHT = 1.0", "WEIGHT = 2.0"))
    status = _bench(tmp_path, "status", *where[:4])
    line = next(s for s in status.splitlines() if "mine_stale" in s and first["run_id"] in s)
    assert line.endswith("done (stale: mine_stale changed)")
    assert status.strip().splitlines()[-1] == "1 stale, 2 done"  # in the order of the runs
    report = _bench(tmp_path, "report", *where[:4]).replace("\\_", "_")
    assert "1 of the 3 runs was computed by other code than the current one: `bench status` names them; " \
           "`bench run --rerun stale` re-runs them." in report
    for fmt in ("latex", "csv"):
        assert "computed by other code" in _bench(tmp_path, "report", *where[:4], "--format", fmt)

    out = _bench(tmp_path, "run", *where)
    assert f"{first['run_id']} mine_stale on small_cnn/folder:{tiny_folder} seed 0: done, stale (mine_stale " \
           "changed): skipped, its result stands; `bench run --rerun stale` re-runs it" in out
    assert _results_of(results, "mine_stale") == [first]

    out = _bench(tmp_path, "run", *where, "--rerun", "stale")
    assert "archived and trained again from scratch" in out
    [second] = _results_of(results, "mine_stale")
    assert second["code"]["digest"] != first["code"]["digest"] and second["finished"] >= first["finished"]
    [archived] = (results / "runs" / "archive").glob(f"{first['run_id']}.*.json")
    assert json.loads(archived.read_text()) == first
    assert _bench(tmp_path, "status", *where[:4]).strip().endswith("3 done")
    assert "computed by other code" not in _bench(tmp_path, "report", *where[:4])


@pytest.mark.slow
def test_the_pool_reruns_what_it_is_told_once(tmp_path, tiny_folder):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "mine_stale.py").write_text(PLUGIN)
    grid, results = _grid(tmp_path, tiny_folder), tmp_path / "results"
    # --no-eval-checks: these tests read the runs' status lines; the indicators of attack failure, which a tiny
    # run's weak evaluation may trip (and add to those lines), are tests/test_indicators.py's business
    where = ["--grid", str(grid), "--results", str(results), "--device", "cpu", "--threads", "1", "--no-eval-checks"]
    _bench(tmp_path, "run", *where)
    before = {r["run_id"]: r for r in map(lambda p: json.loads(p.read_text()), (results / "runs").glob("*.json"))}
    out = _bench(tmp_path, "run", *where, "--workers", "2", "--rerun", "all")
    assert out.count("--rerun all, archived and trained again from scratch") == 3
    archived = sorted(p.name.split(".")[0] for p in (results / "runs" / "archive").glob("*.json"))
    assert archived == sorted(before)  # each run once
    for rid, old in before.items():
        assert Store(results).read(rid)["finished"] >= old["finished"]

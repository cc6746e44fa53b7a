"""SLURM submission: the code snapshot (plugins frozen with it, or refused in one line) without a cluster, and,
against the real single-node cluster of slurm/cluster.sh, a parent and two children through `--executor slurm`, a
job requeued mid-run that finishes from its checkpoint with its result written once, and a grid file's plugin
edited while its job waits that still runs as submitted.

The cluster tests are skipped, saying why, when `sinfo` cannot reach a controller (start one with
`bash slurm/cluster.sh start`)."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.core.config import run_id
from conftest import REPO, tiny_run, write_tiny_folder


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


def cluster(test):
    """A test that submits to the real cluster: marked `slurm` and `slow`, skipped when no controller answers."""
    for mark in (pytest.mark.slurm, pytest.mark.slow,
                 pytest.mark.skipif(_PROBLEM is not None, reason=f"SLURM not reachable: {_PROBLEM}")):
        test = mark(test)
    return test


@pytest.fixture
def folder(tmp_path) -> str:
    return f"folder:{write_tiny_folder(tmp_path / 'tiny').resolve()}"


@cluster
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
    # (a tiny run's weak evaluation may trip the indicators of attack failure: the count says so after "3 done")
    assert re.fullmatch(r"3 done(; \d runs? with an evaluation potentially unreliable)?",
                        capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["run", *args, "--executor", "slurm", "--profile", "local"]) == 0
    assert "0 job(s) in 0 array(s); not submitted: 3 done" in capsys.readouterr().out
    # another threat model for the finished runs: jobs that measure their saved models, training nothing
    before = {run_id(c): store.read(run_id(c)) for c in full}
    assert main(["run", *args, "--executor", "slurm", "--profile", "local", "--threads", "1", "--threat", "l2",
                 "--eps-l2", "1.0", "--wait"]) == 0
    assert "3 job(s)" in capsys.readouterr().out
    for rid, old in before.items():
        new = store.read(rid)
        assert new["metrics"]["l2"]["eps"] == 1.0 and new["epochs"] == old["epochs"]
        assert {k: v for k, v in new["metrics"].items() if k != "l2"} == old["metrics"]


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


@cluster
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


@cluster
def test_two_task_profile_runs_one_run_on_two_ranks_and_resumes_after_a_requeue(tmp_path, folder, monkeypatch):
    """The `local2` profile (tasks = 2): one job of 2 tasks trains one run data-parallel (gloo), the ranks found
    from SLURM's environment; `scontrol requeue` mid-run kills both and the requeued job resumes the run."""
    cfg = tiny_run("standard", folder, epochs=200)
    monkeypatch.setenv("BENCH_TEST_SLOW_WRITES", "0.1")  # >= 20 s of epochs: time for the requeue to land
    result, _, _, plan = _requeue_mid_run(tmp_path, cfg, "local2", checkpoint_timeout=180, finish_timeout=500)
    assert plan.arrays[0].resources.world_size == 2
    assert result["processes"]["count"] == 2


# -- plugins in the code snapshot ------------------------------------------------------------------------------------
PLUGIN = '''"""Standard training under another name, recording which version of its code ran."""
from methods import get_method, register

MARK = "{mark}"


@register
class {cls}(get_method("standard")):
    name = "{name}"
    label = "{name}"
    summary = "standard training that records its code's mark"

    def finalize(self, net, evaluator):
        return {{"code_mark": MARK}}
'''


def _grid_file(path: Path, module: str, method: str) -> Path:
    path.write_text(f'plugins = ["{module}"]\nmethods = ["{method}"]\nmodels = ["small_cnn"]\n'
                    'datasets = ["digits"]\nepochs = 1\n\n[train]\nn_train = 64\n\n'
                    '[eval]\nn_clean = 32\nn_pgd = 32\nn_aa = 0\npgd_steps = 2\nbatch_size = 32\nn_gap = 32\n')
    return path


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path for plugin sources; the methods and modules they add are removed afterwards."""
    from methods import REGISTRY

    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.setenv("BENCH_PLUGINS", "")  # load_modules writes it: restored after the test
    before, modules = set(REGISTRY), set(sys.modules)
    yield src
    for name in set(REGISTRY) - before:
        del REGISTRY[name]
    for name in set(sys.modules) - modules:  # only the plugins' own modules: a library module imported lazily
        path = getattr(sys.modules.get(name), "__file__", None) or ""  # meanwhile (pandas) must stay, or its
        if path.startswith(str(src)):  # classes exist twice and isinstance checks fail in later tests
            sys.modules.pop(name, None)


def test_snapshot_freezes_a_plugin_package_and_a_single_module(tmp_path, plugin_dir):
    from bench.grid.slurm import plugin_modules, plugin_sources, snapshot_code
    from methods import plugins

    pkg = plugin_dir / "frz_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.txt").write_text("data the package reads")
    (pkg / "std_a.py").write_text(PLUGIN.format(mark="a", cls="A", name="frz_std_a"))
    (plugin_dir / "frz_single.py").write_text(PLUGIN.format(mark="b", cls="B", name="frz_std_b"))
    plain = snapshot_code(tmp_path / "results", {})
    plugins.load_modules(["frz_pkg.std_a", "frz_single"])
    assert plugin_modules()[-2:] == ("frz_pkg.std_a", "frz_single")
    assert plugin_sources() == {"frz_pkg": pkg.resolve(), "frz_single": (plugin_dir / "frz_single.py").resolve()}
    snap = snapshot_code(tmp_path / "results")
    assert snap != plain and (snap / "bench" / "cli.py").is_file() and (snap / "methods" / "base.py").is_file()
    assert (snap / "frz_pkg" / "std_a.py").read_text() == (pkg / "std_a.py").read_text()
    assert (snap / "frz_pkg" / "helper.txt").is_file() and (snap / "frz_single.py").is_file()
    assert not list(snap.rglob("__pycache__"))
    assert snapshot_code(tmp_path / "results") == snap  # the same content: the same folder
    # a plugin run from the snapshot imports its own copy: a subprocess with the snapshot first on its path
    out = subprocess.run([sys.executable, "-c", "import frz_pkg.std_a as m; print(m.__file__)"], cwd=snap,
                         env={**os.environ, "PYTHONPATH": f"{snap}{os.pathsep}{plugin_dir}", "BENCH_PLUGINS": ""},
                         capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).resolve() == (snap / "frz_pkg" / "std_a.py").resolve()


@pytest.mark.parametrize("kind", ["namespace", "compiled"])
def test_a_plugin_that_cannot_be_frozen_is_refused_in_one_line(tmp_path, plugin_dir, monkeypatch, capsys, kind):
    from bench.cli import main

    pkg = plugin_dir / f"frz_{kind}"
    pkg.mkdir()
    if kind == "compiled":
        (pkg / "__init__.py").write_text("")
        (pkg / "_speedups.so").write_bytes(b"\x7fELF")
    (pkg / "std_c.py").write_text(PLUGIN.format(mark="c", cls="C", name=f"frz_{kind}_std"))
    grid = _grid_file(tmp_path / "grid.toml", f"frz_{kind}.std_c", f"frz_{kind}_std")
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM at all: the refusal comes first
    results = tmp_path / "results"
    for extra in (["--dry-run"], []):
        assert main(["run", "--grid", str(grid), "--executor", "slurm", "--profile", "local", "--results",
                     str(results), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert {"namespace": "is a namespace package", "compiled": "holds compiled code (_speedups.so)"}[kind] in err[0]
        assert "cannot freeze" in err[0]
    assert not results.exists()


def test_dry_run_names_the_frozen_plugins(tmp_path, plugin_dir, monkeypatch, capsys):
    from bench.cli import main

    pkg = plugin_dir / "frz_dry"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "std_d.py").write_text(PLUGIN.format(mark="d", cls="D", name="frz_dry_std"))
    grid = _grid_file(tmp_path / "grid.toml", "frz_dry.std_d", "frz_dry_std")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["run", "--grid", str(grid), "--executor", "slurm", "--profile", "local", "--dry-run",
                 "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert f"plugin frz_dry frozen into the code snapshot from {pkg.resolve()}" in out
    assert "frz_dry_std" in out and not (tmp_path / "results").exists()


# -- partition, account and QOS without editing the repository ------------------------------------------------------
def _dry_run(tmp_path, capsys, *extra: str) -> tuple[int, str, list[str]]:
    from bench.cli import main

    code = main(["run", "--grid", "demo", "--executor", "slurm", "--dry-run", "--results", str(tmp_path / "r"),
                 *extra])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


@pytest.fixture
def no_user_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM: a dry run needs none
    monkeypatch.delenv("BENCH_SLURM_PROFILES", raising=False)
    monkeypatch.delenv("BENCH_SLURM_PROFILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "afd-bench" / "profiles.toml"


def test_partition_account_and_qos_options_override_the_profile(tmp_path, capsys, no_user_profiles):
    code, out, _ = _dry_run(tmp_path, capsys, "--profile", "gpu")
    assert code == 0 and "[partition gpu, gpus 1" in out and "account" not in out
    code, out, _ = _dry_run(tmp_path, capsys, "--profile", "gpu", "--partition", "a100", "--account", "proj-1",
                            "--qos", "high")
    assert code == 0 and "dry run, profile 'gpu': nothing is submitted" in out
    arrays = [line for line in out.splitlines() if line.startswith("array ")]
    assert arrays and all("[partition a100, gpus 1" in a and "account proj-1, qos high]" in a for a in arrays)
    assert not (tmp_path / "r").exists()


def test_a_profile_file_outside_the_repository(tmp_path, capsys, no_user_profiles, monkeypatch):
    from bench.grid.slurm import profiles_file

    no_user_profiles.parent.mkdir(parents=True)
    no_user_profiles.write_text('[gpu]\npartition = "a100"\ngpus = 1\naccount = "mine"\n\n'
                                '[gpu.resources]\n"small_cnn/*" = { partition = "small", time = "00:30:00" }\n')
    assert profiles_file() == no_user_profiles
    code, out, _ = _dry_run(tmp_path, capsys)
    assert code == 0 and f"dry run, profile 'gpu' (from {no_user_profiles}): nothing is submitted" in out
    assert "[partition small, gpus 1, cpus 1, mem 4G, time 00:30:00, account mine]" in out  # the pattern's
    code, out, _ = _dry_run(tmp_path, capsys, "--partition", "big")  # the option wins over a pattern too
    assert code == 0 and "[partition big, gpus 1, cpus 1, mem 4G, time 00:30:00, account mine]" in out
    code, _, err = _dry_run(tmp_path, capsys, "--profile", "local")  # the user's file replaces the repository's
    assert code == 2 and len(err) == 1 and "unknown SLURM profile 'local'; known: gpu" in err[0]
    # $BENCH_SLURM_PROFILES comes first
    monkeypatch.setenv("BENCH_SLURM_PROFILES", str(REPO / "slurm" / "profiles.toml"))
    code, out, _ = _dry_run(tmp_path, capsys, "--profile", "local")
    assert code == 0 and "[partition debug, gpus 0" in out


@pytest.mark.parametrize("argv, message", [
    (["--partition", "a b"], "--partition: partition 'a b' is not a SLURM partition name"),
    (["--account", ""], "--account: account '' is not a SLURM account name"),
    (["--qos", "hi;gh"], "--qos: qos 'hi;gh' is not a SLURM qos name"),
    (["--profile", "bad"], "profile bad: partition 3 is not a SLURM partition name"),
    (["--profile", "bad2"], "profile bad2.resources.\"*\": account 'x y' is not a SLURM account name"),
])
def test_bad_partition_account_or_qos_is_one_line(tmp_path, capsys, no_user_profiles, monkeypatch, argv, message):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[gpu]\npartition = "gpu"\n[bad]\npartition = 3\n'
                        '[bad2]\n[bad2.resources]\n"*" = { account = "x y" }\n')
    monkeypatch.setenv("BENCH_SLURM_PROFILES", str(profiles))
    code, _, err = _dry_run(tmp_path, capsys, *argv)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_slurm_options_need_the_slurm_executor(tmp_path, capsys):
    from bench.cli import main

    assert main(["run", "--grid", "demo", "--partition", "a100", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--partition / --account / --qos are for SLURM jobs: add --executor slurm" in err[0]
    assert not (tmp_path / "r").exists()


def _wait_for(job_ids: list[str], timeout: float) -> None:
    from bench.grid.slurm import QUEUED_STATES, RUNNING_STATES, query_jobs

    t0 = time.monotonic()
    while True:
        states = query_jobs(job_ids)
        if not any(j in states and states[j].state in QUEUED_STATES | RUNNING_STATES for j in job_ids):
            return
        assert time.monotonic() - t0 < timeout, f"jobs {job_ids} still in the queue after {timeout} s"
        time.sleep(2)


@cluster
def test_a_plugin_edited_while_its_job_waits_runs_as_submitted(tmp_path, plugin_dir, monkeypatch, capsys):
    """A grid file's plugin (a package outside the repository, also on the job's PYTHONPATH) is submitted, held
    in the queue, edited, then released: the result carries the submitted code's mark, not the edited one."""
    import submitit

    from bench.cli import main
    from bench.core.store import Store
    from bench.grid import gridfile

    pkg = plugin_dir / "frz_live"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "std_e.py").write_text(PLUGIN.format(mark="submitted", cls="E", name="frz_live_std"))
    grid = _grid_file(tmp_path / "grid.toml", "frz_live.std_e", "frz_live_std")
    # without the snapshot the job would import the live (edited) source from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugin_dir), str(REPO)]))
    submit_params = submitit.SlurmExecutor.update_parameters

    def held(self, **params):  # sbatch --hold: the job waits until `scontrol release`
        params["additional_parameters"] = {**params.get("additional_parameters", {}), "hold": True}
        return submit_params(self, **params)

    monkeypatch.setattr(submitit.SlurmExecutor, "update_parameters", held)
    results = tmp_path / "results"
    assert main(["run", "--grid", str(grid), "--executor", "slurm", "--profile", "local", "--threads", "1",
                 "--results", str(results)]) == 0
    capsys.readouterr()
    (cfg,) = gridfile.load(grid).runs
    record = json.loads((results / "jobs" / f"{run_id(cfg)}.json").read_text())
    job = record["job_id"]
    (pkg / "std_e.py").write_text(PLUGIN.format(mark="edited", cls="E", name="frz_live_std"))
    subprocess.run(["scontrol", "release", job.split("_")[0]], check=True, capture_output=True)
    _wait_for([job], timeout=300)
    result = Store(results).read(run_id(cfg))
    log = Path(record["stdout"]).read_text()
    assert result is not None and result["status"] == "done", (result or {}).get("reason") or log[-2000:]
    assert result["extra"]["code_mark"] == "submitted"
    snap = Path(record["snapshot"])
    assert f"plugin frz_live.std_e from {(snap / 'frz_live' / '__init__.py').resolve()}" in log


def test_a_job_gets_every_runtime_option_of_the_command_line(tmp_path):
    """job_runtime lists the runtime options one by one: a new Runtime field left out would be silently dropped on
    the cluster (the job would run with its default). Only procs is not passed: a job's ranks come from SLURM."""
    import dataclasses

    from bench.core.runtime import Runtime
    from bench.grid.slurm.profiles import Resources
    from bench.grid.slurm.submission import job_runtime

    rt = Runtime(results=tmp_path, data_root=tmp_path, eval_checks=False, eval_checks_n=7, eval_fold_bn=False,
                 eval_layout="nchw", compile=True, determinism="fast", threads=3, threats=("linf", "l2"),
                 eps_l2=0.25)
    job = job_runtime(rt, Resources())
    assert json.loads(json.dumps(job))["threats"] == ["linf", "l2"]  # the job's runtime travels as JSON
    assert Runtime(**{**json.loads(json.dumps(job)), "results": Path(job["results"])}).threats == ("linf", "l2")
    assert {f.name for f in dataclasses.fields(Runtime)} - set(job) == {"procs"}
    assert (job["eval_checks"], job["eval_checks_n"], job["eval_fold_bn"], job["eval_layout"]) == (False, 7, False, "nchw")
    assert Runtime(**{**job, "results": Path(job["results"])}).eval_checks is False

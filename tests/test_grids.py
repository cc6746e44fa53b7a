"""The paper's grids, planning, submission plans and status: no training, no scheduler (fakes stand in)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.core.config import run_id, to_dict
from bench.grid.grids import GRIDS, get_grid

from bench.grid.runs import expand
def test_table1_is_27_runs_plus_3_natural_parents_without_the_papers_empty_cells():
    runs = get_grid("table1")
    assert len(runs) == 27 and len({run_id(r) for r in runs}) == 27
    assert not {(r.method, r.dataset) for r in runs} & {(m, "tiny-imagenet") for m in ("free_at", "fgsm_ga", "atas")}
    full_grid = get_grid("table1_full")
    assert len(full_grid) == 30 and {run_id(r) for r in runs} < {run_id(r) for r in full_grid}
    full = expand(runs)
    extra = [r for r in full if run_id(r) not in {run_id(x) for x in runs}]
    assert sorted((r.method, r.model, r.dataset) for r in extra) == [
        ("standard", "resnet18_afd", d) for d in ("cifar10", "cifar100", "tiny-imagenet")]
    # RiFT's parent is the table's own PGD-AT run: trained once
    for r in runs:
        if r.method == "rift":
            assert r.parent in runs and r.parent.method == "pgd_at"
    assert all(r.eval.n_clean == r.eval.n_pgd == r.eval.n_aa == 10_000 for r in full)


def test_each_row_runs_on_the_network_its_public_code_trained():
    """The AFD code's rows (vAFT, AFKD, ARREST, AFD, the ablations) and their natural parents on its ResNets with an
    unpadded first convolution; PGD-AT, TRADES, the fast-AT rows and RiFT on the padded CIFAR ResNet18; the
    WideResNet rows as they were."""
    aft = {"vaft", "afkd", "arrest", "afd", "vaft_d", "vaft_a"}
    for grid in ("table1", "table3", "table5", "fig1", "fig4"):
        for r in expand(get_grid(grid)):
            want = "resnet18_afd" if r.method in aft or r.method == "standard" else "resnet18"
            assert r.model == want, (grid, r.method, r.model)
    t4 = {(r.model, r.dataset) for r in get_grid("table4")}
    assert ("resnet50_afd", "cifar10") in t4 and ("wrn34_10", "cifar10") in t4 and ("resnet18_afd", "cifar10") in t4
    assert {r.model for r in get_grid("table2")} == {"wrn34_10"}


def test_figure1a_table3_and_the_default_of_figure4_are_table1s_own_runs():
    table1 = {run_id(r) for r in get_grid("table1")}
    assert {run_id(r) for r in get_grid("fig1")} <= table1
    t3 = {r.method: run_id(r) for r in get_grid("table3")}
    assert t3["vaft"] in table1 and t3["afd"] in table1
    assert len({run_id(r) for r in get_grid("fig4")} & table1) == 1  # the defaults' point: Table 1's AFD
    assert {run_id(r) for r in get_grid("table4") if r.model == "resnet18_afd" and r.dataset == "cifar10"} <= table1


def test_paper_grids_sizes_and_shared_parents():
    assert [len(get_grid("table4")), len(expand(get_grid("table4")))] == [8, 16]
    assert len(get_grid("fig4")) == 13 and len(expand(get_grid("fig4"))) == 14
    assert {r.method for r in get_grid("table3")} == {"vaft", "vaft_d", "vaft_a", "afd"}
    # every grid's resnet18/cifar10 natural parent is one run, whichever grid asks for it
    parents = {run_id(r.parent) for g in ("table3", "table4", "fig4") for r in get_grid(g)
               if r.parent is not None and r.model == "resnet18_afd" and r.dataset == "cifar10"}
    assert len(parents) == 1
    assert get_grid("table3", seeds=2)[0].seed == 0 and len(get_grid("table3", seeds=2)) == 8


def test_fig1_shares_table1_parents():
    runs = get_grid("fig1")
    assert all(r.eval.feature_gap_every_epoch for r in runs)
    assert all(not r.parent.eval.feature_gap_every_epoch for r in runs)
    assert len(expand(runs)) == 5


def test_grid_typo_is_one_line_exit_2(capsys):
    assert main(["plan", "--grid", "tabel1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown grid 'tabel1'" in err[0]


def test_plan_lists_runs_and_cost(capsys, tmp_path):
    assert main(["plan", "--grid", "table4", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "8 run(s) + 8 shared parent(s) = 16 distinct runs" in out
    assert "GPU-hours" in out and out.count("missing") == 16
    assert not (tmp_path / "runs").exists()  # nothing written


def test_dry_run_slurm_arrays_and_dependencies(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue/sbatch at all: a dry run needs none
    assert main(["run", "--grid", "table4", "--executor", "slurm", "--dry-run", "--profile", "gpu",
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "16 job(s) in 13 array(s)" in out  # resnet50_afd on the resnet50 resources
    assert "afterok: array 0 task [0]" in out and "gpus 1" in out
    assert not (tmp_path / "jobs").exists()


def test_unknown_profile_and_unreachable_scheduler(capsys, tmp_path, monkeypatch):
    assert main(["run", "--grid", "demo", "--executor", "slurm", "--profile", "nope", "--results",
                 str(tmp_path)]) == 2
    assert "unknown SLURM profile 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["run", "--grid", "demo", "--executor", "slurm", "--profile", "local", "--results",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SLURM is not reachable" in err[0]


def test_unknown_partition(monkeypatch):
    from bench.grid import slurm
    from bench.grid.slurm import scheduler
    monkeypatch.setattr(scheduler, "partitions", lambda: ["debug"])
    with pytest.raises(slurm.SchedulerError, match="unknown SLURM partition 'gpu'"):
        slurm.check_partitions([slurm.Resources(partition="gpu")])


def test_profile_resources_by_pattern():
    from bench.grid.slurm import get_profile, parse_time, resources_for

    name, prof = get_profile("gpu")
    assert resources_for(name, prof, "resnet18", "cifar10").time == "12:00:00"
    wrn = resources_for(name, prof, "wrn34_10", "tiny-imagenet")
    assert (wrn.time, wrn.mem, wrn.gpus) == ("3-00:00:00", "64G", 1)
    assert parse_time("1-02:03:00") == 1563 and parse_time("90") == 90


def test_status_and_resubmission_from_queue(tmp_path):
    """done / queued / running / failed / missing, and a second submission plans only missing and failed."""
    from bench.grid.slurm import JobState, get_profile, grid_status, plan_submission, write_job
    from bench.core.store import Store

    runs = get_grid("table3")
    full = expand(runs)  # [standard, vaft, vaft_d, vaft_a, afd]
    store = Store(tmp_path)
    ids = [run_id(r) for r in full]
    store.write(ids[0], {"run_id": ids[0], "status": "done"})
    store.model_path(ids[0]).parent.mkdir(parents=True, exist_ok=True)
    store.model_path(ids[0]).write_bytes(b"")  # a done parent has its model (else it would be trained again)
    for rid, job in zip(ids[1:4], ("7_0", "7_1", "7_2")):
        write_job(tmp_path, rid, {"run_id": rid, "job_id": job})
    fake = {"7_0": JobState("PENDING", "Dependency"), "7_1": JobState("RUNNING"), "7_2": JobState("TIMEOUT")}
    st = grid_status(runs, tmp_path, query=lambda j: {k: v for k, v in fake.items() if k in j})
    assert [s.state for s in st] == ["done", "queued", "running", "failed", "missing"]
    assert "TIMEOUT" in st[3].reason
    name, prof = get_profile("local")
    plan = plan_submission(runs, tmp_path, name, prof, st)
    assert [run_id(c) for a in plan.arrays for c in a.runs] == [ids[3], ids[4]]
    assert plan.arrays[0].after == []  # the parent is done: no dependency
    # a child whose parent is queued depends on the parent's job
    write_job(tmp_path, ids[0], {"run_id": ids[0], "job_id": "5"})
    store.result_path(ids[0]).unlink()
    fake["5"] = JobState("PENDING", "Priority")
    st = grid_status(runs, tmp_path, query=lambda j: {k: v for k, v in fake.items() if k in j})
    plan = plan_submission(runs, tmp_path, name, prof, st)
    assert plan.arrays[0].after == ["5"]
    json.loads((tmp_path / "jobs" / f"{ids[0]}.json").read_text())


def test_plan_uses_measured_evaluation_seconds(tmp_path):
    """With a finished run of the same model and data set recording seconds per measurement, the plan's
    evaluation estimate is those rates times the run's image counts."""
    from bench.grid.plan import estimate
    from bench.core.store import Store

    (run,) = [r for r in expand(get_grid("demo")) if r.method == "vaft"]
    ev = run.eval
    Store(tmp_path).write(run_id(run), {
        "run_id": run_id(run), "status": "done", "config": to_dict(run), "epochs": [{"epoch": 1}],
        "seconds_per_epoch": 10.0,
        "metrics": {"n_clean": 100, "n_pgd": 100, "n_aa": 10,
                    "seconds": {"clean": 1.0, "pgd20": 100.0 * ev.pgd_steps / 20, "aa": 50.0}}})
    (cost,) = [c for c in estimate([run], tmp_path) if c.cfg.method == "vaft"]
    per_pgd_step = (100.0 * ev.pgd_steps / 20) / (100 * ev.pgd_steps)
    want = (ev.n_clean * 0.01 + ev.n_pgd * ev.pgd_steps * per_pgd_step + ev.n_aa * 5.0
            + run.train.epochs * ev.n_gap * ev.pgd_steps * per_pgd_step)
    assert cost.eval_hours * 3600 == pytest.approx(want)
    assert "evaluation measured" in cost.source

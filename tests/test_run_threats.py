"""Threat models beyond a run's own evaluation (bench.train.threat_evals): measured beside it when the run trains,
measured on the saved model of a finished run (its id, training and own numbers untouched), and said in one line
when that model is not there or a corruption file is missing."""
import json

import pytest
import torch

from bench.cli import main
from bench.core.config import ConfigError, run_id
from bench.core.runtime import Runtime
from bench.core.store import Store
from bench.data import DatasetInfo, Split
from bench.data.split import DataError
from bench.train import loop, threat_evals
from bench.train.loop import execute
from conftest import tiny_run
from test_corruptions import _write_cifar_c


def _rt(tmp_path, **kw):
    return Runtime(results=tmp_path / "r", device="cpu", threads=1, progress=False, **kw)


def test_l2_beside_the_run_then_on_its_saved_model(tmp_path):
    cfg = tiny_run("standard", "digits", epochs=1)
    logs = []
    res = execute(cfg, _rt(tmp_path, threats=("linf", "l2")), log=logs.append)
    m = res["metrics"]
    assert m["l2"]["eps"] == 0.29 and m["l2"]["n_pgd"] == 12 and "measured" in m["l2"]
    assert 0 <= m["l2"]["pgd20"] <= m["clean"] and "clean" not in m["l2"]
    assert len(m["l2"]["per_example"]["pgd20"]) == 12
    again = execute(cfg, _rt(tmp_path, threats=("linf", "l2"), eps_l2=0.5), log=logs.append)
    assert again["metrics"]["l2"]["eps"] == 0.5  # a new radius: measured on the saved model, not retrained
    for key in ("finished", "epochs", "train_seconds"):
        assert again[key] == res[key]
    for key in ("clean", "pgd20", "per_example"):
        assert again["metrics"][key] == res["metrics"][key]
    assert any("measuring l2 on its saved model" in s for s in logs)
    stored = json.loads((tmp_path / "r" / "runs" / f"{run_id(cfg)}.json").read_text())
    assert stored["metrics"]["l2"]["eps"] == 0.5
    assert execute(cfg, _rt(tmp_path, threats=("linf", "l2"), eps_l2=0.5))["metrics"]["l2"] == stored["metrics"]["l2"]

    (tmp_path / "r" / "models" / f"{run_id(cfg)}.pt").unlink()
    logs.clear()
    kept = execute(cfg, _rt(tmp_path, threats=("l2",), eps_l2=0.7), log=logs.append)
    assert kept["metrics"]["l2"]["eps"] == 0.5
    assert [s for s in logs if "needs its model" in s and "--rerun" in s]


def _fake_cifar10(monkeypatch, n=12):
    g = torch.Generator().manual_seed(0)
    test = Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 10)
    info = DatasetInfo("cifar10", 10, 3, 32, tuple("abcdefghij"))
    fake = lambda name, root, cache: (test, test, info)  # noqa: E731
    monkeypatch.setattr(loop, "load_dataset", fake)
    monkeypatch.setattr(threat_evals, "load_dataset", fake)
    return test


def test_corruptions_beside_the_run_and_a_missing_file_refused_before_training(tmp_path, monkeypatch):
    test = _fake_cifar10(monkeypatch)
    folder = _write_cifar_c(tmp_path / "data" / "CIFAR-10-C", test)
    cfg = tiny_run("standard", "cifar10", epochs=1)
    rt = _rt(tmp_path, threats=("linf", "corruptions"), data_root=tmp_path / "data")
    corr = execute(cfg, rt)["metrics"]["corruptions"]
    assert corr["dataset"] == "cifar10-c" and corr["label"] == "CIFAR-10-C" and corr["n"] == 12
    assert len(corr["accuracy"]) == 15 and all(len(a) == 5 for a in corr["accuracy"].values())

    (folder / "fog.npy").unlink()
    other = tiny_run("standard", "cifar10", epochs=1, seed=1)
    with pytest.raises(DataError, match="1 of the 15 corruptions missing"):
        execute(other, rt)
    assert not (tmp_path / "r" / "runs" / f"{run_id(other)}.json").exists()
    assert not Store(tmp_path / "r").ckpt_dir(run_id(other)).exists()
    with pytest.raises(ConfigError, match=r"--eps-l2 60.0 is outside \(0, 55.43\]"):
        execute(other, _rt(tmp_path, threats=("l2",), eps_l2=60.0))
    assert not (tmp_path / "r" / "runs" / f"{run_id(other)}.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--threat", "l3"], "unknown threat model 'l3'"),
    (["--eps-l2", "0.5"], "--eps-l2 / --corruptions go with --threat"),
    (["--threat", "l2", "--eps-l2", "-1"], "--eps-l2 must be a finite number > 0"),
    (["--threat", "corruptions", "--corruptions", "made-up"], "--corruptions 'made-up': known: published, generated"),
    (["--threat", "corruptions", "--corruptions", "generated"], "no generated corruption set for data set 'digits'"),
])
def test_bench_run_threat_options_refused_in_one_line(tmp_path, capsys, argv, message):
    assert main(["run", "--grid", "demo", "--results", str(tmp_path / "r"), "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_a_grid_declares_its_threat_models_and_keeps_its_runs_ids():
    import argparse

    from bench.cli import _run_threats  # noqa: PLC2701 - the CLI's reading of a grid's declaration
    from bench.grid.grids import get_grid
    from bench.grid.runs import expand

    runs = get_grid("cpu_threats")
    cpu = {run_id(r) for r in expand(get_grid("cpu", 2))}
    assert {run_id(r) for r in runs} <= cpu and len(runs) == 6
    args = argparse.Namespace(grid="cpu_threats", threat=None, eps_l2=None, corruptions=None)
    assert _run_threats(args, runs) == {"threats": ("linf", "l2", "corruptions"), "eps_l2": None,
                                        "corruptions": "generated"}
    args = argparse.Namespace(grid="cpu_threats", threat="l2", eps_l2="0.25", corruptions=None)
    assert _run_threats(args, runs) == {"threats": ("l2",), "eps_l2": 0.25, "corruptions": None}


def test_local_workers_measure_a_finished_run_on_its_saved_model(tmp_path):
    from bench.grid.pool import devices_from, run_pool

    cfg = tiny_run("standard", "digits", epochs=1)
    done = execute(cfg, _rt(tmp_path))
    assert "l2" not in done["metrics"]
    run_pool([cfg], _rt(tmp_path, threats=("linf", "l2")), devices_from(None, 1, 0), log=lambda s: None)
    res = Store(tmp_path / "r").read(run_id(cfg))
    assert res["metrics"]["l2"]["eps"] == 0.29 and res["epochs"] == done["epochs"]

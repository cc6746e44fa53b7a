"""The committed CPU-scale results.

results/cpu holds the `cpu` grid run by the current code: every one of its 28 runs, finished with the grid's
evaluation sizes, and the tables and claims regenerate byte for byte from them (no training here). The earlier run,
made by the code of commit 0a6b777 (before every method ran as its public code ran), is archived intact in results/cpu-before-as-run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report.claims import claims
from bench.core.config import run_id
from bench.grid.grids import get_grid
from bench.grid.runs import expand
from bench.report.tables import report
from bench.core.store import Store

RESULTS = Path(__file__).resolve().parent.parent / "results"
CPU = RESULTS / "cpu"
ARCHIVE = RESULTS / "cpu-before-as-run"


def test_every_run_of_the_current_cpu_grid_is_committed_and_finished():
    ids = {run_id(cfg): cfg for cfg in expand(get_grid("cpu"))}
    assert len(ids) == 28
    store = Store(CPU)
    committed = {p.stem for p in (CPU / "runs").glob("*.json")}
    assert committed - ids.keys() == set(), "results of another grid (stale: move them out or re-run)"
    assert ids.keys() - committed == set(), "runs of the cpu grid without a committed result"
    for rid in sorted(committed):
        res = store.read(rid)
        assert res["status"] == "done" and res["sanity"] == "ok", (rid, res["status"], res.get("reason"))
        m = res["metrics"]
        assert m["n_clean"] == 1000 and m["n_pgd"] == 1000 and m["n_aa"] == 200
        # the seconds of every measurement are recorded beside train_seconds
        assert set(m["seconds"]) == {"clean", "pgd20", "aa"} and all(v > 0 for v in m["seconds"].values())
        assert res["train_seconds"] > 0 and len(m["per_example"]["aa"]) == 200


def test_committed_tables_and_claims_regenerate_byte_for_byte():
    for fmt, ext in (("markdown", "md"), ("latex", "tex")):
        assert report("cpu", CPU, fmt) == (CPU / f"tables.{ext}").read_text(encoding="utf-8")
    assert claims("cpu", CPU) in (CPU / "REPRODUCTION.md").read_text(encoding="utf-8")
    for fig in ("fig1_cpu", "fig4_cpu"):
        assert (CPU / "figures" / f"{fig}.png").stat().st_size > 0


def test_the_archived_run_of_0a6b777_is_intact():
    files = sorted((ARCHIVE / "runs").glob("*.json"))
    assert len(files) == 28
    for path in files:
        res = json.loads(path.read_text())
        assert res["run_id"] == path.stem and res["status"] == "done" and res["sanity"] == "ok"
        assert res["config"]["dataset"] == "cifar10-jpeg" and res["metrics"]["n_aa"] == 200
    assert "0a6b777" in (ARCHIVE / "README.md").read_text()
    for name in ("tables.md", "tables.tex", "REPRODUCTION.md"):
        assert (ARCHIVE / name).stat().st_size > 0


CPU20 = RESULTS / "cpu20"


def test_every_committed_cpu20_result_is_of_the_current_grid_and_finished():
    """results/cpu20 fills run by run (each about half an hour on 2 cores): whatever is committed is a finished
    run of the current `cpu20` grid, with the cpu grid's evaluation sizes and the gap after every epoch, and its
    parent is the cpu grid's (the 2-epoch and the 20-epoch runs share it)."""
    ids = {run_id(cfg): cfg for cfg in expand(get_grid("cpu20"))}
    assert len(ids) == 11
    parent = {run_id(cfg.parent) for cfg in get_grid("cpu20")}
    assert parent == {run_id(cfg) for cfg in expand(get_grid("cpu")) if cfg.method == "standard"}
    committed = {p.stem for p in (CPU20 / "runs").glob("*.json")}
    assert parent <= committed and committed - ids.keys() == set(), "results of another grid in results/cpu20"
    store = Store(CPU20)
    for rid in sorted(committed - parent):
        res = store.read(rid)
        assert res["status"] == "done" and res["sanity"] == "ok", (rid, res["status"], res.get("reason"))
        m = res["metrics"]
        assert (m["n_clean"], m["n_pgd"], m["n_aa"]) == (1000, 1000, 200)
        assert len(res["epochs"]) == 20 and all("feature_gap" in e and "feature_gap_se" in e for e in res["epochs"])
    assert (CPU20 / "runs" / f"{next(iter(parent))}.json").read_bytes() == \
        (CPU / "runs" / f"{next(iter(parent))}.json").read_bytes()


def test_every_run_of_the_cpu20_grid_is_committed_and_its_tables_claims_and_figure_regenerate():
    """All 10 fine-tuning runs (and the shared parent) are committed, and results/cpu20's tables, claims block
    and Figure 1a regenerate from them (the tables and claims byte for byte)."""
    ids = {run_id(cfg) for cfg in expand(get_grid("cpu20"))}
    committed = {p.stem for p in (CPU20 / "runs").glob("*.json")}
    assert ids - committed == set(), "runs of the cpu20 grid without a committed result"
    for fmt, ext in (("markdown", "md"), ("latex", "tex")):
        assert report("cpu20", CPU20, fmt) == (CPU20 / f"tables.{ext}").read_text(encoding="utf-8")
    text = claims("cpu20", CPU20)
    assert "Runs: 11 of 11 finished;" in text and text in (CPU20 / "REPRODUCTION.md").read_text(encoding="utf-8")
    assert (CPU20 / "figures" / "fig1_cpu20.png").stat().st_size > 0

"""The committed CPU-scale results.

results/cpu holds the `cpu` grid run by the current code: every result file there must be a finished run of the
current grid with the grid's evaluation sizes, and, where tables and claims are committed, they regenerate byte
for byte (no training here). The grid is being re-run after issue 12 (results/cpu/README.md); the earlier run,
made by the code before issue 12, is archived intact in results/cpu-before-as-run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.claims import claims
from bench.config import run_id
from bench.grids import expand, get_grid
from bench.report import report
from bench.store import Store

RESULTS = Path(__file__).resolve().parent.parent / "results"
CPU = RESULTS / "cpu"
ARCHIVE = RESULTS / "cpu-before-as-run"


def test_every_committed_result_is_a_finished_run_of_the_current_cpu_grid():
    ids = {run_id(cfg): cfg for cfg in expand(get_grid("cpu"))}
    assert len(ids) == 28
    store = Store(CPU)
    for path in sorted((CPU / "runs").glob("*.json")):
        rid = path.stem
        assert rid in ids, f"{path.name} is not a run of the current cpu grid (stale: move it out or re-run)"
        res = store.read(rid)
        assert res["status"] == "done" and res["sanity"] == "ok", (rid, res["status"], res.get("reason"))
        m = res["metrics"]
        assert m["n_clean"] == 1000 and m["n_pgd"] == 1000 and m["n_aa"] == 200


def test_committed_tables_and_claims_regenerate_byte_for_byte():
    for fmt, ext in (("markdown", "md"), ("latex", "tex")):
        if (CPU / f"tables.{ext}").exists():
            assert report("cpu", CPU, fmt) == (CPU / f"tables.{ext}").read_text(encoding="utf-8")
    if (CPU / "REPRODUCTION.md").exists():
        assert claims("cpu", CPU) in (CPU / "REPRODUCTION.md").read_text(encoding="utf-8")


def test_the_archived_run_before_issue_12_is_intact():
    files = sorted((ARCHIVE / "runs").glob("*.json"))
    assert len(files) == 28
    for path in files:
        res = json.loads(path.read_text())
        assert res["run_id"] == path.stem and res["status"] == "done" and res["sanity"] == "ok"
        assert res["config"]["dataset"] == "cifar10-jpeg" and res["metrics"]["n_aa"] == 200
    assert "0a6b777" in (ARCHIVE / "README.md").read_text()
    for name in ("tables.md", "tables.tex", "REPRODUCTION.md"):
        assert (ARCHIVE / name).stat().st_size > 0

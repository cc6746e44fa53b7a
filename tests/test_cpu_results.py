"""The committed CPU-scale reproduction (issue 8): results/cpu holds every run of the `cpu` grid, finished, and
the committed tables and claims regenerate byte for byte from its result files (no training here)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.claims import claims
from bench.config import run_id
from bench.grids import expand, get_grid
from bench.report import report
from bench.store import Store

CPU = Path(__file__).resolve().parent.parent / "results" / "cpu"


def test_every_run_of_the_cpu_grid_finished_and_passes_the_order_check():
    store = Store(CPU)
    runs = expand(get_grid("cpu"))
    assert len(runs) == 28
    for cfg in runs:
        res = store.read(run_id(cfg))
        assert res is not None, f"{run_id(cfg)} ({cfg.method}) has no result file"
        assert res["status"] == "done" and res["sanity"] == "ok", (run_id(cfg), res["status"], res.get("reason"))
        # sanity "ok": AA <= PGD-20 <= clean per example on the images the attacks share (AA runs on the first 200)
        m = res["metrics"]
        assert m["n_clean"] == 1000 and m["n_pgd"] == 1000 and m["n_aa"] == 200


@pytest.mark.parametrize("fmt,ext", [("markdown", "md"), ("latex", "tex")])
def test_committed_tables_regenerate_byte_for_byte(fmt, ext):
    assert report("cpu", CPU, fmt) == (CPU / f"tables.{ext}").read_text(encoding="utf-8")


def test_reproduction_md_holds_the_generated_claims():
    assert claims("cpu", CPU) in (CPU / "REPRODUCTION.md").read_text(encoding="utf-8")

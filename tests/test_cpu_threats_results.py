"""The committed CPU-scale results of the three threat models (results/cpu_threats).

Every run of the `cpu_threats` grid (the cpu grid's natural and PGD-AT parents and its vAFT, AFKD, ARREST and AFD
runs: the same run ids) is committed, finished, measured in L2 and on the generated corruptions; the L-inf numbers
are those of results/cpu, run for run (the fine-tuned models were rebuilt from the committed parents and gave the
same numbers); the tables regenerate byte for byte (no training here)."""
from __future__ import annotations

from pathlib import Path

from bench.core.config import run_id
from bench.core.store import Store
from bench.grid.grids import get_grid
from bench.grid.runs import expand
from bench.report.tables import report

RESULTS = Path(__file__).resolve().parent.parent / "results"
HERE = RESULTS / "cpu_threats"


def test_every_run_is_committed_and_measured_in_all_three_threat_models():
    ids = {run_id(cfg) for cfg in expand(get_grid("cpu_threats"))}
    assert len(ids) == 6
    assert {p.stem for p in (HERE / "runs").glob("*.json")} == ids
    store, cpu = Store(HERE), Store(RESULTS / "cpu")
    for rid in sorted(ids):
        res, before = store.read(rid), cpu.read(rid)
        assert res["status"] == "done" and res["sanity"] == "ok", rid
        m = res["metrics"]
        for key in ("clean", "pgd20", "aa", "per_example"):
            assert m[key] == before["metrics"][key], (rid, key)  # the same L-inf numbers as results/cpu
        assert m["l2"]["eps"] == 0.5 and (m["l2"]["n_pgd"], m["l2"]["n_aa"]) == (1000, 200)
        assert 0 <= m["l2"]["aa"] <= m["l2"]["pgd20"] <= m["clean"] and not m["l2"]["violations"]
        corr = m["corruptions"]
        assert corr["dataset"] == "cifar10-jpeg-c-generated" and corr["label"] == "CIFAR-10-JPEG-C-generated"
        assert corr["n"] == 1000 and len(corr["accuracy"]) == 12


def _without_stale_note(text: str) -> str:
    # These results record the fingerprint of the code that computed them: once the training or evaluation code
    # changes, the tables add a note saying so (bench.report.build). Everything else regenerates as committed.
    return "\n".join(line for line in text.splitlines() if "computed by other code than the current one" not in line)


def test_tables_regenerate_byte_for_byte():
    for fmt, ext in (("markdown", "md"), ("latex", "tex")):
        assert _without_stale_note(report("cpu_threats", HERE, fmt)) == \
            _without_stale_note((HERE / f"tables.{ext}").read_text(encoding="utf-8"))


def test_the_page_regenerates_and_holds_the_three_threat_models():
    from bench.report.html import page

    committed = (HERE / "index.html").read_text(encoding="utf-8")
    assert _without_stale_note(page("cpu_threats", HERE)) == _without_stale_note(committed)
    for label in ("L2 AA", "Corr.", "CIFAR-10-JPEG-C-generated", "per severity"):
        assert label in committed, label

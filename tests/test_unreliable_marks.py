"""A result whose reliability indicators tripped (``metrics.unreliable``) is marked "evaluation potentially
unreliable" with the tripped names wherever it is reported: the tables in every format, `bench report --evals`,
`bench status` and the claims. A clean result (indicators checked, none tripped) and a result written before the
indicators existed (neither key: not checked) carry no mark."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_report_fixtures import RESULTS, cfg, fig4_runs, table_runs  # noqa: E402

from bench.core.config import run_id  # noqa: E402
from bench.report import report  # noqa: E402
from bench.report.labels import UNRELIABLE, UNRELIABLE_WORDS  # noqa: E402

TRIPPED = ["grad_vanishing", "pgd_aa_gap"]  # the result's sorted list of tripped indicator names


def _indicators(tripped: list[str]) -> dict:
    """The indicators a result records: every name checked, those of ``tripped`` over their threshold."""
    names = sorted({*TRIPPED, "restart_spread"})
    return {n: {"value": 0.4 if n in tripped else 0.01, "threshold": 0.1, "tripped": n in tripped, "n": 100,
                "what": f"what {n} measures"} for n in names}


def _mark(path: Path, tripped: list[str]) -> None:
    res = json.loads(path.read_text())
    res["metrics"]["indicators"] = _indicators(tripped)
    res["metrics"]["unreliable"] = sorted(tripped)
    path.write_text(json.dumps(res))


@pytest.fixture
def marked(tmp_path) -> Path:
    """The report fixture's results with AFD's seed 1 (ResNet18, CIFAR-10) unreliable, vAFT's seed 0 checked and
    clean, and every other result written before the indicators (no keys)."""
    root = tmp_path / "r"
    shutil.copytree(RESULTS, root)
    _mark(root / "runs" / f"{run_id(cfg('afd', seed=1))}.json", TRIPPED)
    _mark(root / "runs" / f"{run_id(cfg('vaft'))}.json", [])
    return root


def _rows(md: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}


def test_a_cell_of_an_unreliable_run_is_marked_in_markdown_with_a_note(marked):
    md = report(table_runs(), marked, "markdown", table="table1")
    afd, vaft = _rows(md)["AFD"], _rows(md)["vAFT"]
    cells = [c.strip() for c in afd.split("|")[2:-1]]
    assert cells[:4] == [f"85.03 ± 0.18{UNRELIABLE} (n=2)", f"52.76 ± 0.08{UNRELIABLE} (n=2)",
                         f"47.47 ± 0.09{UNRELIABLE} (n=2)", f"61.75 ± 0.12{UNRELIABLE} (n=2)"]
    assert UNRELIABLE not in "".join(cells[4:])  # AFD on CIFAR-100: another run, not marked
    assert UNRELIABLE not in vaft  # checked, nothing tripped
    rid = run_id(cfg("afd", seed=1))
    assert (f"- {UNRELIABLE}: 1 run with an {UNRELIABLE_WORDS} (reliability indicators tripped):\n"
            f"  - AFD RN18/CIFAR-10 seed 1 (run {rid}): grad\\_vanishing; pgd\\_aa\\_gap") in md


def test_old_and_clean_results_carry_no_mark():
    """The fixture's results predate the indicators: the tables are as they were (test_report compares them byte
    for byte), and nothing says unreliable."""
    for fmt in ("markdown", "latex", "csv"):
        text = report(table_runs(), RESULTS, fmt, table="table1")
        assert UNRELIABLE_WORDS not in text and "\\S{}" not in text and UNRELIABLE not in text
    csv = pd.read_csv(io.StringIO(report(table_runs(), RESULTS, "csv", table="table1")), comment="#")
    assert csv.unreliable.isna().all()


def test_a_run_with_both_marks_gets_both(marked):
    path = marked / "runs" / f"{run_id(cfg('afd', seed=1))}.json"
    res = json.loads(path.read_text())
    res["metrics"]["violations"] = ["AA above PGD-20 on 2 images"]
    path.write_text(json.dumps(res))
    md = report(table_runs(), marked, "markdown", table="table1")
    assert f"85.03 ± 0.18‡{UNRELIABLE} (n=2)" in _rows(md)["AFD"]
    assert "- ‡: 1 run violate clean >= PGD-20 >= AA" in md and f"- {UNRELIABLE}: 1 run with an" in md


def test_csv_has_the_tripped_names_in_a_column(marked):
    csv = pd.read_csv(io.StringIO(report(table_runs(), marked, "csv", table="table1")), comment="#")
    afd = csv[(csv.Method == "AFD") & (csv.group == "CIFAR-10")]
    assert afd.unreliable.tolist() == ["grad_vanishing; pgd_aa_gap"] * 4
    assert csv[~((csv.Method == "AFD") & (csv.group == "CIFAR-10"))].unreliable.isna().all()
    text = report(table_runs(), marked, "csv", table="table1")
    assert f"# {UNRELIABLE}: 1 run with an {UNRELIABLE_WORDS}" in text


def test_latex_marks_the_cells_and_compiles(marked, tmp_path):
    tex = report(table_runs(), marked, "latex", table="table1")
    assert "85.03 $\\pm$ 0.18\\S{} (n=2)" in tex and "\\S{}: 1 run with an evaluation potentially unreliable" in tex
    assert "?" not in tex.split("\\midrule", 1)[1]  # no character the LaTeX mapping does not know
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex here: structure checked only")
    doc = tmp_path / "marked.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
                   "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n" + tex + "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


def _evals(root: Path) -> Path:
    """The fixture's two results of `bench eval`: aaaaaaaaaaaa unreliable, bbbbbbbbbbbb written before the
    indicators."""
    shutil.copytree(RESULTS / "evals", root / "evals")
    _mark(root / "evals" / "aaaaaaaaaaaa.json", ["pgd_aa_gap"])
    return root


def test_report_evals_marks_an_unreliable_evaluation_in_every_format(tmp_path, capsys):
    from bench.cli import main

    results = _evals(tmp_path / "r")
    assert main(["report", "--evals", "--results", str(results)]) == 0
    md = capsys.readouterr().out
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert f"| 81.25{UNRELIABLE} (1000) | 43.75{UNRELIABLE} (1000) | 31.00{UNRELIABLE} (200) | ok |" in rows[2]
    assert UNRELIABLE not in rows[1]  # written before the indicators: not checked, no mark
    assert (f"- {UNRELIABLE}: {UNRELIABLE_WORDS} (reliability indicators tripped):\n"
            "  - aaaaaaaaaaaa: pgd\\_aa\\_gap") in md
    assert main(["report", "--evals", "--results", str(results), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    csv = pd.read_csv(io.StringIO(out), comment="#")
    assert csv.loc[1, "unreliable"] == "pgd_aa_gap" and pd.isna(csv.loc[0, "unreliable"])
    assert csv.loc[1, "clean"] == 81.25  # the number stays a number
    assert main(["report", "--evals", "--results", str(results), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "81.25\\S{} (1000)" in tex and "\\S{}: evaluation potentially unreliable" in tex


def test_report_evals_of_clean_and_old_evaluations_has_no_mark(tmp_path, capsys):
    from bench.cli import main

    results = tmp_path / "r"
    shutil.copytree(RESULTS / "evals", results / "evals")
    _mark(results / "evals" / "aaaaaaaaaaaa.json", [])  # checked, nothing tripped
    for fmt in ("markdown", "csv", "latex"):
        assert main(["report", "--evals", "--results", str(results), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert UNRELIABLE not in out and "\\S{}" not in out and UNRELIABLE_WORDS not in out


def _demo_results(root: Path) -> list[str]:
    """Results of the demo grid's three runs: the parent written before the indicators, vAFT checked and clean,
    AFD unreliable."""
    from bench.core.store import Store
    from bench.grid.grids import get_grid
    from bench.grid.runs import expand

    ids = [run_id(c) for c in expand(get_grid("demo"))]
    store = Store(root)
    for rid, tripped in zip(ids, (None, [], TRIPPED)):
        m = {"clean": 0.5} if tripped is None else {"clean": 0.5, "indicators": _indicators(tripped),
                                                    "unreliable": tripped}
        store.write(rid, {"run_id": rid, "status": "done", "metrics": m})
    return ids


def test_status_names_the_tripped_indicators_and_counts_the_runs(tmp_path, capsys):
    from bench.cli import main

    parent, vaft, afd = _demo_results(tmp_path / "r")
    assert main(["status", "--grid", "demo", "--results", str(tmp_path / "r")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines[afd].endswith(f": done ({UNRELIABLE_WORDS}: grad_vanishing, pgd_aa_gap)")
    assert lines[vaft].endswith(": done") and lines[parent].endswith(": done")
    assert lines["3"] == f"3 done; 1 run with an {UNRELIABLE_WORDS}"


def test_status_of_a_stale_and_unreliable_run_says_both(tmp_path, capsys, monkeypatch):
    from bench.cli import main
    from bench.grid.slurm import status

    _, _, afd = _demo_results(tmp_path / "r")
    monkeypatch.setattr(status, "stale_modules", lambda res: ["methods/afd.py"] if res["run_id"] == afd else [])
    monkeypatch.setattr(status, "describe_changes", lambda changed: ", ".join(changed))
    assert main(["status", "--grid", "demo", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f": done (stale: methods/afd.py changed; {UNRELIABLE_WORDS}: grad_vanishing, pgd_aa_gap)" in out
    assert out.splitlines()[-1] == f"2 done, 1 stale; 1 run with an {UNRELIABLE_WORDS}"


def test_status_of_results_without_indicators_is_as_before(tmp_path, capsys):
    from bench.cli import main
    from bench.core.store import Store

    for rid in _demo_results(tmp_path / "r"):  # rewritten as results from before the indicators
        Store(tmp_path / "r").write(rid, {"run_id": rid, "status": "done", "metrics": {"clean": 0.5}})
    assert main(["status", "--grid", "demo", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert UNRELIABLE_WORDS not in out and out.splitlines()[-1] == "3 done"


def test_claims_verdicts_resting_on_an_unreliable_run_say_so(marked):
    from bench.report.claims import claims

    sweep = run_id(cfg("afd", alpha=0.2))
    _mark(marked / "runs" / f"{sweep}.json", ["pgd_aa_gap"])
    text = claims(table_runs() + fig4_runs(), marked)
    afd = f"AFD seed 1 (run {run_id(cfg('afd', seed=1))}: grad_vanishing; pgd_aa_gap)"
    said = f" Rests on an {UNRELIABLE_WORDS} ({UNRELIABLE}): "
    lines = text.splitlines()
    runs = next(s for s in lines if s.startswith("Runs:"))
    assert runs.endswith(f"; 2 of 18 with an {UNRELIABLE_WORDS} ({UNRELIABLE}: the verdicts that rest on them say so).")
    for start in ("- PGD-20: AFD", "- AA: AFD", "- Noise ", "- beta: ranges", "- gamma: ranges",
                  "- AFD against vAFT+D", "- AFD against vAFT+A"):
        line = next(s for s in lines if s.startswith(start))
        assert line.endswith(said + afd + "."), line
    alpha = next(s for s in lines if s.startswith("- alpha: ranges"))
    assert alpha.endswith(said + afd + f"; AFD seed 0 (run {sweep}: pgd_aa_gap).")
    # the claims' tables mark AFD's numbers as the report's tables do; vAFT (checked, clean) stays unmarked
    assert f"| AFD | 2 | 85.03 ± 0.18{UNRELIABLE} | 52.76 ± 0.08{UNRELIABLE} | 47.47 ± 0.09{UNRELIABLE} |" in text
    assert not any(UNRELIABLE in s for s in lines if s.startswith("| vAFT |"))
    # the gap and the training times rest on the per-epoch probes and the training clock: not on the evaluation
    assert not any(said in s for s in lines if "feature gap" in s or "Verdict" in s or "AFD / vAFT" in s)


def test_claims_of_old_and_clean_results_are_unchanged(marked):
    from bench.report.claims import claims

    _mark(marked / "runs" / f"{run_id(cfg('afd', seed=1))}.json", [])  # checked, nothing tripped
    text = claims(table_runs() + fig4_runs(), marked)
    assert text == claims(table_runs() + fig4_runs(), RESULTS)  # the fixture's results predate the indicators
    assert UNRELIABLE_WORDS not in text and UNRELIABLE not in text


def test_compare_verdicts_resting_on_an_unreliable_run_say_so(marked):
    from bench.report.compare import compare

    for fmt in ("markdown", "csv"):
        text = compare(table_runs(), marked, "afd", "vaft", fmt)
        marked_lines = [s for s in text.splitlines() if UNRELIABLE_WORDS in s]
        assert len(marked_lines) == 4 and all("CIFAR-10" in s and "CIFAR-100" not in s for s in marked_lines)
        assert all(f"; rests on an {UNRELIABLE_WORDS}: AFD seed 1 (run {run_id(cfg('afd', seed=1))}: "
                   "grad_vanishing; pgd_aa_gap)" in s for s in marked_lines)
        assert compare(table_runs(), RESULTS, "afd", "vaft", fmt).count(UNRELIABLE_WORDS) == 0

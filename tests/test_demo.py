"""The demo grid end to end, as a new user runs it: offline, natural pre-training -> vAFT and AFD, clean /
PGD-20 / AutoAttack, the table printed, then the same table as LaTeX and Figure 1a."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_demo_grid_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), BENCH_CACHE_DIR=str(tmp_path / "cache"))
    results = tmp_path / "results"
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "demo", "--results", str(results)],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=1800)
    seconds = time.perf_counter() - t0
    print(f"demo grid: {seconds:.0f} s")  # measured, reported with -s; the README quotes it
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    table = run.stdout[run.stdout.index("| "):]
    for row in ("Standard", "vAFT", "AFD"):
        assert row.lower() in table.lower()
    results_files = sorted((results / "runs").glob("*.json"))
    assert len(results_files) == 3
    for f in results_files:
        r = json.loads(f.read_text())
        m = r["metrics"]
        # AA is on the first 50 of the 300 images: the evaluator compares AA <= PGD-20 <= clean on the images
        # the measurements share, and records any violation
        assert r["status"] == "done" and m["violations"] == [] and r["sanity"] == "ok"
        assert 0 <= m["pgd20"] <= m["clean"] <= 1 and 0 <= m["aa"] <= 1
        assert m["n_aa"] == 50 and m["n_pgd"] == 300
        # honest models: no indicator of attack failure trips (docs/evaluation-checks.md); values shown with -s
        print(r["config"]["method"], {k: round(v["value"], 4) for k, v in m["indicators"].items()})
        assert m["unreliable"] == [], m["indicators"]
    latex = subprocess.run([sys.executable, "-m", "bench", "report", "--grid", "demo", "--format", "latex",
                            "--results", str(results)], capture_output=True, text=True, cwd=REPO, env=env)
    assert latex.returncode == 0 and "\\begin{tabular}" in latex.stdout and "\\toprule" in latex.stdout
    plot = subprocess.run([sys.executable, "-m", "bench", "plot", "--figure", "fig1", "--grid", "demo",
                           "--results", str(results), "--out", str(tmp_path / "fig")],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert plot.returncode == 0, plot.stderr
    assert list((tmp_path / "fig").glob("*.png"))

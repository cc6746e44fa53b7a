"""Methods from outside the package: the example plugin package (examples/my_method) installed into its own
folder is found through its entry point, its own test passes, and a grid file with it and vAFT runs and reports
through the public command line only; a module named by --plugin works too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from conftest import REPO

EXAMPLE = REPO / "examples" / "my_method"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """pip-installs the example package (not editable, no dependencies: afd-bench is already here) into a fresh
    target folder, and the environment that sees it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(EXAMPLE)], check=True, capture_output=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}


def _bench(env, *argv, check=True):
    out = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, env=env, capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_entry_point_plugin_is_listed_with_its_origin(installed):
    out = _bench(installed, "list").stdout
    assert "vaft_clean" in out and "from: my_method.vaft_clean (entry point of my-method)" in out
    assert "from: afd-bench" in out
    without = _bench({**os.environ, "PYTHONPATH": str(REPO)}, "list").stdout
    assert "vaft_clean" not in without


def test_the_plugins_own_test_passes(installed):
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                         cwd=EXAMPLE, env=installed, capture_output=True, text=True)
    assert out.returncode == 0 and "3 passed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.mark.slow
def test_grid_file_with_the_plugin_and_vaft_runs_and_reports(installed, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text((EXAMPLE / "grid.toml").read_text().replace("n_clean = 300", "n_clean = 100")
                    .replace("n_pgd = 300", "n_pgd = 100").replace("epochs = 15 ", "epochs = 1 "))
    results = tmp_path / "results"
    out = _bench(installed, "run", "--grid", str(grid), "--results", str(results))
    text = out.stdout.replace("\\_", "_")  # Markdown escapes underscores
    assert "vAFT" in text and "vAFT+clean (clean_weight=0.5)" in text and "vAFT+clean (clean_weight=1.0)" in text
    done = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert sorted(r["config"]["method"] for r in done) == ["standard", "vaft", "vaft_clean", "vaft_clean"]
    assert all(r["status"] == "done" for r in done)
    report = _bench(installed, "report", "--grid", str(grid), "--results", str(results)).stdout
    assert "vAFT plus a clean cross-entropy term" in report  # the grid file's caption
    assert "PGD-20" in report and "| AA" not in report  # the file's table layout: clean, PGD-20, Avg
    status = _bench(installed, "status", "--grid", str(grid), "--results", str(results)).stdout
    assert "4 done" in status


def test_plugin_named_on_the_command_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "one_off.py").write_text(
        "from dataclasses import dataclass\n"
        "from methods import get_method, register\n"
        "PGDAT = get_method('pgd_at')\n"
        "@register\n"
        "class Mine(PGDAT):\n"
        "    name = 'one_off_at'\n"
        "    summary = 'PGD-AT under another name'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BENCH_PLUGINS", "")
    assert main(["list", "--plugin", "one_off"]) == 0
    out = capsys.readouterr().out
    assert "one_off_at" in out and "from: one_off (--plugin)" in out
    assert os.environ["BENCH_PLUGINS"] == "one_off"  # child processes and SLURM jobs import it too
    assert main(["list", "--plugin", "no_such_module_here"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be imported" in err

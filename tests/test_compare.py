"""`bench compare`: one method against another per metric and model / data set, under the claims' noise rule."""
from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_report_fixtures import RESULTS, fig4_runs, table_runs  # noqa: E402

from bench.cli import main  # noqa: E402
from bench.report.claims import noise  # noqa: E402
from bench.report.compare import compare, rows  # noqa: E402


def _df(runs: list[dict]) -> pd.DataFrame:
    base = {"model": "resnet18", "dataset": "cifar10", "status": "done", "eval_sizes": (1000, 1000, 500),
            "feature_gap": math.nan, "feature_gap_se": math.nan, "feature_gap_of": "penultimate features"}
    return pd.DataFrame([{**base, **r} for r in runs])


def _runs(method: str, clean: list[float], pgd: list[float], aa: list[float], **extra) -> list[dict]:
    return [{"method": method, "seed": s, "clean": c, "pgd20": p, "aa": a, **extra}
            for s, (c, p, a) in enumerate(zip(clean, pgd, aa))]


def test_each_metric_gets_means_difference_noise_and_verdict():
    df = _df(_runs("vaft", [80.0, 81.0], [50.0, 50.4], [45.0, 45.2])
             + _runs("afd", [80.5, 81.3], [40.0, 40.2], [55.0, 55.4]))
    got = {r[1]: r for r in rows(df, "vaft", "afd")}
    assert got["Clean"][2:5] == ["80.50 ± 0.71 (2)", "80.90 ± 0.57 (2)", "-0.40"]
    nz = noise(pd.Series([80.0, 81.0]), pd.Series([80.5, 81.3]), 1000)
    assert got["Clean"][5] == f"{nz:.2f}" and got["Clean"][6] == "not distinguishable"
    assert got["PGD-20"][6] == "vAFT ahead" and got["AA"][6] == "AFD ahead"  # 10.1 points each, noise 2.2 and 3.1
    assert got["AA"][0] == "RN18 / CIFAR-10" and "feature gap" not in got  # no gap measured: no row


def test_the_feature_gap_smaller_is_ahead_and_needs_its_recorded_error():
    gap = _runs("vaft", [80.0], [50.0], [45.0], feature_gap=0.40, feature_gap_se=0.01) + \
        _runs("afd", [80.0], [50.0], [45.0], feature_gap=0.30, feature_gap_se=0.01)
    row = next(r for r in rows(_df(gap), "vaft", "afd") if r[1] == "feature gap")
    assert row[4:] == ["+0.1000", f"{math.sqrt(2) * 0.01:.4f}", "AFD ahead"]
    gap[1]["feature_gap_of"] = "f1 = D1 g (intrinsic features)"  # AFD's gap is on its own features
    row = next(r for r in rows(_df(gap), "vaft", "afd") if r[1] == "feature gap")
    assert row[6] == "not comparable: measured on penultimate features and on f1 = D1 g (intrinsic features)"
    gap[1]["feature_gap_of"] = "penultimate features"
    for r in gap:
        r["feature_gap_se"] = math.nan  # results written before the SE was recorded
    row = next(r for r in rows(_df(gap), "vaft", "afd") if r[1] == "feature gap")
    assert row[5:] == ["—", "no verdict: no test-sample error recorded"]


def test_no_autoattack_no_row_and_only_shared_settings():
    df = _df(_runs("vaft", [80.0], [50.0], [math.nan]) + _runs("afd", [81.0], [51.0], [math.nan])
             + [{"method": "afd", "seed": 0, "dataset": "cifar100", "clean": 60.0, "pgd20": 30.0, "aa": 25.0}])
    assert [r[1] for r in rows(df, "vaft", "afd")] == ["Clean", "PGD-20"]  # CIFAR-100 has no vAFT run


def test_fixture_grid_markdown_and_csv():
    md = compare(table_runs() + fig4_runs(), RESULTS, "afd", "vaft", name="fixture")
    assert md.startswith("## AFD against vAFT (grid fixture)\n")
    assert "| Model / data | Metric | AFD | vAFT | AFD − vAFT | noise | verdict |" in md
    assert ("| RN18 / CIFAR-10 | PGD-20 | 52.76 ± 0.08 (2) | 51.46 ± 0.08 (2) | +1.30 | 7.06 | not distinguishable |"
            in md)
    assert "Left out: 6 finished runs of a sweep" in md  # Figure 4's AFD variants are not AFD at its defaults
    table = list(csv.reader(io.StringIO(compare(table_runs() + fig4_runs(), RESULTS, "afd", "vaft", "csv"))))
    assert table[0][:4] == ["Model / data", "Metric", "AFD", "vAFT"]
    assert ["RN18 / CIFAR-10", "PGD-20", "52.76 ± 0.08 (2)", "51.46 ± 0.08 (2)", "+1.30", "7.06",
            "not distinguishable"] in table


def test_command_line(capsys, tmp_path):
    assert main(["compare", "--grid", "demo", "--results", str(tmp_path), "--a", "vaft", "--b", "afd"]) == 0
    out = capsys.readouterr().out
    assert "No model and data set where both have finished runs." in out
    assert "Not finished, left out: 2 of 2 runs of the two (2 missing)." in out
    # --seeds applies as for `bench run`
    assert main(["compare", "--grid", "demo", "--results", str(tmp_path), "--a", "vaft", "--b", "afd",
                 "--seeds", "3"]) == 0
    assert "6 of 6 runs of the two (6 missing)" in capsys.readouterr().out


@pytest.mark.parametrize("a,b,says", [
    ("mine", "afd", "method 'mine' is not in grid demo; its methods: standard, vaft, afd"),
    ("trades", "afd", "method 'trades' is not in grid demo"),
    ("afd", "afd", "--a and --b are both afd")])
def test_a_method_not_in_the_grid_is_one_line_exit_2(capsys, tmp_path, a, b, says):
    assert main(["compare", "--grid", "demo", "--results", str(tmp_path), "--a", a, "--b", b]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err


# -- a researcher's method beside Table 1's own runs -------------------------------------------------------------
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_method"


@pytest.fixture
def vaft_clean(monkeypatch):
    """The example plugin (examples/my_method) registered for one test, and taken out of the registry after it."""
    import importlib

    from methods import REGISTRY

    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    importlib.import_module("my_method.vaft_clean")
    yield "vaft_clean"
    REGISTRY.pop("vaft_clean", None)
    for mod in ("my_method.vaft_clean", "my_method"):
        sys.modules.pop(mod, None)


@pytest.mark.parametrize("seeds", [1, 3])
def test_the_example_table1_file_shares_table1s_vaft_and_afd_runs(vaft_clean, seeds):
    """Whatever network and recipes Table 1 uses, the file's vAFT and AFD runs (and their parents) are Table 1's:
    compared with the grid itself, not with stored ids."""
    from bench.core.config import run_id
    from bench.grid.grids import get_grid
    from bench.grid.runs import expand

    path = str(EXAMPLE / "table1_cifar10.toml")
    mine = expand(get_grid(path, seeds))
    table1 = {run_id(c) for c in expand(get_grid("table1", seeds))}
    shared = [c for c in mine if c.method != vaft_clean]
    assert {c.method for c in shared} >= {"vaft", "afd"} and len(shared) == 2 * seeds + 1  # + the natural parent
    assert {run_id(c) for c in shared} <= table1
    assert {run_id(c) for c in mine if c.method == vaft_clean}.isdisjoint(table1)
    assert {(c.model, c.dataset) for c in mine} == {(c.model, "cifar10") for c in get_grid("table1")
                                                   if c.method == "vaft" and c.dataset == "cifar10"}

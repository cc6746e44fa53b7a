"""`bench report --format html`: one self-contained page per grid (bench/report/html.py). What a reader sees in a
browser is tested in tests/test_html_browser.py; here: the committed pages regenerate byte for byte, the page holds
every table cell, flag, figure, claim and run from the same declarations as the Markdown, works offline, and the page
of a 100-run grid stays under the size docs/report.md states."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_report_fixtures as fixtures  # noqa: E402

from bench.core.config import run_id  # noqa: E402
from bench.grid.runs import expand  # noqa: E402
from bench.report.build import build  # noqa: E402
from bench.report.declarations import TABLES  # noqa: E402
from bench.report.frame import load  # noqa: E402
from bench.report.html import MAX_BYTES_100_RUNS, markdown_html, page  # noqa: E402
from bench.report.render import cell_text  # noqa: E402
from bench.report.svg import Series, chart, ticks  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
FLAGGED_ORDER = ("pgd_at", "resnet18", "cifar10", 0)  # the fixture run whose order check fails
FLAGGED_UNRELIABLE = ("vaft", "resnet18", "cifar10", 1)  # the fixture run whose indicators tripped


def fixture_results(tmp: Path) -> Path:
    """The report fixtures (tests/make_report_fixtures.py) with one run that fails the order check and one whose
    evaluation indicators tripped (metrics.unreliable), as evaluations write them."""
    out = tmp / "results"
    shutil.copytree(fixtures.RESULTS, out)
    for c in expand(fixture_runs()):
        key = (c.method, c.model, c.dataset, c.seed)
        path = out / "runs" / f"{run_id(c)}.json"
        if key in (FLAGGED_ORDER, FLAGGED_UNRELIABLE) and c.hparams == fixtures.cfg(c.method).hparams:
            res = json.loads(path.read_text())
            if key == FLAGGED_ORDER:
                res["metrics"]["violations"] = ["AA above PGD-20 on 3 images"]
            else:
                res["metrics"]["unreliable"] = ["zero_gradients"]
            path.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    return out


def fixture_runs() -> list:
    return fixtures.table_runs() + fixtures.fig4_runs()


def fixture_page(tmp: Path) -> str:
    return page(fixture_runs(), fixture_results(tmp), name="fixture", table="table1", compare="paper")


@pytest.mark.parametrize("grid", ["cpu", "cpu20"])
def test_committed_pages_regenerate_byte_for_byte(grid):
    assert page(grid, RESULTS / grid) == (RESULTS / grid / "index.html").read_text(encoding="utf-8"), (
        f"regenerate: python -m bench report --grid {grid} --results results/{grid} --format html "
        f"--out results/{grid}/index.html")


class _Parse(HTMLParser):
    """The page's tags: every element's attributes, resources it would fetch, tables' cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parsed(html: str) -> _Parse:
    p = _Parse()
    p.feed(html)
    return p


def test_the_page_is_self_contained_and_its_links_resolve(tmp_path):
    assert_self_contained(fixture_page(tmp_path))


@pytest.mark.parametrize("grid", ["cpu", "cpu20"])
def test_the_committed_pages_are_self_contained(grid):
    assert_self_contained((RESULTS / grid / "index.html").read_text(encoding="utf-8"))


def test_a_grid_without_results_has_its_page_without_figures_and_no_broken_link(tmp_path):
    html = page("demo", tmp_path)
    assert_self_contained(html)
    assert 'id="figures"' not in html and 'href="#figures"' not in html and ": missing</summary>" in html


def assert_self_contained(html: str) -> None:
    p = parsed(html)
    ids = [a["id"] for _, a in p.tags if "id" in a]
    assert len(ids) == len(set(ids)), "an id twice: a link would lead to the first only"
    for tag, a in p.tags:
        assert tag not in ("link", "iframe") and not (tag == "script" and "src" in a), (tag, a)
        src = a.get("src") or ""
        assert not src or src.startswith("data:"), src
        href = a.get("href")
        if href is not None:
            assert href.startswith("#") and href[1:] in ids, href
    assert html.count("<table") == html.count("<caption") > 0  # every table says what it holds
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html


def test_every_cell_of_the_declared_table_is_on_the_page_with_the_papers_number_and_the_difference(tmp_path):
    html = fixture_page(tmp_path)
    df = load(fixture_runs(), tmp_path / "results")
    b = build(TABLES["table1"], df, "paper")
    table = html[html.index('<table id="table-1">'):html.index("</table>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1])
    assert len(rows) == len(b.cells)
    for row, line, lab in zip(rows, b.cells, b.row_labels):
        texts = [re.sub(r"<[^>]+>", "", t) for t in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        want = list(lab) + [cell_text(c, k) for c in line for k in ("ours", "paper", "delta")]
        assert [t.replace("&amp;", "&") for t in texts] == want
    # accessible markup: a caption, scoped headings, every sortable heading says how it is sorted
    assert "<caption>" in table and 'scope="row"' in table and 'scope="colgroup"' in table
    assert table.count('aria-sort="none"') == len(b.row_header) + 3 * len(b.col_labels)


def test_cells_are_flagged_by_the_order_check_and_by_the_evaluation_indicators(tmp_path):
    html = fixture_page(tmp_path)
    order = re.findall(r'<td class="flag-order" title="([^"]*)"', html)
    unreliable = re.findall(r'<td class="flag-unreliable" title="([^"]*)"', html)
    assert order and all("order check" in t for t in order)
    assert unreliable and all("zero_gradients" in t for t in unreliable)
    # the run's own view says so too
    rid = run_id(fixtures.cfg("vaft", seed=1))
    view = html[html.index(f'<details id="run-{rid}">'):]
    assert "evaluation potentially unreliable: zero_gradients" in view[:view.index("</details>")]


def test_the_page_holds_the_figures_the_claims_and_every_run_with_its_status(tmp_path):
    html = fixture_page(tmp_path)
    assert "Figure 1a" in html and "Figure 4: AFD clean accuracy against alpha" in html
    assert "<h3>The claims, measured" in html and "<h4>1. AFD" in html
    for c in expand(fixture_runs()):
        assert f'<details id="run-{run_id(c)}">' in html
    free_at = run_id(fixtures.cfg("free_at"))
    view = html[html.index(f'<details id="run-{free_at}">'):]
    assert "failed: non-finite loss in epoch 3" in view[:view.index("</details>")]
    corrupt = run_id(fixtures.cfg("fgsm_ga"))
    assert f'id="run-{corrupt}"><summary>{corrupt}: FGSM-GA, RN18/CIFAR-10, seed 0: corrupt' in html
    missing = run_id(fixtures.cfg("atas"))
    assert f"{missing}: ATAS, RN18/CIFAR-10, seed 0: missing" in html
    # a run of many epochs has its training curves; the machine, torch and commit where its result records them
    afd = run_id(fixtures.cfg("afd"))
    view = html[html.index(f'<details id="run-{afd}">'):]
    view = view[:view.index("</details>")]
    assert "training loss per epoch" in view and "feature gap per epoch" in view and "Fixture GPU X1" in view


def test_a_stale_run_is_marked_stale(tmp_path, monkeypatch):
    import bench.grid.slurm.status as status

    results = fixture_results(tmp_path)
    afd = run_id(fixtures.cfg("afd"))
    monkeypatch.setattr(status, "stale_modules", lambda res: ["bench/train/loop.py"] if res["run_id"] == afd else [])
    html = page(fixture_runs(), results, name="fixture", table="table1")
    assert f"{afd}: AFD, RN18/CIFAR-10, seed 0: stale" in html


def test_a_run_in_progress_is_marked_running(tmp_path):
    from bench.core.store import Store

    results = fixture_results(tmp_path)
    atas = run_id(fixtures.cfg("atas"))
    with Store(results).lock(atas):  # as `bench run` holds it while the run trains
        html = page(fixture_runs(), results, name="fixture", table="table1")
    view = html[html.index(f'<details id="run-{atas}">'):]
    assert "running: locked by a process on this machine" in view[:view.index("</details>")]


@pytest.mark.slow
def test_the_cli_writes_the_page_and_refuses_it_for_evaluations(tmp_path):
    out = tmp_path / "cpu.html"
    cmd = [sys.executable, "-m", "bench", "report", "--grid", "cpu20", "--results", str(RESULTS / "cpu20"),
           "--format", "html", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    assert out.read_text(encoding="utf-8") == (RESULTS / "cpu20" / "index.html").read_text(encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "bench", "report", "--evals", "--format", "html", "--results",
                          str(fixtures.RESULTS)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_the_claims_markdown_becomes_html():
    html = markdown_html("## Head\n\nA **bold** `code` line\nand its next.\n\n| a | b \\| c |\n|:---|---:|\n"
                         "| x | 1 |\n\n- one\n  - nested\n")
    assert html.startswith("<h3>Head</h3>")
    assert "<p>A <strong>bold</strong> <code>code</code> line and its next.</p>" in html
    assert '<caption class="sr">Head</caption>' in html and '<th scope="col">b | c</th>' in html and '<th scope="row">x</th><td>1</td>' in html
    assert '<li>one</li><li class="sub">nested</li>' in html
    assert markdown_html("- a\nafter\n") == "<ul><li>a</li></ul>\n<p>after</p>"  # in the order written


def test_charts_are_deterministic_svg_with_round_ticks():
    assert ticks(0.26, 0.47) == [0.2, 0.3, 0.4, 0.5] and ticks(0, 20) == [0, 5, 10, 15, 20]
    s = [Series("a", ((1, 0.3), (2, float("nan")), (3, 0.4))), Series("b", ((1, 0.2), (2, 0.25), (3, 0.5)))]
    svg = chart(s, title="t", xlabel="epoch", ylabel="gap")
    assert svg == chart(s, title="t", xlabel="epoch", ylabel="gap") and svg.startswith("<svg")
    assert svg.count("<polyline") == 1  # a's two points are apart (NaN between): markers only, b one line
    assert chart([Series("none", ((1, float("nan")),))], title="t", xlabel="x", ylabel="y") == ""
    banded = chart([Series("a", ((1, 0.3), (2, 0.35)), (0.01, 0.02))], title="t", xlabel="x", ylabel="y")
    assert banded.count("<polygon") == 1 and "<polygon" not in svg  # the ± band where errors are given


def runs_100() -> list:
    methods = ("vaft", "afkd", "arrest", "afd", "vaft_d", "vaft_a", "rift", "pgd_at", "trades", "standard")
    return [fixtures.cfg(m, seed=s) for m in methods for s in range(10)]


def test_the_page_of_a_100_run_grid_stays_under_the_stated_size(tmp_path, monkeypatch):
    monkeypatch.setattr(fixtures, "RESULTS", tmp_path)
    runs = runs_100()
    fixtures.write(runs)
    assert len(expand(runs)) == 100
    start = time.perf_counter()
    html = page(runs, tmp_path, name="hundred")
    seconds = time.perf_counter() - start
    size = len(html.encode())
    print(f"\n100-run page: {size / 1e6:.2f} MB in {seconds:.1f} s")
    assert size < MAX_BYTES_100_RUNS
    assert f"{MAX_BYTES_100_RUNS / 1e6:g} MB" in (REPO / "docs" / "report.md").read_text()

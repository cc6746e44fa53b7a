"""The HTML pages in a real browser: headless Chromium (the Debian packages chromium and chromium-driver; .ci/run
installs them), driven with Selenium. The committed pages of results/cpu and results/cpu20 and a page of the report
fixtures (with a cell flagged by the order check and one by the evaluation indicators) are opened as a reader opens
them, from the file system, and checked for what the reader sees: every table cell with its value, sorting, the
flags' look, links and images, a run's view, no console errors, and no sideways scrolling of the page on a phone."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_html import RESULTS, fixture_page, fixture_runs  # noqa: E402

from bench.report.frame import load  # noqa: E402
from bench.report.render import cell_text  # noqa: E402
from bench.report.tables import built_tables  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow,  # a browser starts: about half a minute for the file
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                 reason="no chromium / chromedriver on PATH (Debian: apt-get install chromium "
                                        "chromium-driver)")]
PHONE = 375  # px: the narrowest common phone


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """name -> (file, the tables the page was made from)."""
    tmp = tmp_path_factory.mktemp("html")
    fixture = tmp / "fixture.html"
    fixture.write_text(fixture_page(tmp), encoding="utf-8")
    out = {"fixture": (fixture, built_tables(load(fixture_runs(), tmp / "results"), "table1", "paper"))}
    for grid in ("cpu", "cpu20"):
        out[grid] = (RESULTS / grid / "index.html", built_tables(load(grid, RESULTS / grid), grid, "paper"))
    return out


def open_page(browser, path: Path, width: int = 1200) -> None:
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600})
    browser.get(path.resolve().as_uri())
    browser.get_log("browser")  # what loading the page logged is read in test_no_console_errors


PAGES = ["fixture", "cpu", "cpu20"]


@pytest.mark.parametrize("name", PAGES)
def test_no_console_errors(browser, pages, name):
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(pages[name][0].resolve().as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []


@pytest.mark.parametrize("name", PAGES)
def test_every_table_cell_is_shown_with_its_value(browser, pages, name):
    from selenium.webdriver.common.by import By

    path, tables = pages[name]
    open_page(browser, path)
    for i, b in enumerate(tables, 1):
        table = browser.find_element(By.ID, f"table-{i}")
        assert table.find_element(By.TAG_NAME, "caption").text.strip() == b.caption.strip()
        kinds = ("ours", "paper", "delta") if b.compare else ("ours",)
        shown = [[c.text for c in tr.find_elements(By.CSS_SELECTOR, "th, td")]
                 for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        want = [list(lab) + [cell_text(c, k) for c in line for k in kinds] for lab, line in zip(b.row_labels, b.cells)]
        assert shown == want
    assert not browser.find_elements(By.ID, f"table-{len(tables) + 1}")


def column(table, col: int) -> list[str]:
    from selenium.webdriver.common.by import By

    return [tr.find_elements(By.CSS_SELECTOR, "th, td")[col].get_attribute("data-v")
            for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


@pytest.mark.parametrize("name", ["fixture", "cpu"])
def test_sorting_by_a_column_reorders_the_rows(browser, pages, name):
    from selenium.webdriver.common.by import By

    open_page(browser, pages[name][0])
    for ident in ("table-1", "runs-table"):
        table = browser.find_element(By.ID, ident)
        heads = table.find_elements(By.CSS_SELECTOR, "thead th[data-col]")
        # the first column of numbers (PGD-20 of table 1 when it compares: ours; the runs' training time)
        th = next(h for h in heads if all(v == "" or _is_num(v) for v in column(table, int(h.get_attribute("data-col"))))
                  and len(set(column(table, int(h.get_attribute("data-col"))))) > 2)
        col = int(th.get_attribute("data-col"))
        before = [tr.text for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        th.find_element(By.TAG_NAME, "button").click()
        assert th.get_attribute("aria-sort") == "ascending"
        values = column(table, col)
        numbers = [float(v) for v in values if v]
        assert numbers == sorted(numbers) and values[len(numbers):] == [""] * (len(values) - len(numbers))
        th.find_element(By.TAG_NAME, "button").click()
        assert th.get_attribute("aria-sort") == "descending"
        numbers = [float(v) for v in column(table, col) if v]
        assert numbers == sorted(numbers, reverse=True)
        after = [tr.text for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert sorted(after) == sorted(before) and after != before


def _is_num(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def test_flagged_cells_look_flagged(browser, pages):
    from selenium.webdriver.common.by import By

    open_page(browser, pages["fixture"][0])
    plain = browser.find_element(By.CSS_SELECTOR, "#table-1 tbody td:not([class])")
    order = browser.find_element(By.CSS_SELECTOR, "#table-1 td.flag-order")
    unreliable = browser.find_element(By.CSS_SELECTOR, "#table-1 td.flag-unreliable")
    looks = [(c.value_of_css_property("background-color"), c.value_of_css_property("outline-style"))
             for c in (plain, order, unreliable)]
    assert len(set(looks)) == 3, looks
    assert "zero_gradients" in unreliable.get_attribute("title") and "order check" in order.get_attribute("title")


@pytest.mark.parametrize("name", PAGES)
def test_every_link_and_image_resolves(browser, pages, name):
    open_page(browser, pages[name][0])
    broken = browser.execute_script("""
        var bad = [];
        document.querySelectorAll('a[href]').forEach(function (a) {
          var h = a.getAttribute('href');
          if (h.charAt(0) !== '#' || !document.getElementById(h.slice(1))) bad.push(h); });
        document.querySelectorAll('img').forEach(function (i) {
          if (!i.complete || i.naturalWidth === 0) bad.push(i.src.slice(0, 40)); });
        return bad;""")
    assert broken == []
    if name != "fixture":  # the committed grids' figures, drawn
        assert browser.execute_script("return document.querySelectorAll('#figures svg').length") >= 1


@pytest.mark.parametrize("name", ["fixture", "cpu20"])
def test_a_runs_view_opens_from_its_link(browser, pages, name):
    from selenium.webdriver.common.by import By

    open_page(browser, pages[name][0])
    link = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody a")[-1]
    rid = link.text
    view = browser.find_element(By.ID, f"run-{rid}")
    assert view.get_attribute("open") is None and not view.find_element(By.TAG_NAME, "dl").is_displayed()
    browser.execute_script("arguments[0].scrollIntoView()", link)
    link.click()
    assert view.get_attribute("open") is not None
    facts = view.find_element(By.TAG_NAME, "dl")
    assert facts.is_displayed() and "Status" in facts.text and "Ran on" in facts.text
    assert view.find_elements(By.CSS_SELECTOR, "svg.chart")  # its training curves
    view.find_element(By.TAG_NAME, "summary").click()  # and it closes as it opened
    assert view.get_attribute("open") is None


@pytest.mark.parametrize("name", PAGES)
def test_no_sideways_scrolling_at_phone_width(browser, pages, name):
    open_page(browser, pages[name][0], width=PHONE)
    widths = browser.execute_script("""
        document.querySelectorAll('details').forEach(function (d) { d.open = true; });
        return [document.documentElement.scrollWidth, window.innerWidth];""")
    assert widths[0] <= widths[1] == PHONE, widths
    # wide tables scroll inside their own container, not the page
    outside = browser.execute_script("""
        return Array.prototype.filter.call(document.querySelectorAll('table'), function (t) {
          var box = t.parentElement; return !(box.classList.contains('scroll')
            && getComputedStyle(box).overflowX === 'auto'); }).length;""")
    assert outside == 0


def test_run_ids_sort_as_text(browser, pages):
    """A run id of digits and one e (2205e114db19) is text, not a number in exponent notation."""
    from selenium.webdriver.common.by import By

    open_page(browser, pages["cpu"][0])
    table = browser.find_element(By.ID, "runs-table")
    table.find_element(By.CSS_SELECTOR, 'thead th[data-col="0"] button').click()
    ids = column(table, 0)
    assert "2205e114db19" in ids and ids == sorted(ids)

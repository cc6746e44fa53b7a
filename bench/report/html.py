"""``bench report --format html``: one self-contained page per grid (no server, no network: styles, script and
figures are inline), from the same loading (``frame.load``) and table declarations (``tables.built_tables``) as the
Markdown, LaTeX and CSV. It holds every table of the grid (the paper's numbers and the differences beside ours where
the table names them), sortable by any column; Figure 1a and Figure 4 drawn as inline SVG from the results (Figure 3,
which needs the data and a checkpoint, where ``bench plot`` left its PNG); the claims block; and per run its status,
times, peak memory, machine, evaluation, config and training curves. The bytes depend on the result files only (no
clock, no random ids), so committed pages regenerate byte for byte.
"""
from __future__ import annotations

import base64
import json
import math
import re
import statistics
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.config import RunConfig, run_id, to_dict
from bench.core.store import CorruptFile, Store
from bench.grid.grids import get_grid
from bench.grid.runs import expand
from bench.grid.slurm import grid_status
from bench.report.build import Built, Cell
from bench.report.claims import claims
from bench.report.frame import load
from bench.report.labels import DATASET_LABELS, MODEL_LABELS, SANITY, UNRELIABLE, method_label
from bench.report.plots import FIG1_METHODS, gap_curves, hparam_sweeps
from bench.report.render import cell_text
from bench.report.svg import Series, chart
from bench.report.tables import built_tables

# The size the docs promise for the page of a 100-run grid (docs/report.md; tests/test_html.py holds it).
MAX_BYTES_100_RUNS = 1_000_000
ORDER_NOTE = f"{SANITY} order check: a run of this cell violates clean >= PGD-20 >= AA (gradient masking or a bug)"
UNRELIABLE_NOTE = "evaluation potentially unreliable: "

STYLE = """
:root{--fg:#1b1b1b;--muted:#555;--line:#ccc;--order:#fbd5d2;--unrel:#ffe9a8}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0 auto;
max-width:1100px;padding:0 12px 48px}
h1{font-size:1.5em;margin:.8em 0 .3em}h2{margin-top:1.6em;border-bottom:1px solid var(--line)}
nav a{margin-right:1em}code,pre{font-size:.9em}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:8px;max-height:24em;overflow-y:auto}
.scroll{overflow-x:auto;max-width:100%;margin:.6em 0;position:relative}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-size:.95em;padding-bottom:.4em;max-width:60em}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th[scope=row],td.l{text-align:left}thead th{border-bottom:2px solid var(--line);vertical-align:bottom}
tr.rule>*{border-top:2px solid var(--line)}table.sorted tr.rule>*{border-top:none}
th button{font:inherit;font-weight:bold;background:none;border:0;padding:0;cursor:pointer;color:inherit}
th[aria-sort=ascending] button::after{content:" \\25B2"}th[aria-sort=descending] button::after{content:" \\25BC"}
td.paper,td.delta{color:var(--muted)}
td.flag-order{background:var(--order)}td.flag-unreliable{background:var(--unrel);outline:2px dashed #b8860b;
outline-offset:-2px}
.key span{padding:0 6px;margin-right:6px}.key .flag-order{background:var(--order)}
.key .flag-unreliable{background:var(--unrel);outline:2px dashed #b8860b}
ul.notes{font-size:.9em;color:var(--muted)}ul.notes li.sub{margin-left:1.5em;list-style:circle}
figure{margin:1em 0}.charts{display:flex;flex-wrap:wrap;gap:8px}.charts svg{flex:1 1 300px}
svg.chart{width:100%;max-width:520px;height:auto;font-size:11px}svg.chart text{fill:var(--fg);stroke:none}
figure img{max-width:100%;height:auto}figcaption{font-size:.9em;color:var(--muted)}
details{border:1px solid var(--line);border-radius:4px;margin:.4em 0;padding:0 8px}
summary{cursor:pointer;padding:6px 0;overflow-wrap:anywhere}details[open] summary{border-bottom:1px solid #eee}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:.6em 0}dt{font-weight:bold}
dd{margin:0;overflow-wrap:anywhere}
.st-failed,.st-corrupt{color:#b00020}.st-stale,.st-running,.st-queued,.st-missing,.st-unknown{color:#8a5a00}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
@media (max-width:600px){body{font-size:14px}th,td{padding:2px 5px}}
"""

# Sort a table by the clicked column (numbers by value, text alphabetically, empty cells last; Number, not
# parseFloat, which reads a run id such as 2205e114db19 as a number) and say so in aria-sort; open a run's details
# when a link leads to it.
SCRIPT = """
function sortBy(th){var table=th.closest('table'),col=+th.dataset.col,body=table.tBodies[0];
var dir=th.getAttribute('aria-sort')==='ascending'?'descending':'ascending';
table.querySelectorAll('th[aria-sort]').forEach(function(h){h.setAttribute('aria-sort','none')});
th.setAttribute('aria-sort',dir);var rows=Array.prototype.slice.call(body.rows);
function key(r){var c=r.cells[col];return c?c.getAttribute('data-v'):''}
var numeric=rows.every(function(r){var k=key(r);return k===''||!isNaN(Number(k))});
rows.sort(function(a,b){var x=key(a),y=key(b);if(x===''||y==='')return (x==='')-(y==='');
var d=numeric?Number(x)-Number(y):x.localeCompare(y);return dir==='ascending'?d:-d});
rows.forEach(function(r){body.appendChild(r)});table.classList.add('sorted')}
document.querySelectorAll('th[data-col] button').forEach(function(b){
b.addEventListener('click',function(){sortBy(b.parentNode)})});
function openTarget(){var id=decodeURIComponent(location.hash.slice(1));var el=id&&document.getElementById(id);
if(el&&el.tagName==='DETAILS'){el.open=true;el.scrollIntoView()}}
window.addEventListener('hashchange',openTarget);openTarget();
"""


def page(grid: str | list[RunConfig], results: str | Path = "results", seeds: int = 1, *, name: str | None = None,
         table: str | None = None, compare: str | None = None) -> str:
    """The HTML page of a grid (a registered grid's or grid file's name, or its runs as ``bench run`` expands
    them): ``table`` selects the tables as for ``report``; the paper's numbers stand beside ours wherever a table
    names them (a grid file's table: with ``compare="paper"``)."""
    name = name or (grid if isinstance(grid, str) else "grid")
    runs = expand(get_grid(grid, seeds) if isinstance(grid, str) else grid)
    df = load(runs, results)
    results = Path(results)
    store = Store(results)
    files = {rid: _read(store, rid) for rid in df.run_id}
    unreliable = _unreliable(df, files)
    which = table or (grid if isinstance(grid, str) else None)
    if compare is None and not str(which).endswith(".toml"):
        compare = "paper"  # the paper's numbers beside ours wherever the table names them
    tables = built_tables(df, which, compare)
    statuses = {st.run_id: st for st in grid_status(runs, results, expand_parents=False)}
    sections = {"Tables": _tables_section(tables, df, unreliable), "Figures": _figures_section(df, results, name),
                "Claims": _claims_section(runs, results, name),
                "Runs": _runs_section(runs, df, files, statuses, unreliable)}
    sections = {k: v for k, v in sections.items() if v}  # a grid without figures has no section (nor link) for them
    counts: dict[str, int] = {}
    for st in statuses.values():
        counts[st.state] = counts.get(st.state, 0) + 1
    title = f"Grid {name}: results"
    head = (f'<header><h1>{escape(title)}</h1><p>{len(runs)} runs: '
            + ", ".join(f"{n} {escape(s)}" for s, n in counts.items())
            + '.</p><nav aria-label="sections">' + "".join(f'<a href="#{k.lower()}">{k}</a>' for k in sections)
            + "</nav></header>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>{head}<main>\n"
            + "\n".join(sections.values()) + f"\n</main><script>{SCRIPT}</script></body></html>\n")


def _read(store: Store, rid: str) -> dict | None:
    try:
        return store.read(rid)
    except CorruptFile:
        return None  # the frame says so (status "corrupt", with the reason)


def _unreliable(df: pd.DataFrame, files: dict[str, dict | None]) -> dict[str, str]:
    """Per run, the evaluation indicators that tripped ("; "-joined): the frame's column where it has one, else
    what the result file's metrics record ("" where nothing tripped)."""
    if "unreliable" in df:
        return {r: v if isinstance(v, str) else "" for r, v in zip(df.run_id, df["unreliable"])}
    out = {}
    for rid, res in files.items():
        names = ((res or {}).get("metrics") or {}).get("unreliable") or []
        out[rid] = "; ".join(names) if isinstance(names, list) else str(names)
    return out


# -- tables ---------------------------------------------------------------------------------------------------
def _tables_section(tables: list[Built], df: pd.DataFrame, unreliable: dict[str, str]) -> str:
    key = ('<p class="key">Marks: <span class="flag-order">' + escape(SANITY) + '</span>order check violated '
           '<span class="flag-unreliable">' + escape(UNRELIABLE) + '</span>evaluation potentially unreliable (hover a cell for the reason). '
           'Click a column heading to sort by it.</p>')
    parts = [f'<section id="tables" aria-labelledby="h-tables"><h2 id="h-tables">Tables</h2>{key}']
    for i, b in enumerate(tables, 1):
        parts.append(f'<div class="scroll">{table_html(b, df, unreliable, f"table-{i}")}</div>{_notes(b.notes)}')
    return "\n".join(parts) + "</section>"


def table_html(b: Built, df: pd.DataFrame, unreliable: dict[str, str], ident: str) -> str:
    """One built table as accessible, sortable HTML: the caption, column headings with scope and aria-sort, row
    headings, and per cell its value (``data-v``: what sorting compares) and its flags."""
    nlab, kinds = len(b.row_header), (("ours", "paper", "delta") if b.compare else ("ours",))
    head = []
    if b.groups:
        head.append(f'<tr><td colspan="{nlab}"></td>' + "".join(
            f'<th scope="colgroup" colspan="{span * len(kinds)}">{escape(g)}</th>' for g, span in b.groups) + "</tr>")
    labels = _column_labels(b)
    if b.compare:
        # under a group's heading, the column's own label (the group is the row above)
        head.append(f'<tr><td colspan="{nlab}"></td>' + "".join(
            f'<th scope="colgroup" colspan="3">{escape(c if not b.groups else own)}</th>'
            for c, own in zip(labels, b.col_labels)) + "</tr>")
    leaf = [_sort_th(h, i, left=True, hidden="" if h else "row") for i, h in enumerate(b.row_header)]
    for c in labels:
        for kind in kinds:
            text = {"ours": "ours" if b.compare else c, "paper": "paper", "delta": "Δ"}[kind]
            leaf.append(_sort_th(text, len(leaf), hidden=f"{c} " if b.compare else ""))
    head.append("<tr>" + "".join(leaf) + "</tr>")
    body = []
    for i, (lab, line) in enumerate(zip(b.row_labels, b.cells)):
        cls = ' class="rule"' if i in b.rules else ""
        cells = [f'<th scope="row" data-v="{escape(x, True)}">{escape(x)}</th>' for x in lab]
        cells += [_td(c, kind, df, unreliable) for c in line for kind in kinds]
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return (f'<table id="{ident}"><caption>{escape(b.caption.strip())}</caption><thead>' + "".join(head)
            + "</thead><tbody>" + "\n".join(body) + "</tbody></table>")


def _column_labels(b: Built) -> list[str]:
    spans = [g for g, span in b.groups for _ in range(span)] or [""] * len(b.col_labels)
    return [f"{g} {c}".strip() for g, c in zip(spans, b.col_labels)]


def _sort_th(text: str, col: int, *, left: bool = False, hidden: str = "") -> str:
    style = ' style="text-align:left"' if left else ""
    sr = f'<span class="sr">{escape(hidden)}</span>' if hidden else ""
    return (f'<th scope="col" data-col="{col}" aria-sort="none"{style}><button type="button">{sr}{escape(text)}'
            "</button></th>")


def _td(c: Cell, kind: str, df: pd.DataFrame, unreliable: dict[str, str]) -> str:
    text = escape(cell_text(c, kind))
    value = {"ours": c.mean if c.n else math.nan, "paper": c.paper,
             "delta": math.nan if (c.n == 0 or c.no_delta) else c.mean - c.paper}[kind]
    v = "" if math.isnan(value) else f"{value:.6g}"
    classes, why = [] if kind == "ours" else [kind], []
    if kind == "ours":
        if c.mark == "best":
            text = f"<strong>{text}</strong>"
        elif c.mark == "second":
            text = f"<u>{text}</u>"
        if c.flag == SANITY:
            classes.append("flag-order")
            why.append(ORDER_NOTE)
        tripped = sorted({n for rid in df.loc[c.values.index, "run_id"] for n in unreliable.get(rid, "").split("; ")
                          if n})
        if tripped:
            classes.append("flag-unreliable")
            why.append(UNRELIABLE_NOTE + ", ".join(tripped))
    cls = f' class="{" ".join(classes)}"' if classes else ""
    title = f' title="{escape("; ".join(why), True)}"' if why else ""
    return f'<td{cls}{title} data-v="{v}">{text}</td>'


def _notes(notes: list[str]) -> str:
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f'<li class="sub">{escape(n.strip())}</li>' if n.startswith("\t")
                                          else f"<li>{escape(n)}</li>" for n in notes) + "</ul>"


# -- figures --------------------------------------------------------------------------------------------------
def _figures_section(df: pd.DataFrame, results: Path, name: str) -> str:
    """Figure 1a and Figure 4 where the grid's results have them (drawn here), Figure 3 where ``bench plot`` left
    its PNG (it needs the data and a checkpoint, not only the results); nothing when the grid has none."""
    figs = [f for f in (_fig1(df), _fig4(df), _fig3(results, name)) if f]
    if not figs:
        return ""
    return '<section id="figures" aria-labelledby="h-figures"><h2 id="h-figures">Figures</h2>' + "".join(figs) + \
        "</section>"


def _fig1(df: pd.DataFrame) -> str:
    """Figure 1a: each fine-tuning method's feature gap after every epoch, the mean over its seeds, with a band of
    ±1 SE: the larger of the seed SE (std / √k) and the mean test-sample SE, as ``bench plot --figure fig1`` draws."""
    series = []
    for method, d in gap_curves(df, FIG1_METHODS).items():
        gaps: dict[int, list[float]] = {}
        ses: dict[int, list[float]] = {}
        for curve, errors in zip(d["curves"], d["ses"]):
            for (epoch, gap), (_, se) in zip(curve, errors):
                gaps.setdefault(int(epoch), []).append(float(gap))
                if se is not None:
                    ses.setdefault(int(epoch), []).append(float(se))
        if len(gaps) < 2:
            continue
        epochs = sorted(gaps)
        seed_se = [statistics.stdev(gaps[e]) / math.sqrt(len(gaps[e])) if len(gaps[e]) > 1 else 0.0 for e in epochs]
        test_se = [statistics.fmean(ses[e]) if ses.get(e) else 0.0 for e in epochs]
        series.append(Series(method_label(method), tuple((e, statistics.fmean(gaps[e])) for e in epochs),
                             tuple(max(a, b) for a, b in zip(seed_se, test_se))))
    if not series:
        return ""
    svg = chart(series, title="Figure 1a: feature gap per epoch", xlabel="fine-tuning epoch",
                ylabel="feature gap (L∞)")
    return (f"<figure>{svg}<figcaption>Figure 1a: the feature gap (mean L∞ distance between the features of clean "
            "and PGD-20 test images that each method classifies from) after every fine-tuning epoch, the mean over "
            "seeds; the band is ±1 SE (the larger of the seed-to-seed and the test-sample error).</figcaption>"
            "</figure>")


def _fig4(df: pd.DataFrame) -> str:
    """Figure 4: AFD's clean and PGD-20 accuracy against each swept hyperparameter (the others at defaults)."""
    svgs = []
    for hp, tab in hparam_sweeps(df).items():
        if len(tab) < 2:
            continue
        ticks = [(i, f"{float(v):g}") for i, v in enumerate(tab.index)]
        # one chart per accuracy: on a shared axis, a change of half a point would be flat
        svgs += [chart([Series(label, tuple((i, float(m)) for i, m in enumerate(tab[(key, "mean")])))],
                       title=f"Figure 4: AFD {label} accuracy against {hp}", xlabel=hp,
                       ylabel=f"{label} accuracy (%)", xticks=ticks)
                 for key, label in (("clean", "clean"), ("pgd20", "PGD-20"))]
    if not svgs:
        return ""
    return (f'<figure><div class="charts">{"".join(svgs)}</div><figcaption>Figure 4: AFD\'s clean and PGD-20 '
            "accuracy (%) against each hyperparameter, the other two at their defaults (mean over seeds; the claims "
            "below state the noise).</figcaption></figure>")


def _fig3(results: Path, name: str) -> str:
    png = results / "figures" / f"fig3_{Path(name).stem}.png"
    if not png.is_file():
        return ""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="Figure 3: t-SNE of PGD-20 adversarial features '
            'before and after disentanglement"><figcaption>Figure 3, as <code>bench plot --figure fig3</code> drew '
            "it.</figcaption></figure>")


# -- the claims -----------------------------------------------------------------------------------------------
def _claims_section(runs: list[RunConfig], results: Path, name: str) -> str:
    return ('<section id="claims" aria-labelledby="h-claims"><h2 id="h-claims">Claims</h2>'
            + markdown_html(claims(runs, results, name=name)) + "</section>")


def markdown_html(text: str) -> str:
    """The Markdown the claims block is written in (headings, paragraphs, lists, tables, **bold**, `code`) as
    HTML; its headings one level below the page's sections, a table captioned by the heading above it."""
    out, para, rows, items = [], [], [], []
    heading = ""

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(para) + "</p>")
        if rows:
            out.append(_md_table(rows, heading))
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
        para.clear(), rows.clear(), items.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            if not rows:
                flush()
            rows.append(line)
            continue
        item = line.lstrip().startswith("- ")
        if rows or not line.strip() or line.startswith("#") or (item and para) or (items and not item):
            flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)
            heading = _inline(line.lstrip("#").strip())
            out.append(f"<h{level}>{heading}</h{level}>")
        elif item:
            sub = ' class="sub"' if line.startswith(" ") else ""
            items.append(f"<li{sub}>{_inline(line.lstrip()[2:])}</li>")
        elif line.strip():
            para.append(_inline(line))
    flush()
    return "\n".join(out)


def _md_table(rows: list[str], caption: str) -> str:
    """A Markdown table as HTML: its first column the row headings; the caption (the heading above it, which a
    sighted reader has just read) for screen readers only."""
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]] for r in rows]
    head, body = cells[0], [r for r in cells[1:] if not all(set(c) <= set(":-") for c in r)]
    return (f'<div class="scroll"><table><caption class="sr">{caption}</caption><thead><tr>' + "".join(f'<th scope="col">{_inline(c)}</th>' for c in head)
            + "</tr></thead><tbody>" + "".join("<tr>" + "".join(
                (f'<th scope="row">{_inline(c)}</th>' if j == 0 else f"<td>{_inline(c)}</td>") for j, c in enumerate(r))
                + "</tr>" for r in body) + "</tbody></table></div>")


def _inline(s: str) -> str:
    s = escape(s, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"(?<!\\)\*\*(.+?)(?<!\\)\*\*", r"<strong>\1</strong>", s)
    s = s.replace("&lt;u&gt;", "<u>").replace("&lt;/u&gt;", "</u>")
    return re.sub(r"\\([|*_])", r"\1", s)


# -- the runs -------------------------------------------------------------------------------------------------
RUN_COLUMNS = ("Run", "Method", "Model", "Data", "Seed", "Status", "Training", "Wall time", "Peak memory (MiB)",
               "Ran on")
LEFT = ' class="l"'  # a text column, aligned left
ACCURACIES = (("acc", "accuracy"), ("clean_acc", "clean accuracy"), ("adv_acc", "adversarial accuracy"))


def _runs_section(runs: list[RunConfig], df: pd.DataFrame, files: dict[str, dict | None], statuses: dict,
                  unreliable: dict[str, str]) -> str:
    """Every run (parents included) in a sortable table, and per run a view that opens: its status, times, peak
    memory, machine, evaluation, training curves and config."""
    rows = df.set_index("run_id")
    head = "".join(_sort_th(c, i, left=i < 4) for i, c in enumerate(RUN_COLUMNS))
    body, views = [], []
    for cfg in runs:
        rid = run_id(cfg)
        r, res, st = rows.loc[rid], files.get(rid), statuses[rid]
        device = r.device_name if isinstance(r.device_name, str) else ""  # None / NaN where not recorded
        peaks = [v for v in (r.peak_train_bytes, r.peak_eval_bytes) if not math.isnan(v)]
        peak = max(peaks) if peaks else math.nan  # the larger of training's and evaluation's
        cells = [(f'<a href="#run-{rid}">{rid}</a>', rid), (escape(method_label(cfg.method)), cfg.method),
                 (escape(MODEL_LABELS.get(cfg.model, cfg.model)), cfg.model),
                 (escape(DATASET_LABELS.get(cfg.dataset, cfg.dataset)), cfg.dataset), (str(cfg.seed), cfg.seed),
                 (f'<span class="st-{st.state}">{escape(st.state)}</span>', st.state),
                 (_duration(r.train_seconds), r.train_seconds), (_duration(r.wall_seconds), r.wall_seconds),
                 ("—" if math.isnan(peak) else f"{peak / 2**20:.0f}", peak),
                 (escape(device or "—"), device)]
        body.append("<tr>" + "".join(
            (f'<th scope="row" data-v="{escape(str(v), True)}">{t}</th>' if i == 0 else
             f'<td{LEFT if i < 6 or i == 9 else ""} data-v="{_sort_value(v)}">{t}</td>')
            for i, (t, v) in enumerate(cells)) + "</tr>")
        views.append(_run_view(cfg, rid, r, res, st, unreliable.get(rid, "")))
    table = (f'<div class="scroll"><table id="runs-table"><caption>Every run of the grid, parents included; a run\'s '
             f"link opens its view below. Times and peak memory as its result records them.</caption><thead><tr>"
             f"{head}</tr></thead><tbody>" + "\n".join(body) + "</tbody></table></div>")
    return ('<section id="runs" aria-labelledby="h-runs"><h2 id="h-runs">Runs</h2>' + table + "\n"
            + "\n".join(views) + "</section>")


def _sort_value(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return escape(str(v), True)


def _duration(s: float) -> str:
    if not isinstance(s, float) or math.isnan(s):
        return "—"
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h"


def _status_text(st: Any) -> str:
    if st.state == "stale":
        return f"done, stale: {st.reason} since it ran (`bench run --rerun stale` re-runs it)"
    return st.state + (f": {st.reason}" if st.reason else "")


def _run_view(cfg: RunConfig, rid: str, r: pd.Series, res: dict | None, st: Any, tripped: str) -> str:
    """One run's details element: what it is, how it went, where it ran, how it was evaluated, its curves."""
    res = res or {}
    summary = (f"{rid}: {method_label(cfg.method)}, {MODEL_LABELS.get(cfg.model, cfg.model)}/"
               f"{DATASET_LABELS.get(cfg.dataset, cfg.dataset)}, seed {cfg.seed}: {st.state}")
    facts = [("Status", escape(_status_text(st)))]
    if cfg.parent is not None:
        facts.append(("Parent", f'<a href="#run-{run_id(cfg.parent)}">{run_id(cfg.parent)}</a> '
                                f"({escape(method_label(cfg.parent.method))})"))
    facts += [("Time", escape(_times(r))), ("Peak memory", escape(_memory(r))),
              ("Ran on", escape(_machine(r, res))), ("Evaluated", escape(_evaluation(cfg, r, res, tripped)))]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)  # each value escaped above
    config = to_dict(cfg)
    if cfg.parent is not None:
        config["parent"] = run_id(cfg.parent)  # the parent's own view has its config
    return (f'<details id="run-{rid}"><summary>{escape(summary)}</summary><dl>{dl}</dl>{_curves(r.epoch_log)}'
            f"<pre>{escape(json.dumps(config, indent=1, sort_keys=True))}</pre></details>")


def _times(r: pd.Series) -> str:
    parts = [f"training {_duration(r.train_seconds)}"]
    if not math.isnan(r.seconds_per_epoch):
        parts.append(f"{r.seconds_per_epoch:.1f} s per epoch")
    if not math.isnan(r.eval_seconds):
        parts.append(f"final evaluation {_duration(r.eval_seconds)}")
    if not math.isnan(r.wall_seconds):
        parts.append(f"wall time {_duration(r.wall_seconds)}")
    return ", ".join(parts) if not math.isnan(r.train_seconds) else "— (not finished)"


def _memory(r: pd.Series) -> str:
    parts = [f"{label} {r[f'peak_{k}_bytes'] / 2**20:.0f} MiB" + (f" ({r[f'peak_{k}_of']})"
                                                               if isinstance(r[f"peak_{k}_of"], str) else "")
             for k, label in (("train", "training"), ("eval", "evaluation")) if not math.isnan(r[f"peak_{k}_bytes"])]
    return ", ".join(parts) or "— (not recorded)"


def _machine(r: pd.Series, res: dict) -> str:
    if not res:
        return "—"
    versions = res.get("versions") or {}
    commit = res.get("git") or "unknown"
    name = r.device_name if isinstance(r.device_name, str) else res.get("device", "?")
    return (f"{name} ({res.get('device', '?')}), torch "
            f"{versions.get('torch', '?')}, commit {commit}" + (" with uncommitted changes" if res.get("git_dirty")
                                                                  else "")
            + (f", {res['precision_effective']}" if res.get("precision_effective") else ""))


def _evaluation(cfg: RunConfig, r: pd.Series, res: dict, tripped: str) -> str:
    ev, m = cfg.eval, res.get("metrics") or {}
    eps = cfg.eps * 255
    how = (f"clean on {ev.n_clean} test images, PGD-{ev.pgd_steps} (ε = {eps:.3g}/255, step {ev.pgd_step_size:g}) on "
           f"{ev.n_pgd}, AutoAttack on {ev.n_aa}")
    if m.get("eval_layout"):
        how += f"; layout {m['eval_layout']}"
    if res.get("status") == "done":
        how += f"; clean {r.clean:.2f}%, PGD-20 {r.pgd20:.2f}%, AA {r.aa:.2f}%"
        how += f"; order check: {r.violations}" if isinstance(r.violations, str) and r.violations else \
            "; order check passed"
    if tripped:
        how += f"; {UNRELIABLE_NOTE}{tripped}"
    return how


def _curves(log: Any) -> str:
    """Per-epoch training curves (loss, accuracies, feature gap) where the run logged two epochs or more."""
    log = [e for e in (log if isinstance(log, list) else []) if isinstance(e, dict) and "epoch" in e]
    if len(log) < 2:
        return ""

    def series(key: str, label: str, scale: float = 1.0) -> Series | None:
        pts = tuple((float(e["epoch"]), float(e[key]) * scale) for e in log if isinstance(e.get(key), (int, float)))
        return Series(label, pts) if len(pts) > 1 else None

    loss = [s for s in (series("loss", "loss"),) if s]
    accs = [s for s in (series(k, lab, 100.0) for k, lab in ACCURACIES) if s]
    gap = [s for s in (series("feature_gap", "feature gap"),) if s]
    svgs = [chart(s, title=t, xlabel="epoch", ylabel=y) for s, t, y in (
        (loss, "training loss per epoch", "loss"), (accs, "training accuracy per epoch", "accuracy (%)"),
        (gap, "feature gap per epoch", "feature gap (L∞)")) if s]
    return f'<div class="charts">{"".join(svgs)}</div>'

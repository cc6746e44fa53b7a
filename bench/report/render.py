"""Rendering a built table as Markdown, LaTeX (booktabs) or CSV, and the Markdown table lines the claims share."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import pandas as pd

from bench.report.build import Built, Cell
from bench.report.labels import DASH


def _num(v: float, digits: int) -> str:
    return f"{v:.{digits}f}"


def _value_text(c: Cell, pm: str) -> str:
    if c.n == 0:
        return DASH
    text = _num(c.mean, c.digits)
    if not (c.n == 1 or (c.digits == 0 and c.std == 0)):  # e.g. epochs: identical over seeds by construction
        text += f" {pm} {_num(c.std, c.digits)}"
    return text + c.flag + (f" ({c.n_note})" if c.n_note else "")


def _lines(b: Built) -> list[tuple[tuple[str, ...], str, list[tuple[Cell, str]]]]:
    """(row label, sub-row 'ours' / 'paper' / 'Δ' or '', [(cell, kind)]) for each displayed line."""
    out = []
    for lab, line in zip(b.row_labels, b.cells):
        if not b.compare:
            out.append((lab, "", [(c, "ours") for c in line]))
        else:
            out.append((lab, "ours", [(c, "ours") for c in line]))
            out.append((("",) * len(lab), "paper", [(c, "paper") for c in line]))
            out.append((("",) * len(lab), "Δ", [(c, "delta") for c in line]))
    return out


def _text(c: Cell, kind: str, pm: str, minus: str = "−") -> str:
    if kind == "ours":
        return _value_text(c, pm)
    if kind == "paper":
        return DASH if math.isnan(c.paper) else _num(c.paper, c.digits) + c.paper_note
    if c.n == 0 or math.isnan(c.paper) or c.no_delta:
        return DASH
    d = c.mean - c.paper
    return ("+" if d >= 0 else minus) + _num(abs(d), c.digits)


def cell_text(c: Cell, kind: str) -> str:
    """A cell's text as the Markdown table shows it: ``kind`` "ours" (mean ± std, the flag, "(n=k)"), "paper" (its
    number and †) or "delta" (ours − paper); "—" where there is none."""
    return _text(c, kind, "±")


def markdown_table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]], *,
                   pad_empty: bool = True) -> list[str]:
    """The lines of a Markdown table: the header, the alignment row (``align``: "l" or "r" per column) and one line
    per row, every cell as given (escape text that may hold Markdown first). An empty cell is two spaces between its
    bars, or one with ``pad_empty=False``: the claims' tables have always written it so, and they regenerate byte for
    byte."""

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c} " if c or pad_empty else " " for c in cells) + "|"

    rule = "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def render_markdown(b: Built) -> str:
    head = list(b.row_header) + (["" ] if b.compare else [])
    spans = [lab for lab, span in b.groups for _ in range(span)] or [""] * len(b.col_labels)
    head += [f"{g} {c}".strip() for g, c in zip(spans, b.col_labels)]
    rows = []
    for lab, sub, cells in _lines(b):
        texts = []
        for c, kind in cells:
            t = _md_escape(_text(c, kind, "±"))
            if kind == "ours" and c.mark == "best":
                t = f"**{t}**"
            elif kind == "ours" and c.mark == "second":
                t = f"<u>{t}</u>"
            texts.append(t)
        rows.append([_md_escape(x) for x in lab] + ([sub] if b.compare else []) + texts)
    align = "l" * (len(b.row_header) + b.compare) + "r" * len(b.col_labels)
    lines = markdown_table([_md_escape(h) for h in head], align, rows)
    return "\n".join(lines) + "\n\n" + _md_escape(b.caption) + "\n" + _md_notes(b.notes)


def _md_notes(notes: list[str]) -> str:
    """Notes as a list; a run's line (starting with a tab) nests under the count it belongs to."""
    if not notes:
        return ""
    return "\n" + "\n".join(("  - " if n.startswith("\t") else "- ") + _md_escape(n.strip()) for n in notes) + "\n"


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def render_latex(b: Built) -> str:
    nlab = len(b.row_header) + b.compare
    ncol = len(b.col_labels)
    lines = ["\\begin{table}[t]", "\\centering", "\\small",
             f"\\begin{{tabular}}{{{'l' * nlab}{'c' * ncol}}}", "\\toprule"]
    if b.groups:
        cells, rules, start = [], [], nlab + 1
        for lab, span in b.groups:
            cells.append(f"\\multicolumn{{{span}}}{{c}}{{{_tex(lab)}}}")
            rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines.append(" & " * nlab + " & ".join(cells) + " \\\\")
        lines.append(" ".join(rules))
    head = [_tex(h) for h in b.row_header] + ([""] if b.compare else []) + [_tex(c) for c in b.col_labels]
    lines += [" & ".join(head) + " \\\\", "\\midrule"]
    for i, (lab, sub, cells) in enumerate(_lines(b)):
        if b.compare and i % 3 == 0 and i and (i // 3) in b.rules:
            lines.append("\\midrule")
        elif not b.compare and i in b.rules:
            lines.append("\\midrule")
        texts = []
        for c, kind in cells:
            t = _tex(_text(c, kind, "±", minus="-"))
            if kind == "ours" and c.mark == "best":
                t = f"\\textbf{{{t}}}"
            elif kind == "ours" and c.mark == "second":
                t = f"\\underline{{{t}}}"
            texts.append(t)
        lines.append(" & ".join([_tex(x) for x in lab] + ([_tex(sub)] if b.compare else []) + texts) + " \\\\")
    return "\n".join(lines + _tex_end(b.notes, b.caption)) + "\n"


def _tex_end(notes: list[str], caption: str) -> list[str]:
    """The lines after a table's last row: the rule, the notes in a footnote-sized box, the caption."""
    lines = ["\\bottomrule", "\\end{tabular}"]
    if notes:
        lines.append("\\par\\smallskip\\parbox{\\linewidth}{\\footnotesize")
        texts = [("\\quad " if n.startswith("\t") else "") + _tex(n.strip()) for n in notes]
        lines += [n + "\\\\" for n in texts[:-1]] + [texts[-1] + "}"]
    return lines + [f"\\caption{{{_tex(caption)}}}", "\\end{table}"]


_TEX = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
        "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "—": "---", "–": "--",
        "±": "$\\pm$", "Δ": "$\\Delta$", "−": "$-$", "†": "$^\\dagger$", "‡": "$^\\ddagger$", "§": "\\S{}",
        "×": "$\\times$", "<": "$<$", ">": "$>$"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch if ord(ch) < 128 else "?") for ch in str(s))


def render_csv(b: Built) -> str:
    """Long format, one line per cell: the row's labels, group, column, mean, std, seeds averaged (``n``), runs
    selected, mark, the indicators tripped in its runs' evaluations (``unreliable``: "a; b", empty where none
    tripped; and the paper's number and the difference with --compare paper); the caption and the notes as trailing
    comment lines."""
    recs = []
    spans = [lab for lab, span in b.groups for _ in range(span)] or [""] * len(b.col_labels)
    for lab, line in zip(b.row_labels, b.cells):
        for g, col, c in zip(spans, b.col_labels, line):
            rec = {h or "row": x for h, x in zip(b.row_header, lab)}
            rec.update(group=g, column=col, mean=_fmt_csv(c.mean, c.digits), std=_fmt_csv(c.std, c.digits),
                       n=c.n, n_runs=c.n_runs, mark=c.mark, unreliable="; ".join(c.unreliable))
            if b.compare:
                rec.update(paper=_fmt_csv(c.paper, c.digits), paper_note=c.paper_note,
                           delta=_fmt_csv(math.nan if c.no_delta else c.mean - c.paper, c.digits))
            recs.append(rec)
    return _csv(recs, b.caption, b.notes)


def _csv(records: list[dict], caption: str, notes: list[str]) -> str:
    """The records as CSV, then the caption and the notes as comment lines."""
    buf = io.StringIO()
    pd.DataFrame(records).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue() + f"# {caption}\n" + "".join(f"# {'  ' if n.startswith(chr(9)) else ''}{n.strip()}\n"
                                                   for n in notes)


def _fmt_csv(v: float, digits: int) -> str:
    return "" if math.isnan(v) else _num(v, digits)


@dataclass(frozen=True)
class Listing:
    """A table of text, one row per record (``bench report --evals``): what Markdown and LaTeX show (``rows``, as
    aligned by ``align``, "l" or "r" per column) and what the CSV holds (``records``, numbers in their own
    columns)."""
    header: tuple[str, ...]
    align: str
    rows: list[tuple[str, ...]]
    records: list[dict]
    caption: str
    notes: list[str]


def render_listing(t: Listing, fmt: str) -> str:
    """A Listing as Markdown, LaTeX (booktabs) or CSV, with its caption and notes as a built table has them."""
    if fmt == "csv":
        return _csv(t.records, t.caption, t.notes)
    if fmt == "latex":
        lines = ["\\begin{table}[t]", "\\centering", "\\small",
                 f"\\begin{{tabular}}{{{t.align.replace('r', 'c')}}}", "\\toprule",
                 " & ".join(_tex(h) for h in t.header) + " \\\\", "\\midrule"]
        lines += [" & ".join(_tex(x) for x in row) + " \\\\" for row in t.rows]
        return "\n".join(lines + _tex_end(t.notes, t.caption)) + "\n"
    lines = markdown_table([_md_escape(h) for h in t.header], t.align, [[_md_escape(x) for x in r] for r in t.rows])
    return "\n".join(lines) + "\n\n" + _md_escape(t.caption) + "\n" + _md_notes(t.notes)


RENDERERS: dict[str, Callable[[Built], str]] = {"markdown": render_markdown, "latex": render_latex,
                                               "csv": render_csv}

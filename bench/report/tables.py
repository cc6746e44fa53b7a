"""``report(grid)``: a grid's tables as the command prints them, from its results.

The pieces, one module each: ``frame`` reads the results into one DataFrame (``load``), ``declarations`` holds the
paper's tables (``TABLES``), ``build`` aggregates the runs into cells (with the paper's numbers under
``compare="paper"``) and ``render`` writes Markdown, LaTeX or CSV.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from bench.core.config import ConfigError, RunConfig
from bench.grid.gridfile import load as load_grid_file
from bench.report.build import Built, build, load_paper
from bench.report.declarations import (
    ACC,
    GRID_TABLES,
    NOT_IN_PAPER,
    PAPER_METHODS,
    TABLES,
    Metric,
    Sel,
    Table,
    generic_table,
    paper_table_for,
    with_extra_methods,
)
from bench.report.frame import load, peak_memory_note
from bench.report.render import RENDERERS
from bench.report.threat_tables import breakdown_tables, threat_notes, with_threat_metrics

# Names importers of this module use (the command line, the tests), kept where they have always been importable.
__all__ = ["TABLES", "load", "load_paper", "peak_memory_note", "report"]


def report(grid: str | list[RunConfig], results: str | Path = "results", fmt: str = "markdown", seeds: int = 1,
           *, table: str | None = None, compare: str | None = None) -> str:
    """Render a grid's table. ``table`` names a declared table (default: the grid's name when it is one);
    runs given as a list (cmd_run) get the generic table unless ``table`` is given."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt}; known: {', '.join(RENDERERS)}")
    if compare not in (None, "paper"):
        raise ValueError(f"unknown --compare {compare}; known: paper")
    df = load(grid, results, seeds)
    name = table or (grid if isinstance(grid, str) else None)
    # one document: tables separated by a blank line (CSV: each table's own header line starts its block)
    return "\n".join(RENDERERS[fmt](b) for b in built_tables(df, name, compare))


def built_tables(df: pd.DataFrame, name: str | None, compare: str | None = None) -> list[Built]:
    """The built tables of ``report`` (every renderer's, the HTML page's): the declared tables of a grid named
    ``name``, the declared table ``name``, a grid file's table, or the generic accuracy table; each with the
    threat models beyond L-inf where its runs measured them, and the corruptions broken down after them."""
    tables = _tables(df, name, compare)
    out: list[Built] = []
    for t in tables:
        built = build(with_threat_metrics(t, df), df, compare)
        unknown = [r.label for r in (*t.rows, *t.cols) if isinstance(r, Sel) and "method" in r.where
                   and r.where["method"] not in PAPER_METHODS] if compare and t.paper else []
        if unknown:
            built.notes.append(f"{NOT_IN_PAPER}: {', '.join(unknown)}.")
        built.notes += threat_notes(df, t)
        out.append(built)
    # the corruptions of the first table that holds them, broken down (every table of a grid selects the same runs)
    breakdown = next((b for t in tables if (b := breakdown_tables(t, df))), [])
    return out + [build(t, df) for t in breakdown]


def _tables(df: pd.DataFrame, name: str | None, compare: str | None) -> list[Table]:
    if name in GRID_TABLES:
        return [TABLES[t] for t in GRID_TABLES[name]]
    if name in TABLES:
        # a grid's methods that the table does not declare get rows (or columns) of their own after its own
        return [with_extra_methods(TABLES[name], df)]
    if name is not None and name.endswith(".toml"):
        spec = load_grid_file(name).table
        t = generic_table(df, spec.get("caption", f"Accuracy (%) of grid {Path(name).stem} on clean, PGD-20 and "
                                                  "AutoAttack inputs; Avg is their mean."))
        if "metrics" in spec:
            t = replace(t, cols=[m for m in ACC if m.key in spec["metrics"]])
        return [_with_paper(t, df, name) if compare else t]
    what = f"grid {name}" if name else "this grid"
    return [generic_table(df, f"Accuracy (%) of {what} on clean, PGD-20 and AutoAttack inputs; Avg is their mean.")]


def _with_paper(t: Table, df: pd.DataFrame, name: str) -> Table:
    """A grid file's table with the numbers of the paper's table on its network (``--compare paper``). A grid on a
    network that none of the paper's accuracy tables uses is bad input: there is nothing to compare with."""
    paper = paper_table_for(df)
    if paper is None:
        have = ", ".join(sorted(set(df.model)))
        raise ConfigError(f"--compare paper: the paper's accuracy tables are on one network each (table1: resnet18 or resnet18_afd, "
                          f"table2: wrn34_10); grid {name} runs {have}")
    pairs = set(zip(df.model, df.dataset))
    select = {"model": next(iter(pairs))[0], "dataset": next(iter(pairs))[1]} if len(pairs) == 1 else {}
    return replace(t, paper=TABLES[paper].paper, select={**t.select, **select})

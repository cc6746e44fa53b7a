"""A declared table built from the runs' DataFrame: one cell per row and column, aggregating every run that
matches its row, its column and the table's selection. One run shows its value, several (seeds) show mean ± sample
std; a cell with no finished run shows "—". Every selected run that is not done is listed in a note with its reason.
``compare="paper"`` puts the paper's number (``results/paper``, transcribed from AFD AAAI 2025 Tables 1-5) and the
difference under each of ours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.declarations import SEP, Metric, Sel, Table
from bench.report.frame import eval_time_note, peak_memory_note
from bench.report.labels import DASH, DATASET_LABELS, MODEL_LABELS, SANITY, method_label, runs_per_device

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"


@dataclass
class Cell:
    """One cell's numbers, as every renderer shows them (and the paper's beside them under ``compare="paper"``)."""
    mean: float = math.nan
    std: float = math.nan
    n: int = 0  # finished runs averaged
    n_runs: int = 0  # runs selected
    mark: str = ""  # "best" / "second"
    paper: float = math.nan
    paper_note: str = ""
    digits: int = 2
    flag: str = ""  # SANITY when a finished run in the cell violates clean >= PGD-20 >= AA


@dataclass
class Built:
    """A table ready to render: labels, cells, the rules between row blocks and the notes under it."""
    caption: str
    row_header: tuple[str, ...]
    row_labels: list[tuple[str, ...]]
    col_labels: list[str]
    groups: list[tuple[str, int]]  # (label, span)
    cells: list[list[Cell]]
    rules: list[int]  # a \midrule before these row indices
    notes: list[str]
    compare: bool = False


def _match(df: pd.DataFrame, where: dict[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for k, v in where.items():
        if k not in df:
            return pd.Series(False, index=df.index)
        mask &= df[k] == v
    return mask


def _label(lab: str | tuple[str, ...]) -> tuple[str, ...]:
    return lab if isinstance(lab, tuple) else (lab,)


def build(table: Table, df: pd.DataFrame, compare: str | None = None) -> Built:
    """The cells of a declared table from the runs' DataFrame (``load``), with its notes; ``compare="paper"`` adds
    the paper's numbers where the table names them."""
    rows = [r for r in table.rows]
    rules, kept = [], []
    for r in rows:
        if r is SEP:
            if kept:
                rules.append(len(kept))
        else:
            kept.append(r)
    groups = list(table.groups) or [Sel("")]
    base = _match(df, table.select)
    paper = load_paper(table.paper) if compare == "paper" and table.paper else None
    cells: list[list[Cell]] = []
    selected: dict[str, pd.Series] = {}
    for r in kept:
        line = []
        for g in groups:
            for c in table.cols:
                metric = r if isinstance(r, Metric) else c
                where = {**table.select, **g.where, **(c.where if isinstance(c, Sel) else {}),
                         **(r.where if isinstance(r, Sel) else {})}
                assert isinstance(metric, Metric), "one of rows / cols must be Metrics"
                runs = df[base & _match(df, where)]
                for _, run in runs.iterrows():
                    selected[run.run_id] = run
                vals = runs.loc[runs.status == "done", metric.key].dropna()
                cell = Cell(n=len(vals), n_runs=len(runs), digits=metric.digits)
                if len(vals):
                    cell.mean = float(vals.mean())
                    if runs.loc[runs.status == "done", "violations"].fillna("").astype(bool).any():
                        cell.flag = SANITY
                    cell.std = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
                if paper is not None:
                    cell.paper, cell.paper_note = paper_value(paper, where, metric.key)
                line.append(cell)
        cells.append(line)
    if table.rank:
        _rank(cells, [c if isinstance(c, Metric) else None for g in groups for c in table.cols])
    notes = _notes(selected, cells)
    if table.device_note:
        notes = _device_notes([r for r in selected.values() if r.status == "done"]) + notes
    if paper is not None:
        if any(c.paper_note for line in cells for c in line):
            notes.append("† paper number excerpted by the AFD paper from Huang et al. (2023), evaluated with PGD-10.")
        notes.append("paper: AFD (AAAI 2025) as published; Δ = ours − paper.")
    col_labels = [c.label if isinstance(c, Metric) else _label(c.label)[0] for g in groups for c in table.cols]
    return Built(caption=table.caption, row_header=table.row_header,
                 row_labels=[_label(r.label) for r in kept], col_labels=col_labels,
                 groups=[(_label(g.label)[0], len(table.cols)) for g in groups] if table.groups else [],
                 cells=cells, rules=rules, notes=notes, compare=paper is not None)


def _device_notes(done: list[pd.Series]) -> list[str]:
    """A timing table's first notes: the devices its finished runs were measured on, then (where recorded) what
    their evaluation took and their peak memory."""
    measured = "Measured on " + (runs_per_device(r.device_name or "unknown device" for r in done)
                                 if done else "— (no finished run)") + "."
    return [n for n in (measured, eval_time_note(done), peak_memory_note(done)) if n]


def _rank(cells: list[list[Cell]], metrics: list[Metric | None]) -> None:
    for j, metric in enumerate(metrics):
        if metric is None:
            continue
        sign = 1 if metric.higher_is_better else -1
        # Rank by the value as displayed, so ties on screen get the same mark.
        vals = sorted({round(sign * line[j].mean, line[j].digits) for line in cells if not math.isnan(line[j].mean)},
                      reverse=True)
        for line in cells:
            c = line[j]
            if math.isnan(c.mean):
                continue
            v = round(sign * c.mean, c.digits)
            c.mark = "best" if v == vals[0] else "second" if len(vals) > 1 and v == vals[1] else ""


def _notes(selected: dict[str, pd.Series], cells: list[list[Cell]]) -> list[str]:
    notes = []
    bad = [r for r in selected.values() if r.status != "done"]
    if bad:
        counts = pd.Series([r.status for r in bad]).value_counts()
        notes.append(f"{DASH}: {len(bad)} of {len(selected)} runs not finished ("
                     + ", ".join(f"{n} {s}" for s, n in counts.items()) + "):")
        for r in bad:
            reason = r.reason if isinstance(r.reason, str) and r.reason else "no reason recorded"
            notes.append(f"\t{method_label(r.method)} {MODEL_LABELS.get(r.model, r.model)}/"
                         f"{DATASET_LABELS.get(r.dataset, r.dataset)} seed {r.seed} (run {r.run_id}): "
                         f"{r.status}: {reason}")
    violated = [r for r in selected.values() if r.status == "done" and isinstance(r.violations, str) and r.violations]
    if violated:
        notes.append(f"{SANITY}: {len(violated)} run{'s' * (len(violated) > 1)} violate clean >= PGD-20 >= AA "
                     "(gradient masking or a bug):")
        notes += [f"\t{method_label(r.method)} {MODEL_LABELS.get(r.model, r.model)}/"
                  f"{DATASET_LABELS.get(r.dataset, r.dataset)} seed {r.seed} (run {r.run_id}): {r.violations}"
                  for r in violated]
    stale = [r for r in selected.values() if r.status == "done" and bool(r.get("stale", False))]
    if stale:  # results of other code than the current one: bench/core/fingerprint.py
        notes.append(f"{len(stale)} of the {len(selected)} runs {'was' if len(stale) == 1 else 'were'} computed by "
                     "other code than the current one: `bench status` names them; `bench run --rerun stale` re-runs "
                     "them.")
    empty = sum(1 for line in cells for c in line if c.n_runs == 0)
    if empty:
        notes.append(f"{DASH}: {empty} cell{'s' * (empty > 1)} with no run in this grid.")
    return notes


# -- the paper's numbers --------------------------------------------------------------------------------------
def load_paper(name: str, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """results/paper/<name>.csv: one row per (method, model, dataset) with the paper's metrics (percent or
    seconds); ``dagger`` = 1 marks numbers the paper excerpted from another paper."""
    path = Path(paper_dir or PAPER_DIR) / f"{name}.csv"
    return pd.read_csv(path, comment="#")


def paper_value(paper: pd.DataFrame, where: dict[str, Any], key: str) -> tuple[float, str]:
    """The paper's number for a metric (``key``) of the runs ``where`` selects (by method, model and data set), and
    "†" when the paper excerpted it from another paper (its own number is preferred where it has both); NaN and ""
    where it has none."""
    if key not in paper:
        return math.nan, ""
    sub = paper[_match(paper, {k: v for k, v in where.items() if k in ("method", "model", "dataset")})]
    if "dagger" in sub and (sub.dagger == 0).any():
        sub = sub[sub.dagger == 0]
    vals = sub[key].dropna()
    if not len(vals):
        return math.nan, ""
    dagger = "dagger" in sub and bool(sub.loc[vals.index[0], "dagger"])
    return float(vals.iloc[0]), "†" if dagger else ""

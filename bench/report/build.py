"""A declared table built from the runs' DataFrame: one cell per row and column, aggregating every run that
matches its row, its column and the table's selection. One run shows its value, several (seeds) show mean ± sample
std; a cell with no finished run shows "—". Every selected run that is not done is listed in a note with its reason.
``compare="paper"`` puts the paper's number (``results/paper``, transcribed from AFD AAAI 2025 Tables 1-5) and the
difference under each of ours.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.declarations import SEP, Metric, Sel, Table
from bench.report.frame import eval_time_note, matching, peak_memory_note
from bench.report.labels import (
    DASH,
    DATASET_LABELS,
    MODEL_FAMILIES,
    MODEL_LABELS,
    NETWORK_NOTES,
    SANITY,
    UNRELIABLE,
    UNRELIABLE_WORDS,
    method_label,
    runs_per_device,
)
from bench.report.noise import noise

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"


@dataclass
class Cell:
    """One cell's numbers, as every renderer shows them (and the paper's beside them under ``compare="paper"``)."""
    mean: float = math.nan
    std: float = math.nan
    n: int = 0  # finished runs averaged
    n_runs: int = 0  # runs selected
    mark: str = ""  # "best" / "second": ahead beyond the noise rule (_rank)
    paper: float = math.nan
    paper_note: str = ""
    digits: int = 2
    flag: str = ""  # the marks after the value: SANITY (a finished run violates clean >= PGD-20 >= AA), UNRELIABLE
    unreliable: tuple[str, ...] = ()  # the indicators tripped in the evaluation of a run averaged here (UNRELIABLE)
    n_note: str = ""  # "n=2" where the cell averages another number of seeds than the table says
    key: str = ""  # the metric's column in load()'s DataFrame
    values: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))  # the finished runs' values
    n_test: float = math.nan  # test images behind the value (the fewest of its runs'), NaN where not an accuracy
    no_delta: bool = False  # the paper's number is not comparable to ours (a PGD-10 number beside our PGD-20)


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


# The test-image counts behind each accuracy (load()'s columns); Avg is the mean of the three, and counts the fewest
# of them, which overstates its test-sample error rather than understating it.
COUNTS = {"clean": ("n_clean",), "pgd20": ("n_pgd",), "aa": ("n_aa",), "avg": ("n_clean", "n_pgd", "n_aa"),
          "l2_pgd20": ("n_pgd",), "l2_aa": ("n_aa",), "corr_mean": ("n_clean",)}
# The paper's † numbers are PGD-10 (excerpted from Huang et al. 2023): no difference against our PGD-20, nor
# against our Avg, which contains it.
PGD10_INCOMPARABLE = ("pgd20", "avg")
MARKS_NOTE = ("Bold: the column's best, ahead of the second by more than twice the noise (the larger of the seed "
              "spread and the test-sample error on the column's test images); underlined: the second, ahead of the "
              "third by as much. A column with neither has no leader beyond noise.")


def _label(lab: str | tuple[str, ...]) -> tuple[str, ...]:
    return lab if isinstance(lab, tuple) else (lab,)


def _cell(runs: pd.DataFrame, metric: Metric) -> Cell:
    """One cell from the runs it selects: mean and sample std of the finished ones, the test images behind them."""
    done = runs[runs.status == "done"]
    vals = done[metric.key].dropna()
    cell = Cell(n=len(vals), n_runs=len(runs), digits=metric.digits, key=metric.key, values=vals)
    if len(vals):
        cell.mean = float(vals.mean())
        if done["violations"].fillna("").astype(bool).any():
            cell.flag = SANITY
        # a DataFrame made by hand (a researcher's, the tests') may lack the column that load() always adds
        cell.unreliable = tripped(done.loc[vals.index, "unreliable"]) if "unreliable" in done else ()
        if cell.unreliable:
            cell.flag += UNRELIABLE
        cell.std = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        if metric.key in COUNTS:
            cell.n_test = float(done.loc[vals.index, list(COUNTS[metric.key])].min().min())
    return cell


def tripped(unreliable: pd.Series) -> tuple[str, ...]:
    """The indicators tripped in any of some runs' evaluations, from load()'s ``unreliable`` column ("a; b" per run;
    empty for a clean evaluation, None for a run not finished or a result written before they were checked)."""
    return tuple(sorted({n for v in unreliable if isinstance(v, str) and v for n in v.split("; ")}))


def build(table: Table, df: pd.DataFrame, compare: str | None = None) -> Built:
    """The cells of a declared table from the runs' DataFrame (``load``), with its notes; ``compare="paper"`` adds
    the paper's numbers where the table names them. The caption says what ± is, over how many seeds and (for
    accuracies) on how many test images."""
    rules, kept = [], []
    for r in table.rows:
        if r is SEP:
            if kept:
                rules.append(len(kept))
        else:
            kept.append(r)
    groups = list(table.groups) or [Sel("")]
    base = matching(df, table.select)
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
                runs = df[base & matching(df, where)]
                for _, run in runs.iterrows():
                    selected[run.run_id] = run
                cell = _cell(runs, metric)
                # The paper's numbers are L-inf (eps 8/255): never beside a run trained under another threat model.
                if paper is not None and not _other_norm(runs).any():
                    cell.paper, cell.paper_note = paper_value(paper, where, metric.key)
                    cell.no_delta = cell.paper_note == "†" and metric.key in PGD10_INCOMPARABLE
                line.append(cell)
        cells.append(line)
    if table.rank:
        _rank(cells, [c if isinstance(c, Metric) else None for g in groups for c in table.cols])
    notes = ([MARKS_NOTE] if table.rank else []) + _notes(selected, cells) + _norm_notes(selected)
    if table.device_note:
        notes = _device_notes([r for r in selected.values() if r.status == "done"]) + notes
    if paper is not None:
        if any(c.paper_note for line in cells for c in line):
            notes.append("† paper number excerpted by the AFD paper from Huang et al. (2023), evaluated with PGD-10: "
                         "no Δ against our PGD-20, nor against our Avg, which contains it.")
        notes.append("paper: AFD (AAAI 2025) as published; Δ = ours − paper.")
    col_labels = [c.label if isinstance(c, Metric) else _label(c.label)[0] for g in groups for c in table.cols]
    metrics = {m.key for m in (*table.rows, *table.cols) if isinstance(m, Metric)}
    caption = table.caption + seeds_note(cells) + (
        sizes_note(pd.DataFrame(list(selected.values()))) if metrics & set(COUNTS) else "")
    return Built(caption=caption, row_header=table.row_header,
                 row_labels=[_label(r.label) for r in kept], col_labels=col_labels,
                 groups=[(_label(g.label)[0], len(table.cols)) for g in groups] if table.groups else [],
                 cells=cells, rules=rules, notes=notes, compare=paper is not None)


def _other_norm(runs: pd.DataFrame) -> pd.Series:
    """Which runs train under a threat model other than the paper's L-inf one (``RunConfig.norm``)."""
    return runs["norm"].fillna("linf") != "linf" if "norm" in runs else pd.Series(False, index=runs.index)


def _norm_notes(selected: dict[str, pd.Series]) -> list[str]:
    """One note per other threat model the table's runs train under: the paper has no numbers for them."""
    runs = pd.DataFrame(list(selected.values()))
    if runs.empty or "norm" not in runs:  # a frame of runs without a norm (built by hand) is L-inf
        return []
    other = runs[_other_norm(runs)]
    return [f"{norm.upper()} (eps {', '.join(f'{e:g}' for e in sorted(set(g.eps)))}): no paper numbers (the "
            f"paper's are L-inf, eps 8/255)." for norm, g in other.groupby("norm")]


def seeds_note(cells: list[list[Cell]]) -> str:
    """Say what ± is and over how many seeds the cells average: the table's usual number once, and "(n=k)" on
    each cell that averages another number (set here as the cell's ``n_note``)."""
    counts = Counter(c.n for line in cells for c in line if c.n)
    if not counts:
        return ""
    usual = max(counts, key=lambda k: (counts[k], k))  # the most frequent; the larger on a tie
    for line in cells:
        for c in line:
            c.n_note = f"n={c.n}" if c.n and c.n != usual else ""
    if usual == 1:
        return (" One run (seed) per cell" + (" unless marked (n=k): there the mean ± the sample standard "
                                               "deviation over k seeds." if len(counts) > 1 else "."))
    return (f" Mean ± sample standard deviation over {usual} seeds"
            + ("; a cell marked (n=k) averages k." if len(counts) > 1 else "."))


def sizes_note(runs: pd.DataFrame) -> str:
    """Say on how many test images each accuracy was measured (the counts the results record), when the runs
    agree (AutoAttack is the costly one)."""
    if not len(runs) or "n_clean" not in runs:
        return ""
    sizes = set(zip(*(runs[k].astype(int) for k in ("n_clean", "n_pgd", "n_aa"))))
    if len(sizes) != 1:
        return ""
    n_clean, n_pgd, n_aa = sizes.pop()
    if n_clean == n_pgd == n_aa:
        return f" All on the first {n_clean} test images."
    if not n_aa:
        return (f" Clean on the first {n_clean} test images, PGD-20 on the first {n_pgd}, no AutoAttack; PGD-20 <= "
                "clean is checked on the images they share.")
    return (f" Clean on the first {n_clean} test images, PGD-20 on the first {n_pgd}, AutoAttack on the first {n_aa}"
            "; the order AA, PGD-20, clean (each at most the next) is checked on the images they share.")


def _device_notes(done: list[pd.Series]) -> list[str]:
    """A timing table's first notes: the devices its finished runs were measured on, then (where recorded) what
    their evaluation took and their peak memory."""
    measured = "Measured on " + (runs_per_device(r.device_name or "unknown device" for r in done)
                                 if done else "— (no finished run)") + "."
    return [n for n in (measured, eval_time_note(done), peak_memory_note(done)) if n]


def _rank(cells: list[list[Cell]], metrics: list[Metric | None]) -> None:
    """Bold the column's best only where it is ahead of the second beyond the noise rule, and underline the second
    only where the best is bold and the second is as far ahead of the third; nothing where the lead is noise."""
    for j, metric in enumerate(metrics):
        if metric is None:
            continue
        sign = 1 if metric.higher_is_better else -1
        ranked = sorted((line[j] for line in cells if line[j].n), key=lambda c: -sign * c.mean)
        if len(ranked) >= 2 and _ahead(ranked[0], ranked[1], sign):
            ranked[0].mark = "best"
            if len(ranked) >= 3 and _ahead(ranked[1], ranked[2], sign):
                ranked[1].mark = "second"


def _ahead(a: Cell, b: Cell, sign: int) -> bool:
    """a is ahead of b by more than twice the noise of their difference, and visibly so (digits shown)."""
    n_test = min(a.n_test, b.n_test)
    # A column without test-image counts (not an accuracy) has no test-sample error: the seed spread alone.
    nz = noise(a.values, b.values, int(n_test) if n_test > 0 else math.inf)
    diff = sign * (a.mean - b.mean)
    return diff > 2 * nz and round(a.mean, a.digits) != round(b.mean, b.digits)


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
    unreliable = [r for r in selected.values() if r.status == "done" and isinstance(r.get("unreliable"), str)
                  and r.unreliable]
    if unreliable:  # the indicators of bench/eval: the numbers stand, marked, as the order check's violations do
        notes.append(f"{UNRELIABLE}: {len(unreliable)} run{'s' * (len(unreliable) > 1)} with an {UNRELIABLE_WORDS} "
                     "(reliability indicators tripped):")
        notes += [f"\t{method_label(r.method)} {MODEL_LABELS.get(r.model, r.model)}/"
                  f"{DATASET_LABELS.get(r.dataset, r.dataset)} seed {r.seed} (run {r.run_id}): {r.unreliable}"
                  for r in unreliable]
    stale = [r for r in selected.values() if r.status == "done" and bool(r.get("stale", False))]
    if stale:  # results of other code than the current one: bench/core/fingerprint.py
        notes.append(f"{len(stale)} of the {len(selected)} runs {'was' if len(stale) == 1 else 'were'} computed by "
                     "other code than the current one: `bench status` names them; `bench run --rerun stale` re-runs "
                     "them.")
    empty = sum(1 for line in cells for c in line if c.n_runs == 0)
    if empty:
        notes.append(f"{DASH}: {empty} cell{'s' * (empty > 1)} with no run in this grid.")
    return notes + _network_notes(selected)


def _network_notes(selected: dict[str, pd.Series]) -> list[str]:
    """Which network each row ran on, where a table's rows ran on several (the paper's rows each on the network of
    their public code)."""
    by_model: dict[str, list[str]] = {}
    for r in selected.values():
        labels = by_model.setdefault(r.model, [])
        if method_label(r.method) not in labels:
            labels.append(method_label(r.method))
    if not any(sum(m in by_model for m in fam) > 1 for fam in MODEL_FAMILIES.values()):
        return []  # one network per architecture (a table of several architectures names them in its rows)
    return ["Networks: " + "; ".join(f"{', '.join(labels)} on {model} ({NETWORK_NOTES.get(model, model)})"
                                      for model, labels in by_model.items()) + "."]


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
    sub = paper[matching(paper, {k: v for k, v in where.items() if k in ("method", "model", "dataset")})]
    if "dagger" in sub and (sub.dagger == 0).any():
        sub = sub[sub.dagger == 0]
    vals = sub[key].dropna()
    if not len(vals):
        return math.nan, ""
    dagger = "dagger" in sub and bool(sub.loc[vals.index[0], "dagger"])
    return float(vals.iloc[0]), "†" if dagger else ""

"""Reading results into one DataFrame, and rendering the paper's tables from it.

``load(grid)`` is public for researchers' own analyses: one row per run of the grid (parents included), with
its status, metrics (accuracies as percentages) and config fields. Missing, failed and corrupt runs are rows
too, so a table can show them as "—" and count them, never silently drop them.

Tables are declared once, in ``TABLES``: which runs a table selects (by method / model / data set / hparam,
never by grid), what its rows and columns are, and which metric each cell shows. The grid only supplies the
runs, so ``--grid table1`` renders Table 1 from whatever runs exist, and a grid without a declared table gets
a generic table (methods as rows; Clean, PGD-20, AA, Avg per model/data set).

A cell aggregates every run matching its row, its column and the table's selection: one run shows its value,
several (seeds) show mean ± sample std; a cell with no finished run shows "—". Every selected run that is not
done is listed in a footnote with its reason. ``compare="paper"`` puts the paper's number (``results/paper``,
transcribed from AFD AAAI 2025 Tables 1-5) and the difference under each of ours.
"""
from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from bench.core.config import RunConfig, run_id
from bench.core.store import CorruptFile, Store
from bench.grid.gridfile import load as load_grid_file
from bench.grid.grids import get_grid
from bench.grid.runs import expand
from methods import REGISTRY, get_method

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"
DASH = "—"
SANITY = "‡"  # marks a value from a run whose evaluation violated clean >= PGD-20 >= AA (footnote lists them)

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny-imagenet": "Tiny-ImageNet",
                  "cifar10-jpeg": "CIFAR-10 (JPEG)", "digits": "Digits"}
MODEL_LABELS = {"resnet18": "RN18", "resnet50": "RN50", "wrn34_10": "WRN-34-10", "preact_resnet18": "PreAct-RN18",
                "small_cnn": "SmallCNN"}


def method_label(m: str) -> str:
    """A method's name in tables and figures: its declared ``label`` (a result of a method no longer registered
    keeps its name)."""
    return REGISTRY[m].display_label() if m in REGISTRY else m


# -- loading --------------------------------------------------------------------------------------------------

def n_runs(n: int) -> str:
    """"1 run", "2 runs"."""
    return f"{n} run{'s' * (n != 1)}"


def runs_per_device(names) -> str:
    """"AMD EPYC (27 runs); AMD EPYC, family 25 model 17 (1 run)": where a set of runs was measured, most first."""
    counts = pd.Series(list(names), dtype=object).value_counts()
    return "; ".join(f"{d} ({n_runs(n)})" for d, n in counts.items())


def device_label(res: dict) -> str | None:
    """The device a result ran on, for the notes that say where times were measured: a CPU with its family and
    model where recorded ("AMD EPYC, family 25 model 17"), since a virtual machine names every generation alike."""
    name = res.get("device_name")
    if name and res.get("cpu_model") and str(res.get("device", "cpu")).startswith("cpu"):
        return f"{name}, {res['cpu_model']}"
    return name


def load(grid: str | list[RunConfig], results: str | Path = "results", seeds: int = 1) -> pd.DataFrame:
    """Every run of a grid (parents included) as one row: ids, config fields (``hp.<name>`` for
    hyperparameters), status and reason, metrics (clean / pgd20 / aa / avg / f1_clean / f2_clean / f_delta in
    percent; feature_gap as measured), timings (train_seconds, seconds_per_epoch, total_seconds = own +
    ancestors' training time, as the paper's Table 5 counts it), device_name, and the per-epoch log."""
    runs = expand(get_grid(grid, seeds) if isinstance(grid, str) else grid)
    store = Store(results)
    rows = []
    for cfg in runs:
        rid = run_id(cfg)
        row: dict[str, Any] = {
            "run_id": rid, "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed,
            "epochs": cfg.train.epochs, "parent_id": run_id(cfg.parent) if cfg.parent is not None else None,
            "eval_sizes": (cfg.eval.n_clean, cfg.eval.n_pgd, cfg.eval.n_aa),
            "eps": cfg.eps, "pgd_step_size": cfg.eval.pgd_step_size,
            **{f"hp.{k}": v for k, v in cfg.hparams}}
        try:
            res = store.read(rid)
        except CorruptFile as e:
            # The file's name, not its absolute path: reports are compared and shared across machines.
            why = str(e).replace(str(e.path), f"runs/{e.path.name}")
            res, row["status"], row["reason"] = None, "corrupt", f"corrupt result file {why}"
        if res is None:
            row.setdefault("status", "missing")
            row.setdefault("reason", "no result file")
        else:
            row["status"], row["reason"] = res.get("status"), res.get("reason")
            m = res.get("metrics") or {}
            for k in ("clean", "pgd20", "aa", "f1_clean", "f2_clean"):
                if _is_num(m.get(k)):
                    row[k] = 100.0 * m[k]
            if _is_num(m.get("feature_gap")):
                row["feature_gap"] = float(m["feature_gap"])
            if _is_num(m.get("feature_gap_se")):
                row["feature_gap_se"] = float(m["feature_gap_se"])
            row["feature_gap_of"] = m.get("feature_gap_of")
            row["violations"] = "; ".join(m.get("violations") or [])
            for k in ("seconds_per_epoch", "train_seconds", "wall_seconds", "wall_processes"):
                row[k] = float(res[k]) if _is_num(res.get(k)) else math.nan
            secs = m.get("seconds") or {}  # the final evaluation's seconds per measurement (bench/eval/evaluator.py)
            for k in EVAL_MEASURES:
                row[f"eval_s_{k}"] = float(secs[k]) if _is_num(secs.get(k)) else math.nan
            # per-epoch probes (Figure 1a's feature gap, single-step methods' FGSM/PGD check), timed in train.py
            row["probe_seconds"] = float(sum(e.get("probe_seconds", 0.0) for e in res.get("epochs") or []))
            row["device_name"] = device_label(res)
            row["epoch_log"] = res.get("epochs") or []
            peaks = res.get("peak_memory") or {}  # bench/core/memory.py: per phase, where recorded
            for phase in ("train", "eval"):
                b = (peaks.get(phase) or {}).get("bytes")
                row[f"peak_{phase}_bytes"] = float(b) if _is_num(b) else math.nan
                row[f"peak_{phase}_of"] = (peaks.get(phase) or {}).get("of")
        rows.append(row)
    df = pd.DataFrame(rows)
    for k in ("clean", "pgd20", "aa", "f1_clean", "f2_clean", "feature_gap", "feature_gap_se", "seconds_per_epoch",
              "train_seconds", "wall_seconds", "wall_processes", "probe_seconds", "peak_train_bytes",
              "peak_eval_bytes", *(f"eval_s_{k}" for k in EVAL_MEASURES)):
        if k not in df:
            df[k] = math.nan
        df[k] = df[k].astype(float)
    for k in ("reason", "device_name", "violations", "epoch_log", "feature_gap_of", "peak_train_of", "peak_eval_of"):
        if k not in df:
            df[k] = None
    # Derived per run, before any averaging over seeds (the paper's Avg is the mean of the three accuracies).
    df["avg"] = df[["clean", "pgd20", "aa"]].mean(axis=1, skipna=False)
    df["f_delta"] = df["f1_clean"] - df["f2_clean"]
    df["total_seconds"] = _total_seconds(df)
    df["eval_seconds"] = df[[f"eval_s_{k}" for k in EVAL_MEASURES]].sum(axis=1, min_count=1)
    return df


EVAL_MEASURES = ("clean", "pgd20", "aa")  # the keys of a result's metrics.seconds


def eval_time_note(rows: list) -> str | None:
    """One line on what the table's runs spent evaluating (not in the table's training times): median seconds
    per run of the final evaluation and its parts, from each result's recorded per-measurement seconds."""
    if not rows:
        return None
    df = pd.DataFrame([{k: getattr(r, k, math.nan) for k in ("eval_seconds", "probe_seconds",
                                                             *(f"eval_s_{m}" for m in EVAL_MEASURES))} for r in rows])
    if df["eval_seconds"].isna().all():
        return None
    med = df.median(numeric_only=True)
    parts = ", ".join(f"{label} {med[f'eval_s_{k}']:.0f} s" for k, label in
                      zip(EVAL_MEASURES, ("clean", "PGD-20 with the feature gap", "AutoAttack"))
                      if not math.isnan(med[f"eval_s_{k}"]))
    line = f"Not in the times above: the final evaluation took a median of {med['eval_seconds']:.0f} s per run ({parts})"
    if med.get("probe_seconds", 0) > 0:
        line += f", and the per-epoch probes (feature gap, FGSM/PGD check) {med['probe_seconds']:.0f} s"
    return line + "."


def peak_memory_note(rows: list) -> str | None:
    """One line on the peak memory of the table's runs (median over runs, training and evaluation), where their
    results record it (bench/core/memory.py: CUDA's max allocated on GPUs, the process's peak RSS on CPUs)."""
    parts = []
    for phase, label in (("train", "training"), ("eval", "evaluation")):
        vals = [getattr(r, f"peak_{phase}_bytes", math.nan) for r in rows]
        vals = [v for v in vals if _is_num(v)]
        if vals:
            # rows of results written before the peak was recorded carry NaN here (a float, and truthy)
            what = next((w for r in rows if isinstance(w := getattr(r, f"peak_{phase}_of", None), str) and w), "")
            parts.append(f"{label} {statistics.median(vals) / 2**20:.0f} MiB" + (f" ({what})" if what else ""))
    return f"Peak memory, median per run: {', '.join(parts)}." if parts else None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _total_seconds(df: pd.DataFrame) -> list[float]:
    """Own training time plus every ancestor's (Table 5: vAFT 1330 s = 20 x 37 s + 590 s of pre-training)."""
    own = dict(zip(df.run_id, df.train_seconds.where(df.status == "done")))
    parent = dict(zip(df.run_id, df.parent_id))

    def total(rid: str) -> float:
        t = own.get(rid, math.nan)
        p = parent.get(rid)
        return t + total(p) if isinstance(p, str) else t

    return [total(r) for r in df.run_id]


# -- table declarations ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    key: str  # a column of load()'s DataFrame
    label: str
    digits: int = 2
    higher_is_better: bool = True


@dataclass(frozen=True)
class Sel:
    """A row, column or column group: a label and the runs it selects (DataFrame column == value)."""
    label: str | tuple[str, ...]
    where: dict[str, Any] = field(default_factory=dict)


def S(label, **where) -> Sel:  # noqa: N802 - short constructor for the declarations below
    return Sel(label, {_col(k): v for k, v in where.items()})


def _col(key: str) -> str:
    return f"hp.{key[3:]}" if key.startswith("hp_") else key


CLEAN, PGD, AA, AVG = Metric("clean", "Clean"), Metric("pgd20", "PGD-20"), Metric("aa", "AA"), Metric("avg", "Avg")
ACC = (CLEAN, PGD, AA, AVG)
SEP = Sel("---")  # a rule between row blocks (LaTeX \midrule; ignored elsewhere)


@dataclass(frozen=True)
class Table:
    """Rows x (groups x) columns; exactly one of rows / cols holds Metrics, the other Sels."""
    caption: str
    rows: Sequence[Sel | Metric]
    cols: Sequence[Sel | Metric]
    groups: Sequence[Sel] = ()  # column groups (data sets), each spanning all cols
    select: dict[str, Any] = field(default_factory=dict)
    row_header: tuple[str, ...] = ("Method",)
    rank: bool = False  # best bold, second underlined, per column
    device_note: bool = False  # name the device(s) the runs were timed on
    paper: str | None = None  # results/paper/<name>.csv


def _methods(*names: str) -> list[Sel]:
    return [SEP if n == "|" else S(method_label(n), method=n) for n in names]


def _datasets(*names: str) -> list[Sel]:
    return [S(DATASET_LABELS[d], dataset=d) for d in names]


DATA3 = ("cifar10", "cifar100", "tiny-imagenet")
TABLES: dict[str, Table] = {
    "table1": Table("Quantitative evaluations of all methods on ResNet18 (accuracy, %).",
                    rows=_methods("pgd_at", "trades", "|", "free_at", "fgsm_ga", "atas", "|",
                                  "vaft", "rift", "afkd", "arrest", "afd"),
                    groups=_datasets(*DATA3), cols=ACC, select={"model": "resnet18"}, rank=True, paper="table1"),
    "table2": Table("Quantitative evaluations of all methods on WideResNet-34-10 (accuracy, %).",
                    rows=_methods("pgd_at", "trades", "|", "vaft", "rift", "afkd", "arrest", "afd"),
                    groups=_datasets(*DATA3), cols=ACC, select={"model": "wrn34_10"}, rank=True, paper="table2"),
    "table3": Table("vAFT with the disentangler (+D), the feature alignment (+A) and both (AFD); "
                    "ResNet18, CIFAR-10 (accuracy, %).",
                    rows=(CLEAN, Metric("pgd20", "PGD"), AA), row_header=("",),
                    cols=_methods("vaft", "vaft_d", "vaft_a", "afd"),
                    select={"model": "resnet18", "dataset": "cifar10"}, paper="table3"),
    "table4": Table("Natural accuracy (%) of the intrinsic features f1 and the confused features f2 of AFD; "
                    "Δ = f1 − f2.",
                    rows=[S((MODEL_LABELS[m], DATASET_LABELS[d]), model=m, dataset=d) for m, d in (
                        ("resnet18", "cifar10"), ("resnet18", "cifar100"), ("resnet18", "tiny-imagenet"),
                        ("resnet50", "cifar10"), ("resnet50", "cifar100"),
                        ("wrn34_10", "cifar10"), ("wrn34_10", "cifar100"), ("wrn34_10", "tiny-imagenet"))],
                    cols=(Metric("f1_clean", "f1"), Metric("f2_clean", "f2"), Metric("f_delta", "Δ")),
                    row_header=("Model", "Data"), select={"method": "afd"}, paper="table4"),
    "table5": Table("Training time (seconds) on ResNet18, CIFAR-10, measured: epochs, seconds per epoch, and total "
                    "(the run's own training plus its parent's, as in the paper).",
                    rows=_methods("standard", "pgd_at", "trades", "free_at", "fgsm_ga", "atas",
                                  "vaft", "rift", "afkd", "arrest", "afd"),
                    cols=(Metric("epochs", "Epoch", 0), Metric("seconds_per_epoch", "Time one", 1),
                          Metric("total_seconds", "Time total", 0)),
                    select={"model": "resnet18", "dataset": "cifar10"}, device_note=True, paper="table5"),
}


# The `cpu` grid: the same tables at CPU scale (small CNN, CIFAR-10 JPEG, 10k training images), without
# the paper's numbers beside them: a different model, data and budget make a per-cell difference meaningless
# (REPRODUCTION.md compares the claims instead). AFD's rows take its default hyperparameters only: the grid's
# Figure 4 sweep varies them.
_CPU = {"model": "small_cnn", "dataset": "cifar10-jpeg"}
_AFD_DEFAULT = {f"hp.{k}": getattr(get_method("afd").Hparams(), k) for k in ("alpha", "beta", "gamma")}
_CPU_SETTING = "SmallCNN, CIFAR-10 (JPEG), CPU-scale budgets"


def _cpu_methods(*names: str) -> list[Sel]:
    out = []
    for n in names:
        if n == "afd":
            out.append(S("AFD", method="afd", **_AFD_DEFAULT))
        elif n == "afa":
            out.append(S("AFA", method="afa", hp_trades_beta=get_method("afa").Hparams().trades_beta))
        elif n == "afa_trades":
            out.append(S("AFA + TRADES", method="afa", hp_trades_beta=6.0))
        else:
            out.extend(_methods(n))
    return out


TABLES.update({
    "cpu_table1": Table(f"Table 1 at CPU scale: all methods, {_CPU_SETTING} (accuracy, %).",
                        rows=_cpu_methods("pgd_at", "trades", "afa", "afa_trades", "|", "free_at", "fgsm_ga", "atas",
                                          "|", "vaft", "rift", "afkd", "arrest", "afd"),
                        cols=ACC, select=_CPU, rank=True),
    "cpu_table3": Table(f"Table 3 at CPU scale: vAFT with the disentangler (+D), the alignment (+A) and both (AFD); "
                        f"{_CPU_SETTING} (accuracy, %).",
                        rows=(CLEAN, Metric("pgd20", "PGD"), AA), row_header=("",),
                        cols=_cpu_methods("vaft", "vaft_d", "vaft_a", "afd"), select=_CPU),
    "cpu_table4": Table(f"Table 4 at CPU scale: natural accuracy (%) of AFD's intrinsic features f1 and confused "
                        f"features f2; Δ = f1 − f2.",
                        rows=[S(("SmallCNN", "CIFAR-10 (JPEG)"), **_CPU)],
                        cols=(Metric("f1_clean", "f1"), Metric("f2_clean", "f2"), Metric("f_delta", "Δ")),
                        row_header=("Model", "Data"), select={"method": "afd", **_AFD_DEFAULT}),
    "cpu_table5": Table(f"Table 5 at CPU scale: training time (seconds), {_CPU_SETTING}: epochs, seconds per "
                        "epoch, and total (the run's own training plus its parent's).",
                        rows=_cpu_methods("standard", "pgd_at", "trades", "free_at", "fgsm_ga", "atas",
                                          "vaft", "rift", "afkd", "arrest", "afd"),
                        cols=(Metric("epochs", "Epoch", 0), Metric("seconds_per_epoch", "Time one", 1),
                              Metric("total_seconds", "Time total", 0)),
                        select=_CPU, device_note=True),
})
# The `cpu20` grid: the fine-tuning rows of the same tables after the paper's 20 fine-tuning epochs, from the cpu
# grid's natural parent (Figure 1a's methods with 2 seeds, Table 3's ablations with 1).
_CPU20_SETTING = "SmallCNN, CIFAR-10 (JPEG), the paper's 20 fine-tuning epochs at CPU scale"
# The same declarations as the cpu grid's, with the cpu20 grid's rows and captions.
_CPU_TABLES = {t: TABLES[f"cpu_{t}"] for t in ("table1", "table3", "table4", "table5")}
TABLES.update({
    "cpu20_table1": replace(_CPU_TABLES["table1"], rows=_cpu_methods("vaft", "afkd", "arrest", "afd"),
                            caption=f"Table 1's fine-tuning rows at CPU scale: {_CPU20_SETTING} (accuracy, %)."),
    "cpu20_table3": replace(_CPU_TABLES["table3"], caption=_CPU_TABLES["table3"].caption.replace(
        _CPU_SETTING, _CPU20_SETTING)),
    "cpu20_table4": replace(_CPU_TABLES["table4"], caption=_CPU_TABLES["table4"].caption.replace(
        "Table 4 at CPU scale:", "Table 4 at CPU scale after 20 fine-tuning epochs:")),
    "cpu20_table5": replace(_CPU_TABLES["table5"], caption=_CPU_TABLES["table5"].caption.replace(
        _CPU_SETTING, _CPU20_SETTING), rows=_cpu_methods("standard", "vaft", "afkd", "arrest", "afd", "vaft_d",
                                                         "vaft_a")),
})
# Grids whose report is several declared tables, in this order (`bench report --grid cpu`).
GRID_TABLES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu_table1", "cpu_table3", "cpu_table4", "cpu_table5"),
    "cpu20": ("cpu20_table1", "cpu20_table3", "cpu20_table4", "cpu20_table5"),
}


def generic_table(df: pd.DataFrame, caption: str) -> Table:
    """Any other grid: one row per method (and hyperparameter variant), Clean / PGD-20 / AA / Avg, one column
    group per model and data set when the grid has several."""
    rows: list[Sel] = []
    for method, g in df.groupby("method", sort=False):
        hp_cols = [c for c in g.columns if c.startswith("hp.") and g[c].notna().any()]
        varying = [c for c in hp_cols if g[c].astype(str).nunique() > 1]
        if not varying:
            rows.append(S(method_label(method), method=method))
            continue
        for values, _ in g.groupby([g[c].astype(str) for c in varying], sort=False):
            values = values if isinstance(values, tuple) else (values,)
            where = {"method": method, **{c: _typed(g[c], v) for c, v in zip(varying, values)}}
            label = method_label(method) + " (" + ", ".join(f"{c[3:]}={v}" for c, v in zip(varying, values)) + ")"
            rows.append(Sel(label, where))
    pairs = list(dict.fromkeys(zip(df.model, df.dataset)))
    groups = [] if len(pairs) <= 1 else [
        S(f"{MODEL_LABELS.get(m, m)} / {DATASET_LABELS.get(d, d)}", model=m, dataset=d) for m, d in pairs]
    return Table(caption, rows=rows, cols=ACC, groups=groups)


def _typed(col: pd.Series, text: str) -> Any:
    for v in col:
        if str(v) == text:
            return v
    return text


# -- building a table -----------------------------------------------------------------------------------------
@dataclass
class Cell:
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
                    cell.paper, cell.paper_note = _paper_value(paper, where, metric.key)
                line.append(cell)
        cells.append(line)
    if table.rank:
        _rank(cells, [c if isinstance(c, Metric) else None for g in groups for c in table.cols])
    notes = _notes(selected, cells)
    if table.device_note:
        done = [r for r in selected.values() if r.status == "done"]
        notes.insert(0, "Measured on " + (runs_per_device(r.device_name or "unknown device" for r in done)
                                          if done else "— (no finished run)") + ".")
        ev = eval_time_note([r for r in selected.values() if r.status == "done"])
        if ev:
            notes.insert(1, ev)
        mem = peak_memory_note(done)
        if mem:
            notes.insert(2 if ev else 1, mem)
    if paper is not None:
        if any(c.paper_note for line in cells for c in line):
            notes.append("† paper number excerpted by the AFD paper from Huang et al. (2023), evaluated with PGD-10.")
        notes.append("paper: AFD (AAAI 2025) as published; Δ = ours − paper.")
    col_labels = [c.label if isinstance(c, Metric) else _label(c.label)[0] for g in groups for c in table.cols]
    return Built(caption=table.caption, row_header=table.row_header,
                 row_labels=[_label(r.label) for r in kept], col_labels=col_labels,
                 groups=[(_label(g.label)[0], len(table.cols)) for g in groups] if table.groups else [],
                 cells=cells, rules=rules, notes=notes, compare=paper is not None)


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


def _paper_value(paper: pd.DataFrame, where: dict[str, Any], key: str) -> tuple[float, str]:
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


# -- rendering ------------------------------------------------------------------------------------------------
def _num(v: float, digits: int) -> str:
    return f"{v:.{digits}f}"


def _value_text(c: Cell, pm: str) -> str:
    if c.n == 0:
        return DASH
    text = _num(c.mean, c.digits)
    if c.n == 1 or (c.digits == 0 and c.std == 0):  # e.g. epochs: identical over seeds by construction
        return text + c.flag
    return text + f" {pm} {_num(c.std, c.digits)}" + c.flag


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
    if c.n == 0 or math.isnan(c.paper):
        return DASH
    d = c.mean - c.paper
    return ("+" if d >= 0 else minus) + _num(abs(d), c.digits)


def render_markdown(b: Built) -> str:
    head = list(b.row_header) + (["" ] if b.compare else [])
    spans = [lab for lab, span in b.groups for _ in range(span)] or [""] * len(b.col_labels)
    head += [f"{g} {c}".strip() for g, c in zip(spans, b.col_labels)]
    lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |",
             "|" + "|".join([":---"] * (len(b.row_header) + b.compare) + ["---:"] * len(b.col_labels)) + "|"]
    for lab, sub, cells in _lines(b):
        texts = []
        for c, kind in cells:
            t = _md_escape(_text(c, kind, "±"))
            if kind == "ours" and c.mark == "best":
                t = f"**{t}**"
            elif kind == "ours" and c.mark == "second":
                t = f"<u>{t}</u>"
            texts.append(t)
        lines.append("| " + " | ".join([_md_escape(x) for x in lab] + ([sub] if b.compare else []) + texts) + " |")
    out = "\n".join(lines) + "\n\n" + _md_escape(b.caption) + "\n"
    if b.notes:
        # Notes as a list; a run's line (starting with a tab) nests under the count it belongs to.
        out += "\n" + "\n".join(("  - " if n.startswith("\t") else "- ") + _md_escape(n.strip())
                                for n in b.notes) + "\n"
    return out


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
    lines += ["\\bottomrule", "\\end{tabular}"]
    if b.notes:
        lines.append("\\par\\smallskip\\parbox{\\linewidth}{\\footnotesize")
        notes = [("\\quad " if n.startswith("\t") else "") + _tex(n.strip()) for n in b.notes]
        lines += [n + "\\\\" for n in notes[:-1]] + [notes[-1] + "}"]
    lines += [f"\\caption{{{_tex(b.caption)}}}", "\\end{table}"]
    return "\n".join(lines) + "\n"


_TEX = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
        "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "—": "---", "–": "--",
        "±": "$\\pm$", "Δ": "$\\Delta$", "−": "$-$", "†": "$^\\dagger$", "‡": "$^\\ddagger$", "×": "$\\times$", "<": "$<$", ">": "$>$"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch if ord(ch) < 128 else "?") for ch in str(s))


def render_csv(b: Built) -> str:
    """Long format, one line per cell: the row's labels, group, column, mean, std, runs averaged, runs selected
    (and the paper's number and the difference with --compare paper); notes as trailing comment lines."""
    recs = []
    spans = [lab for lab, span in b.groups for _ in range(span)] or [""] * len(b.col_labels)
    for lab, line in zip(b.row_labels, b.cells):
        for g, col, c in zip(spans, b.col_labels, line):
            rec = {h or "row": x for h, x in zip(b.row_header, lab)}
            rec.update(group=g, column=col, mean=_fmt_csv(c.mean, c.digits), std=_fmt_csv(c.std, c.digits),
                       n_done=c.n, n_runs=c.n_runs, mark=c.mark)
            if b.compare:
                rec.update(paper=_fmt_csv(c.paper, c.digits), paper_note=c.paper_note,
                           delta=_fmt_csv(c.mean - c.paper, c.digits))
            recs.append(rec)
    buf = io.StringIO()
    pd.DataFrame(recs).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue() + "".join(f"# {'  ' if n.startswith(chr(9)) else ''}{n.strip()}\n" for n in b.notes)


def _fmt_csv(v: float, digits: int) -> str:
    return "" if math.isnan(v) else _num(v, digits)


RENDERERS: dict[str, Callable[[Built], str]] = {"markdown": render_markdown, "latex": render_latex,
                                               "csv": render_csv}


def _sizes_note(df: pd.DataFrame) -> str:
    """Say on how many test images each column was measured when they differ (AutoAttack is the costly one)."""
    sizes = set(df["eval_sizes"]) if "eval_sizes" in df and len(df) else set()
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


def _with_sizes(t: Table, df: pd.DataFrame) -> Table:
    """An accuracy table's caption says on how many test images each column was measured."""
    keys = {m.key for m in (*t.rows, *t.cols) if isinstance(m, Metric)}
    return replace(t, caption=t.caption + _sizes_note(df)) if keys & {"clean", "pgd20", "aa"} else t


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
    if name in GRID_TABLES:
        # one document: tables separated by a blank line (CSV: each table's own header line starts its block)
        return "\n".join(RENDERERS[fmt](build(_with_sizes(TABLES[t], df), df, compare)) for t in GRID_TABLES[name])
    if name in TABLES:
        t = TABLES[name]
    elif name is not None and name.endswith(".toml"):
        spec = load_grid_file(name).table
        t = generic_table(df, spec.get("caption", f"Accuracy (%) of grid {Path(name).stem} on clean, PGD-20 and "
                                                  "AutoAttack inputs; Avg is their mean.") + _sizes_note(df))
        if "metrics" in spec:
            t = replace(t, cols=[m for m in ACC if m.key in spec["metrics"]])
    else:
        what = f"grid {name}" if name else "this grid"
        t = generic_table(df, f"Accuracy (%) of {what} on clean, PGD-20 and AutoAttack inputs; "
                              "Avg is their mean." + _sizes_note(df))
    return RENDERERS[fmt](build(t, df, compare))

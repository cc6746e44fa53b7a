"""The paper's tables, declared once (``TABLES``): which runs a table selects (by method / model / data set /
hparam, never by grid), what its rows and columns are, and which metric each cell shows. The grid only supplies the
runs, so ``--grid table1`` renders Table 1 from whatever runs exist, and a grid without a declared table gets a
generic table (``generic_table``: methods as rows; Clean, PGD-20, AA, Avg per model/data set).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import pandas as pd

from bench.report.frame import matching
from bench.report.labels import DATASET_LABELS, MODEL_LABELS, family, method_label
from methods import get_method


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
                    groups=_datasets(*DATA3), cols=ACC, select={"model": family("resnet18")}, rank=True,
                    paper="table1"),
    "table2": Table("Quantitative evaluations of all methods on WideResNet-34-10 (accuracy, %).",
                    rows=_methods("pgd_at", "trades", "|", "vaft", "rift", "afkd", "arrest", "afd"),
                    groups=_datasets(*DATA3), cols=ACC, select={"model": "wrn34_10"}, rank=True, paper="table2"),
    "table3": Table("vAFT with the disentangler (+D), the feature alignment (+A) and both (AFD); "
                    "ResNet18, CIFAR-10 (accuracy, %).",
                    rows=(CLEAN, Metric("pgd20", "PGD"), AA), row_header=("",),
                    cols=_methods("vaft", "vaft_d", "vaft_a", "afd"),
                    select={"model": family("resnet18"), "dataset": "cifar10"}, paper="table3"),
    "table4": Table("Natural accuracy (%) of the intrinsic features f1 and the confused features f2 of AFD; "
                    "Δ = f1 − f2.",
                    rows=[S((MODEL_LABELS[m], DATASET_LABELS[d]), model=family(m), dataset=d) for m, d in (
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
                    select={"model": family("resnet18"), "dataset": "cifar10"}, device_note=True,
                    paper="table5"),
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
# The `table1_l2` grid: Table 1's CIFAR-10 fine-tuning rows trained under L2 (eps 0.5). The paper has no L2
# numbers, so the table names none (``paper`` unset; build() also refuses the paper's L-inf numbers to any L2 run).
TABLES["table1_l2"] = Table("Table 1's fine-tuning rows trained under the L2 threat model (eps 0.5), ResNet18, "
                            "CIFAR-10 (accuracy, %).",
                            rows=_methods("vaft", "rift", "afkd", "arrest", "afd"), cols=ACC,
                            select={"model": family("resnet18"), "dataset": "cifar10", "norm": "l2"}, rank=True)
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


# -- a grid's own methods in the paper's tables -----------------------------------------------------------------
def _declared_methods(t: Table) -> set[str]:
    return {s.where["method"] for s in (*t.rows, *t.cols) if isinstance(s, Sel) and "method" in s.where}


# The methods the paper reports (any of its tables): they keep to the tables that declare them, so Table 1 rendered
# from runs that include the ablations of Table 3 shows the paper's Table 1, not Table 3's rows as well.
PAPER_METHODS = frozenset(m for t in TABLES.values() if t.paper for m in _declared_methods(t))
NOT_IN_PAPER = "no paper number: not in the paper"


def _is_methods(sels: Sequence[Sel | Metric]) -> bool:
    return bool(sels) and all(s is SEP or (isinstance(s, Sel) and "method" in s.where) for s in sels)


def extra_methods(t: Table, df: pd.DataFrame) -> list[Sel]:
    """What a paper table adds for the runs' methods it does not declare and the paper does not report (a plugin,
    or a built-in such as AFA): one row (or column, in Table 3, whose columns are the methods) per method and
    hyperparameter variant, as in the generic table. Runs that only serve as another run's parent are left out: a
    grid's natural parent is not a method its author asked for. Tables without a method per row or column add
    none."""
    if not (_is_methods(t.rows) or _is_methods(t.cols)):
        return []
    mask = matching(df, t.select)
    mask &= ~df.method.isin(_declared_methods(t) | PAPER_METHODS) & ~df.run_id.isin(set(df.parent_id.dropna()))
    return list(generic_table(df[mask], "").rows) if mask.any() else []


def with_extra_methods(t: Table, df: pd.DataFrame) -> Table:
    """``t`` with ``extra_methods`` after its own rows (a rule between them), or after its own columns."""
    extra = extra_methods(t, df)
    if not extra:
        return t
    return replace(t, rows=[*t.rows, SEP, *extra]) if _is_methods(t.rows) else replace(t, cols=[*t.cols, *extra])


def paper_table_for(df: pd.DataFrame) -> str | None:
    """The paper's accuracy table whose network all the runs use (Table 1: ResNet18, Table 2: WideResNet-34-10), for
    ``--compare paper`` on a grid that is not the paper's own (a grid file); None when no one table covers them."""
    for name, t in TABLES.items():
        want = t.select.get("model")
        if t.paper and t.cols == ACC and set(df.model) <= set(want if isinstance(want, tuple) else (want,)):
            return name
    return None

"""Reading results into one DataFrame, and rendering tables from it.

``load(grid)`` is public for researchers' own analyses: one row per run of the grid (parents included), with
its status, metrics (as percentages) and config fields. Missing and failed runs are rows too, so a table can
show them as "—" and count them, never silently drop them.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.config import RunConfig, run_id
from bench.grids import expand, get_grid
from bench.store import CorruptFile, Store

METRICS = {"clean": "Clean", "pgd20": "PGD-20", "aa": "AA"}


def load(grid: str | list[RunConfig], results: str | Path = "results", seeds: int = 1) -> pd.DataFrame:
    runs = expand(get_grid(grid, seeds) if isinstance(grid, str) else grid)
    store = Store(results)
    rows = []
    for cfg in runs:
        rid = run_id(cfg)
        row = {"run_id": rid, "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed,
               "epochs": cfg.train.epochs, **{f"hp.{k}": v for k, v in cfg.hparams}}
        try:
            res = store.read(rid)
        except CorruptFile as e:
            res, row["status"], row["reason"] = None, "corrupt", f"corrupt result file {e.path}"
        if res is None:
            row.setdefault("status", "missing")
            row.setdefault("reason", "no result file")
        else:
            row["status"], row["reason"] = res["status"], res.get("reason")
            m = res.get("metrics", {})
            for k in ("clean", "pgd20", "aa", "feature_gap", "f1_clean", "f2_clean"):
                if isinstance(m.get(k), (int, float)):
                    row[k] = 100 * m[k] if k != "feature_gap" else m[k]
            row["violations"] = "; ".join(m.get("violations", []))
            row["seconds_per_epoch"] = res.get("seconds_per_epoch")
            row["train_seconds"] = res.get("train_seconds")
            row["device_name"] = res.get("device_name")
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_table(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Methods as rows; Clean, PGD-20, AA and their mean (Avg) as columns; mean +- std over seeds."""
    notes = []
    rows = {}
    for method, g in df.groupby("method", sort=False):
        done = g[g.status == "done"]
        for _, r in g[g.status != "done"].iterrows():
            notes.append(f"{method} (run {r.run_id}, seed {r.seed}): {r.status} — {r.reason}")
        row = {}
        for key, label in METRICS.items():
            vals = done[key].dropna() if key in done else pd.Series(dtype=float)
            if len(vals) == 0:
                row[label] = "—"
            elif len(vals) == 1:
                row[label] = f"{vals.iloc[0]:.2f}"
            else:
                row[label] = f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}"
        if all(key in done and done[key].notna().all() and len(done) for key in METRICS):
            row["Avg"] = f"{done[list(METRICS)].mean(axis=1).mean():.2f}"
        else:
            row["Avg"] = "—"
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index"), notes


def render(table: pd.DataFrame, notes: list[str], fmt: str, caption: str = "") -> str:
    if fmt == "csv":
        return table.to_csv(index_label="method")
    if fmt == "markdown":
        text = table.to_markdown(tablefmt="github")
        if notes:
            text += "\n\n" + "\n".join(f"- {n}" for n in notes)
        return text + "\n"
    if fmt == "latex":
        cols = list(table.columns)
        lines = ["\\begin{table}[t]", "\\centering", f"\\begin{{tabular}}{{l{'c' * len(cols)}}}", "\\toprule",
                 "Method & " + " & ".join(cols) + " \\\\", "\\midrule"]
        for name, row in table.iterrows():
            cells = [str(v).replace("±", "$\\pm$") for v in row]
            lines.append(_tex(str(name)) + " & " + " & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        if caption:
            lines.append(f"\\caption{{{_tex(caption)}}}")
        lines.append("\\end{table}")
        text = "\n".join(lines) + "\n"
        if notes:
            text += "".join(f"% {n}\n" for n in notes)
        return text
    raise ValueError(f"unknown format {fmt}")


def _tex(s: str) -> str:
    return s.replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


def report(grid: str, results: str | Path, fmt: str = "markdown", seeds: int = 1) -> str:
    df = load(grid, results, seeds)
    table, notes = accuracy_table(df)
    return render(table, notes, fmt, caption=f"Grid {grid}: accuracy (%) on clean, PGD-20 and AutoAttack inputs")

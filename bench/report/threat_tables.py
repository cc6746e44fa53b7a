"""The columns and tables of the threat models beyond L-inf (bench/eval/threats.py), where the results have them.

A table whose columns (or rows) are the accuracies gets "L2 PGD-20", "L2 AA" and "Corr." (the mean over every
corruption and severity) beside them when one of its runs measured them; and the corruptions are broken down in
two more tables: per corruption (the mean over its five severities) and per severity (the mean over the
corruptions). Results without them change nothing: every table stays as it was. The paper reports L-inf only, so
these cells never have a paper number beside them.
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd

from bench.data.corruptions import CORRUPTIONS, SEVERITIES
from bench.report.declarations import SEP, Metric, Sel, Table
from bench.report.frame import matching

L2_PGD, L2_AA, CORR = Metric("l2_pgd20", "L2 PGD-20"), Metric("l2_aa", "L2 AA"), Metric("corr_mean", "Corr.")
THREAT_METRICS = (L2_PGD, L2_AA, CORR)
ACCURACIES = ("clean", "pgd20", "aa")
SHORT = {"gaussian_noise": "Gauss.", "shot_noise": "Shot", "impulse_noise": "Impulse", "defocus_blur": "Defocus",
         "glass_blur": "Glass", "motion_blur": "Motion", "zoom_blur": "Zoom", "snow": "Snow", "frost": "Frost",
         "fog": "Fog", "brightness": "Bright.", "contrast": "Contrast", "elastic_transform": "Elastic",
         "pixelate": "Pixel.", "jpeg_compression": "JPEG"}


def _measured(df: pd.DataFrame, key: str, select: dict) -> pd.DataFrame:
    """The done runs the table selects that hold a value of ``key``."""
    if key not in df:
        return df.iloc[0:0]
    runs = df[matching(df, select) & (df.status == "done")]
    return runs[runs[key].notna()]


def _is_accuracies(items) -> bool:
    return any(isinstance(m, Metric) and m.key in ACCURACIES for m in items)


def with_threat_metrics(t: Table, df: pd.DataFrame) -> Table:
    """``t`` with the threat models' accuracies after its own where its runs measured them."""
    extra = [m for m in THREAT_METRICS if len(_measured(df, m.key, t.select))]
    if not extra:
        return t
    if _is_accuracies(t.cols):
        return replace(t, cols=[*t.cols, *extra])
    if _is_accuracies(t.rows):
        return replace(t, rows=[*t.rows, *extra])
    return t


def threat_notes(df: pd.DataFrame, t: Table) -> list[str]:
    """What the threat columns of ``t`` measured: the L2 radius and the corruption set (published or generated)."""
    notes = []
    l2 = _measured(df, "l2_aa", t.select)
    l2 = l2 if len(l2) else _measured(df, "l2_pgd20", t.select)
    if len(l2):
        radii = ", ".join(f"{e:g}" for e in sorted(set(l2.l2_eps.dropna())))
        notes.append(f"L2 PGD-20, L2 AA: the L2 threat model at radius {radii} (PGD-20 with step eps/4; AutoAttack "
                     "standard with norm L2); not in the paper.")
    corr = _measured(df, "corr_mean", t.select)
    if len(corr):
        notes.append(f"Corr.: the mean accuracy over every corruption and severity of {_sets(corr)}; not in the "
                     "paper. A set named -generated is made here (docs/evaluation-threat-models.md), not the "
                     "published one: its numbers are not comparable with published CIFAR-10-C numbers.")
    return notes


def _sets(runs: pd.DataFrame) -> str:
    return ", ".join(sorted({str(v) for v in runs.corr_label.dropna()}))


def breakdown_tables(t: Table, df: pd.DataFrame) -> list[Table]:
    """Per corruption and per severity, for the runs ``t`` selects that measured corruptions: one row per row of
    ``t`` (and column group, when it has several), none when no run measured them."""
    runs = _measured(df, "corr_mean", t.select)
    if not len(runs):
        return []
    if _is_accuracies(t.cols):
        rows, header = list(t.rows), t.row_header
    else:  # the methods are the columns (Table 3): they become the rows
        rows, header = [c for c in t.cols if isinstance(c, Sel)], ("Method",)
    if t.groups:
        rows = [SEP if r is SEP else Sel((*_tuple(r.label), _tuple(g.label)[0]), {**r.where, **g.where})
                for g in t.groups for r in rows]
        header = (*header, "Data")
    names = [c for c in CORRUPTIONS if f"corr.{c}" in runs and runs[f"corr.{c}"].notna().any()]
    sets = _sets(runs)
    per_corruption = Table(f"Accuracy (%) per corruption of {sets}, the mean over its five severities.", rows=rows,
                           cols=[Metric(f"corr.{c}", SHORT[c], 1) for c in names], select=t.select, row_header=header)
    per_severity = Table(f"Accuracy (%) per severity of {sets}, the mean over its {len(names)} corruptions.",
                         rows=rows, cols=[Metric(f"corr.s{s}", f"s{s}") for s in SEVERITIES] + [CORR],
                         select=t.select, row_header=header)
    return [per_corruption, per_severity]


def _tuple(label) -> tuple[str, ...]:
    return label if isinstance(label, tuple) else (label,)

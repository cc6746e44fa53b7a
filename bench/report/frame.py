"""Reading a grid's results into one DataFrame, and the notes the tables draw from it.

``load(grid)`` is public for researchers' own analyses: one row per run of the grid (parents included), with
its status, metrics (accuracies as percentages) and config fields. Missing, failed and corrupt runs are rows
too, so a table can show them as "—" and count them, never silently drop them. ``stale`` marks a done run
computed by code that changed since (bench/core/fingerprint.py; False where its result recorded no fingerprint).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.config import RunConfig, run_id
from bench.core.store import CorruptFile, Store
from bench.grid.grids import get_grid
from bench.grid.runs import expand
from bench.train.result import stale_modules

EVAL_MEASURES = ("clean", "pgd20", "aa")  # the keys of a result's metrics.seconds
TEST_COUNTS = ("n_clean", "n_pgd", "n_aa")  # test images each accuracy was measured on, as its result records them
# Columns every DataFrame has, whatever its results recorded (a grid of missing runs still has them, as NaN / None).
FLOAT_COLUMNS = ("clean", "pgd20", "aa", "l2_pgd20", "l2_aa", "corr_mean", "l2_eps", "f1_clean", "f2_clean", "feature_gap", "feature_gap_se", "seconds_per_epoch",
                 "train_seconds", "wall_seconds", "wall_processes", "probe_seconds", "peak_train_bytes",
                 "peak_eval_bytes", *(f"eval_s_{k}" for k in EVAL_MEASURES), *TEST_COUNTS)
OBJECT_COLUMNS = ("reason", "device_name", "violations", "unreliable", "epoch_log", "feature_gap_of", "peak_train_of",
                  "peak_eval_of", "corr_label")


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
    percent; feature_gap as measured; n_clean / n_pgd / n_aa the test images behind them), timings (train_seconds,
    seconds_per_epoch, total_seconds = own + ancestors' training time, as the paper's Table 5 counts it),
    device_name, the per-epoch log, and ``stale`` (a done run whose code changed since it was computed)."""
    runs = expand(get_grid(grid, seeds) if isinstance(grid, str) else grid)
    store = Store(results)
    df = pd.DataFrame([{**_config_fields(cfg), **_result_fields(store, run_id(cfg))} for cfg in runs])
    for k in FLOAT_COLUMNS:
        if k not in df:
            df[k] = math.nan
        df[k] = df[k].astype(float)
    for k in OBJECT_COLUMNS:
        if k not in df:
            df[k] = None
    df["stale"] = df["stale"].fillna(False).astype(bool) if "stale" in df else False
    # Derived per run, before any averaging over seeds (the paper's Avg is the mean of the three accuracies).
    df["avg"] = df[["clean", "pgd20", "aa"]].mean(axis=1, skipna=False)
    df["f_delta"] = df["f1_clean"] - df["f2_clean"]
    df["total_seconds"] = _total_seconds(df)
    df["eval_seconds"] = df[[f"eval_s_{k}" for k in EVAL_MEASURES]].sum(axis=1, min_count=1)
    # A run without recorded counts (not finished) counts the images its config asks for.
    for i, k in enumerate(TEST_COUNTS):
        df[k] = df[k].fillna(df["eval_sizes"].map(lambda sizes: float(sizes[i])))
    return df


def _config_fields(cfg: RunConfig) -> dict[str, Any]:
    """A run's identity and the config fields the tables select by."""
    return {"run_id": run_id(cfg), "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset,
            "seed": cfg.seed, "epochs": cfg.train.epochs,
            "parent_id": run_id(cfg.parent) if cfg.parent is not None else None,
            "eval_sizes": (cfg.eval.n_clean, cfg.eval.n_pgd, cfg.eval.n_aa),
            "eps": cfg.eps, "norm": cfg.norm, "pgd_step_size": cfg.eval.pgd_step_size,
            **{f"hp.{k}": v for k, v in cfg.hparams}}


def _result_fields(store: Store, rid: str) -> dict[str, Any]:
    """What a run's result file says: status and reason, metrics, timings, device, peak memory, per-epoch log (only
    status and reason for a missing or corrupt file)."""
    try:
        res = store.read(rid)
    except CorruptFile as e:
        # The file's name, not its absolute path: reports are compared and shared across machines.
        why = str(e).replace(str(e.path), f"runs/{e.path.name}")
        return {"status": "corrupt", "reason": f"corrupt result file {why}"}
    if res is None:
        return {"status": "missing", "reason": "no result file"}
    row: dict[str, Any] = {"status": res.get("status"), "reason": res.get("reason"),
                           "stale": res.get("status") == "done" and bool(stale_modules(res))}
    m = res.get("metrics") or {}
    for k in ("clean", "pgd20", "aa", "f1_clean", "f2_clean"):
        if _is_num(m.get(k)):
            row[k] = 100.0 * m[k]
    if _is_num(m.get("feature_gap")):
        row["feature_gap"] = float(m["feature_gap"])
    if _is_num(m.get("feature_gap_se")):
        row["feature_gap_se"] = float(m["feature_gap_se"])
    row["feature_gap_of"] = m.get("feature_gap_of")
    for k in TEST_COUNTS:
        if _is_num(m.get(k)):
            row[k] = float(m[k])
    row.update(threat_fields(m))
    row["violations"] = "; ".join(m.get("violations") or [])
    row["unreliable"] = "; ".join(m.get("unreliable") or [])
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
    return row


def threat_fields(m: dict) -> dict[str, Any]:
    """The columns of the threat models beyond L-inf (bench/eval/threats.py), in percent: ``l2_pgd20``, ``l2_aa``
    and ``l2_eps``; ``corr_mean``, ``corr_label`` (which set: published or generated), ``corr.<corruption>`` (the
    mean over its severities) and ``corr.s<k>`` (the mean over the corruptions at severity k)."""
    row: dict[str, Any] = {}
    l2 = m.get("l2") or {}
    for k in ("pgd20", "aa"):
        if _is_num(l2.get(k)):
            row[f"l2_{k}"] = 100.0 * l2[k]
    if _is_num(l2.get("eps")):
        row["l2_eps"] = float(l2["eps"])
    corr = m.get("corruptions") or {}
    acc = corr.get("accuracy") or {}
    if _is_num(corr.get("mean")) and acc:
        row["corr_mean"], row["corr_label"] = 100.0 * corr["mean"], corr.get("label")
        for name, per_severity in acc.items():
            row[f"corr.{name}"] = 100.0 * statistics.fmean(per_severity)
        for k, at in enumerate(zip(*acc.values()), start=1):
            row[f"corr.s{k}"] = 100.0 * statistics.fmean(at)
    return row


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


def matching(df: pd.DataFrame, where: dict[str, Any]) -> pd.Series:
    """The rows of ``df`` with every column of ``where`` equal to its value (a tuple: one of its values); none
    when ``df`` lacks one of the columns."""
    mask = pd.Series(True, index=df.index)
    for k, v in where.items():
        if k not in df:
            return pd.Series(False, index=df.index)
        mask &= df[k].isin(v) if isinstance(v, tuple) else df[k] == v
    return mask

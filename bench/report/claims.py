"""The AFD paper's six claims, checked against a grid's result files (``bench report --grid cpu --claims``).

Each claim gets the numbers that decide it, computed from the result files only (so the text regenerates byte
for byte), the paper's number where it has one, and a verdict under one stated rule:

  a difference is *real* when it is larger than twice its noise, where the noise of a difference of two means
  is the larger of (a) the seed-to-seed spread, sqrt(s_a^2 / n_a + s_b^2 / n_b) with s the sample standard
  deviation over seeds, and (b) the test-sample noise, sqrt(p_a (1 - p_a) / N + p_b (1 - p_b) / N) for
  accuracies measured on N test images (binomial standard error).

With two seeds a standard deviation is itself very uncertain, which is why the binomial floor is there: at
N = 200 (AutoAttack) one accuracy near 30% carries about 3.2 points of sampling noise on its own.

The claims (AFD, Zhou et al., AAAI 2025):
  1. AFD's robust accuracy (PGD-20, AA) is above the other fine-tuning methods' (Table 1).
  2. The feature gap grows during fine-tuning under vAFT, AFKD and ARREST and stays flat under AFD (Figure 1a).
  3. AFD's intrinsic features f1 classify far better than its confused features f2 (Table 4).
  4. AFD's training time is close to vAFT's (Table 5: 46 s against 37 s per epoch, x1.24).
  5. AFD is insensitive to alpha, beta and gamma (Figure 4: clean and PGD-20 vary by less than 0.6 points).
  6. Both of AFD's parts are needed: AFD above vAFT with the disentangler alone (+D) and with the alignment
     alone (+A) (Table 3, the ablation).

A verdict on accuracies (claims 1, 3, 5 and 6) that rests on a run whose evaluation's reliability indicators tripped
says so at the end of its line, naming the run and the indicators, and such a run's numbers in the claims' tables
carry the tables' mark; claims 2 and 4 rest on the per-epoch probes and the training times, not on the final
evaluation the indicators check.

A claim whose methods the grid does not run says so in one line (the `cpu20` grid has no RiFT and no sweep).
A method from outside the suite (a plugin) that fine-tunes a natural parent joins "the fine-tuning methods" of
claims 1 and 2: AFD is measured against it as against vAFT, AFKD and ARREST.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.core.config import ConfigError
from bench.report.build import load_paper, paper_value
from bench.report.frame import load
from bench.report.labels import (
    DATASET_LABELS,
    MODEL_FAMILIES,
    MODEL_LABELS,
    UNRELIABLE,
    UNRELIABLE_WORDS,
    method_label,
    n_runs,
    runs_per_device,
)
from bench.report.noise import binomial_noise, noise, verdict
from bench.report.plots import at_defaults, hparam_sweeps
from bench.report.render import markdown_table
from methods import REGISTRY, plugins, resolve_hparams

FINETUNE = ("vaft", "rift", "afkd", "arrest", "afd")
GAP_METHODS = ("vaft", "afkd", "arrest", "afd")
GAP_OTHERS = ("vaft", "afkd", "arrest")  # the methods under which the gap grows, in the paper
ABLATION = ("vaft", "vaft_d", "vaft_a", "afd")
SWEEP = ("alpha", "beta", "gamma")


def _f(v: float, d: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def _ms(vals: pd.Series, d: int = 2) -> str:
    vals = vals.dropna()
    if not len(vals):
        return "—"
    if len(vals) == 1:
        return _f(float(vals.iloc[0]), d)
    return f"{vals.mean():.{d}f} ± {vals.std(ddof=1):.{d}f}"


def unreliable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs among ``runs`` whose evaluation's reliability indicators tripped (once each)."""
    if "unreliable" not in runs:
        return runs.iloc[:0]
    return runs[runs.unreliable.map(lambda v: isinstance(v, str) and bool(v))].drop_duplicates("run_id")


def _rests_on(*groups: pd.DataFrame) -> str:
    """What a verdict's line adds when one of the runs it rests on has an evaluation potentially unreliable: the
    runs and the indicators tripped (nothing where none tripped or the results predate the indicators)."""
    bad = unreliable_runs(pd.concat(groups)) if groups else pd.DataFrame()
    if not len(bad):
        return ""
    return (f" Rests on an {UNRELIABLE_WORDS} ({UNRELIABLE}): "
            + "; ".join(f"{method_label(r.method)} seed {r.seed} (run {r.run_id}: {r.unreliable})"
                        for r in bad.itertuples()) + ".")


def _ms_marked(g: pd.DataFrame, key: str) -> str:
    """``_ms`` of a column, with the tables' mark where one of its runs' evaluation is potentially unreliable."""
    return _ms(g[key]) + (UNRELIABLE if len(unreliable_runs(g[g[key].notna()])) else "")


def _paper(name: str, method: str, key: str) -> float:
    """The paper's number for ResNet18 on CIFAR-10 (the setting its claims are made in)."""
    try:
        paper = load_paper(name)
    except FileNotFoundError:
        return math.nan
    return paper_value(paper, {"method": method, "model": "resnet18", "dataset": "cifar10"}, key)[0]


def finetune_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The paper's fine-tuning methods, then those of ``methods`` that come from outside the suite (a plugin) and
    fine-tune a natural parent, as the paper's AFT methods do (in the order given)."""
    own = [m for m in dict.fromkeys(methods) if m not in FINETUNE and m in REGISTRY
           and plugins.origin(m) != "afd-bench" and REGISTRY[m].parent == "natural"]
    return FINETUNE + tuple(own)


def claims(runs: str | list, results: str | Path, name: str | None = None) -> str:
    """The claims block of a grid's runs (a grid's name, or its expanded runs as ``bench run`` makes them, with
    ``--seeds`` and ``--set`` applied); ``name`` is the grid named in the header."""
    df = load(runs, results)
    other = sorted(set(df.norm) - {"linf"})
    if other:  # the claims and the paper's numbers beside them are L-inf ones: never set against another threat model
        raise ConfigError(f"--claims checks the paper's claims, made under L-inf (eps 8/255); runs of this grid train "
                          f"under norm {', '.join(other)}: render its table without --claims")
    finetune = finetune_methods(list(df.method))
    # One setting (architecture x data set): the one with the most fine-tuning runs (the cpu grid has only one).
    # An architecture is the paper's name for it: its rows ran on their code's network of that name (labels.family).
    ft = df[df.method.isin(finetune)]
    if len(ft):
        arch = ft.model.map(lambda m: next((a for a, fam in MODEL_FAMILIES.items() if m in fam), m))
        model, dataset = ft.assign(arch=arch).groupby(["arch", "dataset"]).size().sort_values(
            ascending=False, kind="stable").index[0]
        df = df[df.model.isin(MODEL_FAMILIES.get(model, (model,))) & (df.dataset == dataset)]
    done = df[df.status == "done"]
    defaults = done[at_defaults(done)] if len(done) else done
    sizes = {k: int(v) for k, v in zip(("clean", "pgd20", "aa"), done.eval_sizes.iloc[0])} if len(done) else {}
    name = name or (runs if isinstance(runs, str) else "<grid>")
    out = ["## The claims, measured (generated by `python -m bench report --grid "
           f"{name} --claims`; do not edit by hand)", ""]
    if len(ft):
        out += [f"Setting: {MODEL_LABELS.get(model, model)}, {DATASET_LABELS.get(dataset, dataset)}.", ""]
    n_bad = int((df.status != "done").sum())
    n_viol = int(done.violations.fillna("").astype(bool).sum())
    n_unreliable = len(unreliable_runs(done))
    out += [f"Runs: {len(done)} of {len(df)} finished"
            + (f" ({n_bad} not finished: the verdicts below are provisional)" if n_bad else "")
            + f"; {len(done) - n_viol} of {len(done)} pass the order check AA <= PGD-20 <= clean"
            + (f"; {n_unreliable} of {len(done)} with an {UNRELIABLE_WORDS} ({UNRELIABLE}: the verdicts that rest "
               "on them say so)" if n_unreliable else "") + ".",
            _compute_line(df, done),
            f"Test images: clean {sizes.get('clean', '—')}, PGD-20 {sizes.get('pgd20', '—')}, "
            f"AutoAttack {sizes.get('aa', '—')}. Noise rule: a difference is real when it exceeds twice the larger "
            "of its seed spread and its test-sample (binomial) error.", ""]
    in_grid = set(df.method)
    out += _claim1(defaults, sizes, in_grid, finetune) + _claim2(defaults, df, finetune[len(FINETUNE):]) + \
        _claim3(defaults) + _claim4(defaults) + \
        _claim5(done, defaults, sizes) + _claim6(defaults, sizes, in_grid)
    return "\n".join(out).rstrip() + "\n"


def _compute_line(df: pd.DataFrame, done: pd.DataFrame) -> str:
    """Where the wall time went, from each result's recorded seconds: training, the final evaluation's measurements,
    the per-epoch probes, and the rest (loading data and models, exporting, checkpoints)."""
    train = float(done.train_seconds.sum())
    ev = {k: float(done[f"eval_s_{k}"].sum(min_count=1)) if f"eval_s_{k}" in done else math.nan
          for k in ("clean", "pgd20", "aa")}
    probes = float(done.probe_seconds.sum()) if "probe_seconds" in done else 0.0
    names = done.device_name.dropna()
    devices = names.iloc[0] if names.nunique() == 1 else runs_per_device(names)  # one device: just its name
    if any(math.isnan(v) for v in ev.values()):  # results written before per-measurement seconds were recorded
        wall = float(done.wall_seconds.sum())
        return (f"Compute: the runs' wall time adds up to {wall / 3600:.2f} h (training {train / 3600:.2f} h, "
                f"the rest is evaluation) on {devices}.")
    # Results written before wall time was carried across processes ("wall_processes" absent) hold only their last
    # process's wall time: where a run was resumed in another process that is less than its measured parts, and
    # the parts are counted instead (said in the line).
    parts = (done.train_seconds + done[[f"eval_s_{k}" for k in ("clean", "pgd20", "aa")]].sum(axis=1)
             + (done.probe_seconds if "probe_seconds" in done else 0.0))
    legacy = done.wall_processes.isna() & (done.wall_seconds < parts)
    wall = float(done.wall_seconds.where(~legacy, parts).sum())
    total_ev = sum(ev.values())
    rest = wall - train - total_ev - probes
    note = (f" ({n_runs(int(legacy.sum()))} resumed in another process before wall time was carried across "
            "processes: for them the sum of their measured parts)") if legacy.any() else ""
    return (f"Compute: the runs' wall time adds up to {wall / 3600:.2f} h on {devices}{note}: training "
            f"{train / 3600:.2f} h, final evaluation {total_ev / 3600:.2f} h (clean {ev['clean'] / 60:.1f} min, PGD-20 "
            f"with the feature gap {ev['pgd20'] / 3600:.2f} h, AutoAttack {ev['aa'] / 3600:.2f} h), per-epoch probes "
            f"{probes / 3600:.2f} h, other {rest / 3600:.2f} h.")


def _by(df: pd.DataFrame, method: str) -> pd.DataFrame:
    return df[df.method == method].sort_values("seed")


def _claim1(df: pd.DataFrame, sizes: dict, in_grid: set, finetune: tuple[str, ...]) -> list[str]:
    out = ["### 1. AFD's robust accuracy above the other fine-tuning methods (Table 1)", ""]
    out += _accuracy_table(df, [m for m in finetune if m in in_grid], "table1") + [""]
    afd = _by(df, "afd")
    for key, label in (("pgd20", "PGD-20"), ("aa", "AA")):
        others = [m for m in finetune if m != "afd" and len(_by(df, m))]
        if not len(afd) or not others:
            out.append(f"- {label}: not measured.")
            continue
        best = max(others, key=lambda m: _by(df, m)[key].mean())
        b = _by(df, best)[key]
        diff = afd[key].mean() - b.mean()
        nz = noise(afd[key], b, sizes.get(key, 1))
        out.append(f"- {label}: AFD {afd[key].mean():.2f} vs the best other, {method_label(best)} {b.mean():.2f}: "
                   f"difference {diff:+.2f}, noise {nz:.2f} -> {verdict(diff, nz)}." + _rests_on(afd, _by(df, best)))
    out.append("")
    return out


def _accuracy_table(df: pd.DataFrame, methods: list[str], paper_table: str) -> list[str]:
    """Clean, PGD-20 and AA of each method (mean ± std over its seeds) beside the paper's (RN18, CIFAR-10)."""
    rows = []
    for m in methods:
        g = _by(df, m)
        paper = " / ".join(_f(_paper(paper_table, m, k)) for k in ("clean", "pgd20", "aa"))
        rows.append([method_label(m), str(len(g)), *(_ms_marked(g, k) for k in ("clean", "pgd20", "aa")), paper])
    return markdown_table(["Method", "seeds", "Clean", "PGD-20", "AA", "paper Clean / PGD-20 / AA (RN18, CIFAR-10)"],
                          "lrrrrl", rows, pad_empty=False)


def _gap_table(df: pd.DataFrame, method: str, key: str = "feature_gap") -> np.ndarray:
    """Seeds x epochs of the per-epoch feature gap (``key="feature_gap_se"``: its test-sample SE; NaN where
    missing)."""
    curves = [{e["epoch"]: e[key] for e in (log or []) if isinstance(e.get("feature_gap"), (int, float))
               and isinstance(e.get(key), (int, float))} for log in _by(df, method).epoch_log]
    curves = [c for c in curves if c]
    epochs = sorted({e for c in curves for e in c})
    return np.array([[c.get(e, np.nan) for e in epochs] for c in curves]) if curves else np.zeros((0, 0))


def _claim2(df: pd.DataFrame, everything: pd.DataFrame, own: tuple[str, ...] = ()) -> list[str]:
    """``own``: fine-tuning methods from outside the suite, among "the others" beside vAFT, AFKD and ARREST."""
    methods, others = GAP_METHODS + own, GAP_OTHERS + own
    out = ["### 2. The feature gap grows under vAFT / AFKD / ARREST and stays flat under AFD (Figure 1a)", "",
           "Mean L-inf distance between the features each method classifies from (f1 = D1 g for AFD, the last "
           "hidden layer otherwise; on the evaluated model) of clean and PGD-20 test images, after each epoch (per "
           "seed), and the change from the first to the last epoch.", ""]
    rows, changes = [], {}
    for m in methods:
        t = _gap_table(df, m)
        if not t.size:
            rows.append([method_label(m), "no per-epoch gap recorded", "—"])
            continue
        seeds = "; ".join(" -> ".join(_f(v, 3) for v in row) if len(row) <= 5 else
                          f"{_f(row[0], 3)} -> ... -> {_f(row[-1], 3)} ({len(row)} epochs, max {_f(np.nanmax(row), 3)})"
                          for row in t)
        ch = t[:, -1] - t[:, 0]
        changes[m] = ch
        rows.append([method_label(m), seeds, f"{np.nanmean(ch):+.3f}"])
    parents = everything[everything.run_id.isin(set(df[df.method.isin(methods)].parent_id.dropna()))]
    for _, p in parents.iterrows():
        rows.append([f"(parent: {method_label(p.method)}, final evaluation)",
                     f"{_f(p.feature_gap, 3)} on {p.eval_sizes[1]} images", ""])
    out += markdown_table(["Method", "gap per epoch (each seed)", "change first -> last (mean over seeds)"], "llr",
                          rows, pad_empty=False) + [""]
    grows = [m for m in others if m in changes and np.all(changes[m] > 0)]
    shrinks = [m for m in others if m in changes and not np.all(changes[m] > 0)]
    out.append(f"- Ends above its first epoch on every seed (the sign alone; the noise rule is below): "
               f"{', '.join(method_label(m) for m in grows) or 'none'}"
               + (f"; not on every seed: {', '.join(method_label(m) for m in shrinks)}" if shrinks else "") + ".")
    if "afd" in changes and changes.keys() - {"afd"}:
        afd = float(np.nanmean(changes["afd"]))
        rest = {m: float(np.nanmean(c)) for m, c in changes.items() if m != "afd"}
        flatter = all(abs(afd) < abs(v) for v in rest.values())
        out.append(f"- AFD's change {afd:+.3f} against {', '.join(f'{method_label(m)} {v:+.3f}' for m, v in rest.items())}"
                   f": AFD's gap is {'the flattest' if flatter else 'not the flattest'}.")
        levels = {m: float(np.nanmean(_gap_table(df, m)[:, -1])) for m in changes}
        out.append("- Final-epoch gap level: " + ", ".join(f"{method_label(m)} {v:.3f}" for m, v in levels.items())
                   + ".")
    out += gap_verdicts(df, [m for m in methods if m in changes], others)
    out.append("")
    return out


def gap_change(df: pd.DataFrame, method: str) -> tuple[float, float, float, int] | None:
    """A method's gap change from its first to its last epoch (mean over seeds), the noise of that change, its
    largest rise above the first epoch (mean over seeds of max - first), and the epoch of the mean curve's maximum.

    The noise is the largest of three standard errors of that change:
      - seeds: the seed-to-seed SE of the changes (std / sqrt(k), k >= 2 seeds);
      - test images: sqrt(se_first^2 + se_last^2) from the recorded SEs of the two gaps (averaged over seeds, not
        divided by their number: every seed is measured on the same test images, so that error does not average
        out; the two gaps are measured on the same images, which correlates them, so taking them as independent
        over-states it);
      - training jitter (3 or more epochs): the standard deviation of the epoch-to-epoch differences of one seed's
        curve, which is the noise of a difference of two epochs' gaps when the trend is slow against the jitter
        (averaged over seeds, divided by sqrt(k): each seed trains on its own). A gap moves from one epoch to the
        next by several test-sample SEs (the model changes, not only the sample), so one seed's first and last
        epochs alone would over-read a trend."""
    t, se = _gap_table(df, method), _gap_table(df, method, "feature_gap_se")
    if not t.size or t.shape[1] < 2 or se.shape != t.shape:
        return None
    ch = t[:, -1] - t[:, 0]
    test = float(np.nanmean(np.sqrt(se[:, 0] ** 2 + se[:, -1] ** 2)))
    seed = float(np.std(ch, ddof=1) / math.sqrt(len(ch))) if len(ch) > 1 else 0.0
    jitter = float(np.nanmean([np.std(np.diff(row), ddof=1) for row in t]) / math.sqrt(len(t))) if t.shape[1] > 2 else 0.0
    mean = np.nanmean(t, axis=0)
    return (float(np.mean(ch)), max(seed, test, jitter), float(np.mean(np.nanmax(t, axis=1) - t[:, 0])),
            int(np.argmax(mean)) + 1)


def gap_verdicts(df: pd.DataFrame, methods: list[str], others: Sequence[str] = GAP_OTHERS) -> list[str]:
    """The noise rule on each method's change first -> last: grows, falls, or flat within noise; the verdict, that
    it grows under ``others`` and stays flat under AFD."""
    parts, says = [], {}
    for m in methods:
        got = gap_change(df, m)
        if got is None:
            continue
        ch, nz, rise, at = got
        says[m] = "flat within noise" if abs(ch) <= 2 * nz else ("grows" if ch > 0 else "falls")
        parts.append(f"{method_label(m)} {ch:+.3f} (noise {nz:.3f}; at most {rise:+.3f} above the first epoch, the "
                     f"mean curve's peak at epoch {at}) -> {says[m]}")
    if not parts:
        return []
    out = ["- Noise rule on the change first -> last (noise: the largest of the seed SE of the changes, the "
           "test-sample SE of the two gaps taken as independent, and the curves' epoch-to-epoch jitter): "
           + "; ".join(parts) + "."]
    base = [m for m in others if m in says]
    if "afd" in says and base:
        grows = all(says[m] == "grows" for m in base)
        flat = says["afd"] == "flat within noise"
        out.append(f"- Verdict: the gap grows under {', '.join(method_label(m) for m in base)}: "
                   f"{'holds' if grows else 'does not hold'}; it stays flat under AFD: {'holds' if flat else 'does not hold'}.")
    return out


def _claim3(df: pd.DataFrame) -> list[str]:
    afd = _by(df, "afd")
    out = ["### 3. AFD's intrinsic features f1 classify far better than its confused features f2 (Table 4)", ""]
    if not len(afd) or afd.f1_clean.isna().all():
        return out + ["- not measured.", ""]
    d = afd.f1_clean - afd.f2_clean
    nz = noise(afd.f1_clean, afd.f2_clean, int(afd.eval_sizes.iloc[0][0]))
    out += [f"- f1 {_ms(afd.f1_clean)}, f2 {_ms(afd.f2_clean)}, Δ = f1 − f2 {_ms(d)} (seeds: "
            + ", ".join(f"{v:.2f}" for v in d) + f"); paper (RN18, CIFAR-10): f1 {_f(_paper('table4', 'afd', 'f1_clean'))}, "
            f"f2 {_f(_paper('table4', 'afd', 'f2_clean'))}, Δ {_f(_paper('table4', 'afd', 'f_delta'))}.",
            f"- Noise {nz:.2f} -> {verdict(float(d.mean()), nz)}." + _rests_on(afd), ""]
    return out


def _claim4(df: pd.DataFrame) -> list[str]:
    out = ["### 4. AFD's training time close to vAFT's (Table 5)", ""]
    afd, vaft = _by(df, "afd"), _by(df, "vaft")
    if not len(afd) or not len(vaft):
        return out + ["- not measured.", ""]

    def per_epoch(g: pd.DataFrame) -> list[float]:
        return [e["seconds"] for log in g.epoch_log for e in (log or []) if isinstance(e.get("seconds"), (int, float))]

    def show(xs: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in xs) if len(xs) <= 8 else (
            f"{len(xs)} epochs, mean {np.mean(xs):.1f}, median {np.median(xs):.1f}, min {min(xs):.1f}, max {max(xs):.1f}")

    a, v = per_epoch(afd), per_epoch(vaft)
    ratio_mean = float(np.mean(a) / np.mean(v))
    ratio_median = float(np.median(a) / np.median(v))
    paper = _paper("table5", "afd", "seconds_per_epoch") / _paper("table5", "vaft", "seconds_per_epoch")
    out += [f"- Seconds per epoch, every epoch of every seed: AFD {show(a)}; vAFT {show(v)}.",
            f"- AFD / vAFT: {ratio_mean:.2f} (means), {ratio_median:.2f} (medians); paper {paper:.2f} "
            f"({_f(_paper('table5', 'afd', 'seconds_per_epoch'), 0)} s vs "
            f"{_f(_paper('table5', 'vaft', 'seconds_per_epoch'), 0)} s on a GPU).", ""]
    return out


def _claim5(done: pd.DataFrame, defaults: pd.DataFrame, sizes: dict) -> list[str]:
    out = ["### 5. AFD insensitive to alpha, beta, gamma (Figure 4)", "",
           "Each hyperparameter at values from the paper's range with the other two at their defaults; the "
           "default point is the mean of the default AFD runs (all seeds).", ""]
    base = _by(defaults, "afd")
    if not len(done[~at_defaults(done) & (done.method == "afd")]):
        return out[:2] + ["- not in this grid (no run varies alpha, beta or gamma).", ""]
    rows, ranges = [], {}
    for name, tab in hparam_sweeps(done, "afd", SWEEP).items():  # Figure 4's own selection and means
        if len(tab) < 2:
            rows.append([name, "—", "—", "—", "—", "—"])
            continue
        clean, pgd = tab[("clean", "mean")], tab[("pgd20", "mean")]
        rc, rp = float(clean.max() - clean.min()), float(pgd.max() - pgd.min())
        ranges[name] = (rc, rp)
        rows.append([name, ", ".join(f"{v:g}" for v in tab.index), ", ".join(f"{v:.1f}" for v in clean),
                     ", ".join(f"{v:.1f}" for v in pgd), f"{rc:.2f}", f"{rp:.2f}"])
    out += markdown_table(["Swept", "values", "Clean", "PGD-20", "range Clean", "range PGD-20"], "llllrr", rows,
                          pad_empty=False) + [""]
    if ranges and len(base) > 1:
        sc, sp = float(base.clean.std(ddof=1)), float(base.pgd20.std(ddof=1))
        bc = binomial_noise(base.clean.mean(), base.clean.mean(), sizes.get("clean", 1))
        bp = binomial_noise(base.pgd20.mean(), base.pgd20.mean(), sizes.get("pgd20", 1))
        out.append(f"- Seed-to-seed at the defaults: clean {_ms(base.clean)}, PGD-20 {_ms(base.pgd20)}; test-sample "
                   f"noise of a difference: clean {bc:.2f}, PGD-20 {bp:.2f} points. Paper: variations < 0.6 points.")
        for name, (rc, rp) in ranges.items():
            lim_c, lim_p = 2 * max(sc, bc), 2 * max(sp, bp)
            ok = rc <= lim_c and rp <= lim_p
            out.append(f"- {name}: ranges {rc:.2f} (clean) / {rp:.2f} (PGD-20) against 2 x noise {lim_c:.2f} / "
                       f"{lim_p:.2f} -> " + ("insensitive within noise" if ok else "sensitive beyond noise") + "."
                       + _rests_on(base, _swept(done, name)))
        out.append("")
    return out


def _swept(done: pd.DataFrame, name: str) -> pd.DataFrame:
    """The finished AFD runs behind one hyperparameter's sweep: the other two at their defaults, as Figure 4 (and
    ``plots.hparam_sweeps``) selects them."""
    defaults = dict(resolve_hparams("afd", {}))
    runs = done[done.method == "afd"]
    for n in SWEEP:
        if n != name and f"hp.{n}" in runs:
            runs = runs[np.isclose(runs[f"hp.{n}"].astype(float), float(defaults[n]))]
    return runs


def _claim6(df: pd.DataFrame, sizes: dict, in_grid: set) -> list[str]:
    out = ["### 6. Both parts needed: AFD above vAFT+D and vAFT+A (Table 3)", ""]
    if not {"vaft_d", "vaft_a"} & in_grid:
        return out + ["- not in this grid (no vAFT+D or vAFT+A runs).", ""]
    out += _accuracy_table(df, list(ABLATION), "table3") + [""]
    afd = _by(df, "afd")
    for part in ("vaft_d", "vaft_a"):
        g = _by(df, part)
        if not len(afd) or not len(g):
            out.append(f"- AFD against {method_label(part)}: not measured.")
            continue
        cells = []
        for key, label in (("clean", "clean"), ("pgd20", "PGD-20"), ("aa", "AA")):
            diff = float(afd[key].mean() - g[key].mean())
            nz = noise(afd[key], g[key], sizes.get(key, 1))
            cells.append(f"{label} {diff:+.2f} (noise {nz:.2f}: {verdict(diff, nz)})")
        out.append(f"- AFD against {method_label(part)}: " + "; ".join(cells) + "." + _rests_on(afd, g))
    out.append("")
    return out

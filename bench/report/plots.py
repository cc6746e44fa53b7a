"""The paper's figures from a grid's results, with matplotlib (Agg), as PNG and PDF.

Every figure shows its uncertainty and never zooms in past it: error bars (and bands) are +-1 standard error (SE),
the larger of the seed-to-seed SE (std / sqrt(k) over k >= 2 seeds) and the test-sample SE (binomial
sqrt(p (1 - p) / N) for an accuracy on N test images; the recorded SE of the mean for the feature gap), and each
y-axis spans at least +-2 SE around its data (``set_ylim_with_noise``), so a difference inside the noise cannot fill
a panel. Legends sit outside the plotting area; a caption under each figure says what is measured and what the
bars are.

* Figure 1a (``fig1``): the feature gap after every epoch, one curve per fine-tuning method (mean over seeds,
  +-1 SE bars and band): per test image ||f(x) - f(x')||_inf, x' = PGD-20 against the evaluated (exported; EMA
  when the method keeps one) model, f = the features the method classifies from (``Method.gap_features``: f1 =
  D1 g for AFD, the penultimate layer otherwise), averaged over the images. The gaps come from each run's
  per-epoch log, written only when the run had ``eval.feature_gap_every_epoch=true``; a method without them is
  drawn as a single marker at its final epoch (the gap measured in the final evaluation) and the figure says so
  in a red note. The caption lists what each method's runs recorded as measured (``feature_gap_of``); runs from
  before it was recorded measured the exported model's penultimate features (for AFD g, not f1: a red note).
* Figure 3 (``fig3``): t-SNE of the features of PGD-20 test images for one AFD run, before disentanglement,
  g(x'), and after, f1 = D1 g(x'), each panel titled with the leave-one-out 5-NN class accuracy of those features
  +- its binomial SE (t-SNE coordinates carry no units to put an error on). The exported model
  (results/models/<run>.pt) has D1 folded into its classifier (w' = w D1), so D1 is read from the run's last
  checkpoint (results/ckpt/<run>/last.pt, the EMA weights when the run used EMA, as the export did: key
  ``d1.weight``). It cannot be recovered from the export alone (w' = w D1 does not determine D1), so without the
  checkpoint fig3 stops with an error saying so. We check that the checkpoint's w D1 equals the exported w' before
  using it. The attack is PGD-20 (the run's eval settings) against the exported model, i.e. against w D1 g, as in
  the paper's evaluation.
* Figure 4 (``fig4``): AFD's clean (NAT, left axis) and PGD-20 (right axis) accuracy against alpha, beta and
  gamma, each swept with the other two at their defaults, +-1 SE bars; x positions are evenly spaced as in the
  paper.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.core.config import ConfigError, RunConfig
from bench.core.store import Store
from bench.data import load_dataset
from bench.eval.attacks import pgd
from bench.eval.evaluator import PENULTIMATE
from bench.models.architectures import build_model, feature_extractor_and_head
from bench.report.frame import load
from bench.report.labels import DATASET_LABELS, MODEL_LABELS, method_label
from methods import resolve_hparams

NO_GAP_NOTE = "no per-epoch feature gap recorded"
NO_RUN_NOTE = "no finished run"


def _gapless(data: dict) -> tuple[list[str], list[str]]:
    """Methods with finished runs but no per-epoch gap, and methods with no finished run at all."""
    no_gap = [method_label(m) for m, d in data.items() if not d["curves"] and d["n_done"]]
    no_run = [method_label(m) for m, d in data.items() if not d["n_done"]]
    return no_gap, no_run


class PlotError(ConfigError):
    """A figure that cannot be drawn from these results; the CLI prints the one-line message (exit 2)."""


def save(fig: plt.Figure, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def _where(df: pd.DataFrame) -> str:
    pairs = list(dict.fromkeys(zip(df.model, df.dataset)))
    return "; ".join(f"{MODEL_LABELS.get(m, m)} {DATASET_LABELS.get(d, d)}" for m, d in pairs)


# -- uncertainty: every figure shows it, and no axis is narrower than it --------------------------------------
# Error bars are +-1 standard error (SE). The SE of a mean over k >= 2 seeds is the larger of the seed-to-seed SE,
# std / sqrt(k), and the test-sample SE (for accuracies the binomial sqrt(p (1 - p) / N) on the N test images, for
# the feature gap the recorded SE of the mean over its test images): the test images are the same for every seed,
# so their error does not shrink with k. The same rule decides the claims (bench/report/claims.py).
MIN_SPAN_SE = 2.0  # each y-axis spans at least +-2 SE around the data's centre (plus margins)
SE_NOTE = "±1 SE"


def binomial_se(p_percent: float, n: int) -> float:
    """Standard error (percentage points) of an accuracy of p_percent measured on n test images."""
    p = min(max(p_percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n) if n > 0 else math.nan


def seed_se(values: Any) -> float:
    """std / sqrt(k) over k >= 2 seeds, else 0 (no seed spread measurable)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def set_ylim_with_noise(ax: plt.Axes, values: Any, errors: Any, *, k: float = MIN_SPAN_SE, margin: float = 0.08,
                        bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """y-limits that show every value with its error bar and span at least +-k x the largest error around the
    data's centre, plus ``margin`` of the span on each side; clipped to ``bounds`` (shifting, not shrinking)."""
    v = np.asarray(values, dtype=float)
    e = np.nan_to_num(np.asarray(errors, dtype=float), nan=0.0)
    ok = np.isfinite(v)
    if not ok.any():
        return ax.get_ylim()
    v, e = v[ok], e[ok]
    lo, hi = float((v - e).min()), float((v + e).max())
    centre, half = (float(v.min()) + float(v.max())) / 2, k * float(e.max())
    lo, hi = min(lo, centre - half), max(hi, centre + half)
    if hi - lo <= 0:  # flat data without any error: a small window around it
        lo, hi = lo - max(abs(lo), 1.0) * 0.05, hi + max(abs(hi), 1.0) * 0.05
    pad = margin * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if bounds is not None:
        span = min(hi - lo, bounds[1] - bounds[0])
        if lo < bounds[0]:
            lo, hi = bounds[0], bounds[0] + span
        if hi > bounds[1]:
            lo, hi = bounds[1] - span, bounds[1]
    ax.set_ylim(lo, hi)
    return lo, hi


def _caption(fig: plt.Figure, text: str, width: int = 150) -> None:
    import textwrap

    fig.text(0.01, -0.01, "\n".join(textwrap.fill(par, width) for par in text.split("\n")), ha="left", va="top",
             fontsize=7.5, wrap=False)


# -- Figure 1a -------------------------------------------------------------------------------------------------
FIG1_METHODS = ("vaft", "afkd", "arrest", "afd")  # the paper's Figure 1a: vAFT, AFT+RGKD, ARREST, AFD
# What a run measured when its result does not say (results written before ``feature_gap_of`` was recorded): the
# exported model's last hidden layer, for every method (for AFD that is g, not the f1 = D1 g of the paper).
UNRECORDED_GAP_OF = "penultimate features of the exported model (not recorded)"


def at_defaults(df: pd.DataFrame) -> pd.Series:
    """The runs that are their method as the grid runs it, not a sweep's variants: a method's runs whose
    hyperparameters are all its defaults; or, when every run of the method sets the same hyperparameters (the
    grid's recipe for it, e.g. RiFT's selection rule at CPU scale), all of them."""

    def values(row: pd.Series) -> tuple:
        return tuple((k, None if k not in row or pd.isna(row[k]) else row[k])
                     for k in (f"hp.{name}" for name, _ in resolve_hparams(row["method"], {})))

    def ok(row: pd.Series) -> bool:
        return all(v is None or v == d for (_, v), (_, d) in zip(values(row), resolve_hparams(row["method"], {})))

    if not len(df):
        return pd.Series(dtype=bool)
    keys = df.apply(values, axis=1)
    one_recipe = {m for m, g in keys.groupby(df["method"]) if g.nunique() == 1}
    return df.apply(ok, axis=1) | df["method"].isin(one_recipe)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def gap_curves(df: pd.DataFrame, methods: tuple[str, ...] | None = FIG1_METHODS) -> dict[str, dict[str, Any]]:
    """Per fine-tuning method (``methods``, None = all in the grid), at its default hyperparameters: the per-seed
    gap curves from the per-epoch log (``curves``: [(epoch, gap)], ``ses``: [(epoch, test-sample SE or None)]),
    or the final gaps (``final``, ``final_se``), and what was measured (``of``: the set of ``feature_gap_of``)."""
    out: dict[str, dict[str, Any]] = {}
    ft = df[df.parent_id.notna()]
    if methods is not None:
        ft = ft[ft.method.isin(methods)]
    ft = ft[at_defaults(ft)] if len(ft) else ft
    for method, g in ft.groupby("method", sort=False):
        done = g[g.status == "done"]
        curves, ses, of, sizes = [], [], set(), set()
        for log in done.epoch_log:
            entries = [e for e in (log or []) if _num(e.get("feature_gap"))]
            if entries:
                curves.append([(e["epoch"], e["feature_gap"]) for e in entries])
                ses.append([(e["epoch"], e.get("feature_gap_se") if _num(e.get("feature_gap_se")) else None)
                            for e in entries])
                of |= {e.get("feature_gap_of") or UNRECORDED_GAP_OF for e in entries}
                sizes |= {e["feature_gap_n"] for e in entries if _num(e.get("feature_gap_n"))}
        final_se = done["feature_gap_se"].tolist() if "feature_gap_se" in done else [None] * len(done)
        if not curves and len(done):
            of |= set(done["feature_gap_of"].dropna()) if "feature_gap_of" in done else set()
            of = of or {UNRECORDED_GAP_OF}
        out[method] = {"curves": curves, "ses": ses, "final": done.feature_gap.dropna().tolist(),
                       "final_se": [v for v, f in zip(final_se, done.feature_gap) if _num(f)],
                       "epochs": done.epochs.tolist(), "n_runs": len(g), "n_done": len(done), "of": of,
                       "n_images": sizes}
    if methods is not None:  # in the order asked for (the paper's legend order by default)
        out = {m: out[m] for m in methods if m in out}
    return out


def _mean_and_se(values: np.ndarray, test_ses: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per column (epoch): mean over seeds, SE = max(seed SE, mean test-sample SE), and whether any SE is known."""
    mean = np.nanmean(values, axis=0)
    seed = np.array([seed_se(col) for col in values.T])
    test = np.array([float(np.nanmean(col)) if np.isfinite(col).any() else 0.0 for col in test_ses.T])
    known = values.shape[0] > 1 or bool(np.isfinite(test_ses).any())
    return mean, np.maximum(seed, test), known


def _fraction(values: pd.Series) -> str:
    """The runs' value of an attack size, as x/255 where it is one (8/255) and as the number otherwise (0.003);
    several values are listed."""
    out = []
    for v in sorted(set(float(x) for x in values.dropna())):
        k = round(v * 255)
        out.append(f"{k}/255" if k and abs(v * 255 - k) < 1e-9 else f"{v:g}")
    return " or ".join(out) or "—"


def fig1(df: pd.DataFrame, title: str = "", methods: tuple[str, ...] | None = FIG1_METHODS) -> plt.Figure:
    """Figure 1a: each method's feature gap after every epoch (or its final gap alone), a red note on what is
    missing, and a caption on what was measured and what the bars are."""
    data = gap_curves(df, methods)
    fig, ax = plt.subplots(figsize=(7.6, 3.9))
    all_v, all_e, no_se, seed_only = _draw_gaps(ax, data)
    if all_v:
        set_ylim_with_noise(ax, all_v, all_e, bounds=(0.0, math.inf))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("feature gap (mean L∞, clean vs PGD-20)")
    ax.set_title(title or f"Figure 1a: feature gap during fine-tuning ({_where(df)})", fontsize=9)
    notes = _fig1_notes(data)
    if notes:  # beside the plot, under the legend: never over the curves
        import textwrap

        ax.text(1.02, 0.0, "\n".join(textwrap.fill(n, 34) for n in notes), transform=ax.transAxes, va="bottom",
                fontsize=7.5, color="red", bbox={"facecolor": "white", "edgecolor": "red", "alpha": 0.9})
    if not data:
        ax.text(0.5, 0.5, "no fine-tuning run in this grid", transform=ax.transAxes, ha="center", color="red")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title=f"mean, {SE_NOTE}",
              title_fontsize=8)
    ax.grid(alpha=0.3)
    _caption(fig, _fig1_caption(df, data, no_se, seed_only), width=125)
    fig.tight_layout()
    return fig


def _draw_gaps(ax: plt.Axes, data: dict[str, dict[str, Any]]) -> tuple[list[float], list[float], list[str], list[str]]:
    """Each method of ``gap_curves`` on the axes, in its order (the legend's): its per-epoch curve, else its final
    gap, else a legend entry saying it has no finished run. Returns every value drawn and its error (for the
    y-limits), the methods whose bars have no SE at all and those whose bars are the seed-to-seed SE alone."""
    all_v, all_e, no_se, seed_only = [], [], [], []
    for method, d in data.items():
        label = method_label(method)
        if d["curves"]:
            mean, err, known, seeds_alone = _draw_curve(ax, label, d)
            if seeds_alone:
                seed_only.append(label)
            if not known:
                no_se.append(label)
            all_e += list(err) if known else [0.0] * len(mean)
            all_v += list(mean)
        elif d["final"]:
            v, err, known = _draw_final(ax, label, d)
            if not known:
                no_se.append(label)
            all_v.append(v)
            all_e.append(err)
        else:
            ax.plot([], [], linestyle="none", label=f"{label} (no finished run)")
    return all_v, all_e, no_se, seed_only


def _seeds_by_epochs(d: dict[str, Any]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """A method's per-epoch gaps and their test-sample SEs as seeds x epochs arrays (NaN where none)."""
    epochs = sorted({e for c in d["curves"] for e, _ in c})
    table = np.full((len(d["curves"]), len(epochs)), np.nan)
    ses = np.full_like(table, np.nan)
    for i, (c, s) in enumerate(zip(d["curves"], d["ses"])):
        for (e, v), (_, se) in zip(c, s):
            table[i, epochs.index(e)] = v
            ses[i, epochs.index(e)] = np.nan if se is None else se
    return epochs, table, ses


def _draw_curve(ax: plt.Axes, label: str, d: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """One method's mean gap per epoch, with SE bars and band where an SE is known. Returns the means, the SEs,
    whether any SE is known, and whether it is the seed-to-seed SE alone (no test-sample SE recorded)."""
    epochs, table, ses = _seeds_by_epochs(d)
    mean, err, known = _mean_and_se(table, ses)
    k = len(d["curves"])
    name = label + (f" ({k} seeds)" if k > 1 else " (1 seed)")
    if known:
        cont = ax.errorbar(epochs, mean, yerr=err, marker="o", ms=3, capsize=3, label=name)
        ax.fill_between(epochs, mean - err, mean + err, color=cont.lines[0].get_color(), alpha=0.15, lw=0)
    else:
        ax.plot(epochs, mean, marker="o", ms=3, label=name + ", no SE recorded")
    return mean, err, known, known and bool(np.isnan(ses).all())


def _draw_final(ax: plt.Axes, label: str, d: dict[str, Any]) -> tuple[float, float, bool]:
    """A method without per-epoch gaps: its final gap (mean over seeds) as one marker at its last epoch. Returns
    the gap, its SE and whether that SE is known."""
    v = float(np.mean(d["final"]))
    se = [s for s in d["final_se"] if _num(s)]
    err = max(seed_se(d["final"]), float(np.mean(se)) if se else 0.0)
    known = len(d["final"]) > 1 or bool(se)
    ax.errorbar([max(d["epochs"])], [v], yerr=[err] if known else None, marker="x", ms=9, capsize=3,
                linestyle="none", label=f"{label} (final epoch only)")
    return v, err, known


def _fig1_notes(data: dict[str, dict[str, Any]]) -> list[str]:
    """The red notes: methods without per-epoch gaps or without a finished run, and AFD-like runs whose gap was
    measured on g rather than on f1 = D1 g."""
    no_gap, no_run = _gapless(data)
    notes = ([f"{NO_GAP_NOTE} for: {', '.join(no_gap)}\n(train with --set eval.feature_gap_every_epoch=true)"]
             if no_gap else []) + ([f"{NO_RUN_NOTE} for: {', '.join(no_run)} (bench run --grid ...)"] if no_run else [])

    not_f1 = [method_label(m) for m, d in data.items() if m in ("afd", "vaft_d")
              and d["of"] & {PENULTIMATE, UNRECORDED_GAP_OF}]
    if not_f1:
        notes.append(f"{', '.join(not_f1)}: gap measured on g, not on f1 = D1 g as in the paper (rerun the runs)")
    return notes


def _fig1_caption(df: pd.DataFrame, data: dict[str, dict[str, Any]], no_se: list[str], seed_only: list[str]) -> str:
    """What the gap is, on which images and attack, what each method's runs measured, and what the bars are."""
    by_what: dict[str, list[str]] = {}
    for m, d in data.items():
        for w in sorted(d["of"]):
            by_what.setdefault(w, []).append(method_label(m))
    what = "; ".join(f"{w} for {', '.join(ms)}" for w, ms in by_what.items())
    sizes = sorted({n for d in data.values() for n in d.get("n_images", ())})
    over = f"the first {'/'.join(str(n) for n in sizes)} test images" if sizes else "the first eval.n_gap test images"
    ft = df[df.method.isin(list(data))] if data else df
    attack = f"eps {_fraction(ft.eps)}, step {_fraction(ft.pgd_step_size)}" if "eps" in ft and len(ft) else "eps, step"
    return (f"Feature gap = ||f(x) − f(x')||∞ per test image, averaged over {over} after each epoch, x' = "
            f"PGD-20 ({attack}, random start) against the evaluated model (the exported model; the EMA for "
            "methods that keep one), f = the features the method classifies from (f1 = D1 g for AFD, the "
            "penultimate layer otherwise). Measured here: " + (what or "—") + ". "
            f"Curve: mean over seeds; bars and band: {SE_NOTE}, the larger of the seed-to-seed SE (std/√k over "
            "k seeds) and the test-sample SE of the mean gap"
            + (f" (none known for {', '.join(no_se)}: one seed and no SE recorded)" if no_se else "") + "."
            + (f" No test-sample SE recorded for {', '.join(seed_only)} (runs from before it was): their bars are the "
               "seed-to-seed SE alone and understate the noise." if seed_only else ""))


# -- Figure 4 --------------------------------------------------------------------------------------------------
def hparam_sweeps(df: pd.DataFrame, method: str = "afd",
                  names: tuple[str, ...] = ("alpha", "beta", "gamma")) -> dict[str, pd.DataFrame]:
    """For each hparam: value -> mean, count and std (over seeds) of clean / PGD-20 over the runs whose other
    hparams are at their defaults."""

    defaults = dict(resolve_hparams(method, {}))
    runs = df[(df.method == method) & (df.status == "done")]
    out = {}
    for name in names:
        others = [n for n in names if n != name and f"hp.{n}" in runs]
        mask = pd.Series(True, index=runs.index)
        for n in others:
            mask &= np.isclose(runs[f"hp.{n}"].astype(float), float(defaults[n]))
        sub = runs[mask]
        out[name] = sub.groupby(f"hp.{name}")[["clean", "pgd20"]].agg(["mean", "count", "std"]).sort_index()
    return out


def sweep_errors(tab: pd.DataFrame, metric: str, n_test: int) -> np.ndarray:
    """Per swept value: max(seed SE over its runs, binomial SE of the mean accuracy on n_test images)."""
    mean, count, std = (tab[(metric, c)].to_numpy(float) for c in ("mean", "count", "std"))
    seed = np.where(count > 1, np.nan_to_num(std) / np.sqrt(np.maximum(count, 1)), 0.0)
    return np.maximum(seed, np.array([binomial_se(m, n_test) for m in mean]))


def _test_sizes(df: pd.DataFrame, method: str = "afd") -> tuple[int, int]:
    runs = df[(df.method == method) & (df.status == "done")]
    sizes = runs.eval_sizes if len(runs) else df.eval_sizes
    return (int(min(s[0] for s in sizes)), int(min(s[1] for s in sizes))) if len(sizes) else (0, 0)


def fig4(df: pd.DataFrame) -> plt.Figure:
    sweeps = hparam_sweeps(df)
    n_clean, n_pgd = _test_sizes(df)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    dx = 0.06  # the two curves side by side at each value, so their error bars do not overlap
    multi = False
    for ax, (name, tab) in zip(axes, sweeps.items()):
        ax2 = ax.twinx()
        xs = np.arange(len(tab))
        if len(tab):
            for a, metric, color, marker, n, off in ((ax, "clean", "tab:red", "^", n_clean, -dx),
                                                     (ax2, "pgd20", "tab:purple", "s", n_pgd, dx)):
                mean = tab[(metric, "mean")].to_numpy(float)
                err = sweep_errors(tab, metric, n)
                a.errorbar(xs + off, mean, yerr=err, color=color, marker=marker, capsize=3, ms=5)
                set_ylim_with_noise(a, mean, err, bounds=(0.0, 100.0))
            counts = tab[("clean", "count")].to_numpy(int)
            for x, c in zip(xs, counts):
                if c > 1:
                    multi = True
                    ax.annotate(f"{c} seeds", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom", fontsize=7, color="0.35")
        else:
            ax.text(0.5, 0.5, "no finished run", transform=ax.transAxes, ha="center", color="red")
        ax.set_xticks(xs, [f"{v:g}" for v in tab.index])
        ax.set_xlim(-0.5, max(len(tab) - 0.5, 0.5))
        ax.set_xlabel({"alpha": "α", "beta": "β", "gamma": "γ"}.get(name, name) + f" ({name})")
        ax.set_ylabel("clean accuracy (%)", color="tab:red")
        ax2.set_ylabel("PGD-20 accuracy (%)", color="tab:purple")
        ax.grid(alpha=0.3)
    handles = [matplotlib.lines.Line2D([], [], color="tab:red", marker="^", label=f"NAT (clean), {SE_NOTE}"),
               matplotlib.lines.Line2D([], [], color="tab:purple", marker="s", label=f"PGD-20, {SE_NOTE}")]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Figure 4: AFD accuracy against its hyperparameters ({_where(df)})", fontsize=10)
    _caption(fig, f"Each swept with the other two at their defaults. Error bars: {SE_NOTE} (standard error): the "
                  f"binomial √(p(1−p)/N) of the test set (clean N = {n_clean}, PGD-20 N = {n_pgd})"
                  + (", or the seed-to-seed SE (std/√k) where larger, at values with k seeds (marked)" if multi else "")
                  + ". Single-seed values carry no seed-to-seed variation in their bars. Each y-axis spans at least "
                  f"±{MIN_SPAN_SE:g} SE around its data: differences inside the bars are noise.")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


# -- Figure 3 --------------------------------------------------------------------------------------------------
def disentangler_weight(results: Path, rid: str, exported_w: "torch.Tensor | None" = None) -> "torch.Tensor":
    """D1 of an AFD run from its last checkpoint (EMA weights when present, as the export used)."""
    import torch

    for name in ("last.pt", "prev.pt"):
        path = results / "ckpt" / rid / name
        if path.exists():
            break
    else:
        raise PlotError(
            f"fig3 needs D1, which the exported model folds into its classifier and which cannot be recovered from "
            f"it; the run's checkpoint {results / 'ckpt' / rid / 'last.pt'} is gone: rerun the run to recreate it")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("ema") or ckpt["net"]
    if "d1.weight" not in state:
        raise PlotError(f"{path} has no d1.weight: run {rid} is not an AFD run with a disentangler")
    d1 = state["d1.weight"].float()
    if exported_w is not None:
        heads = [k for k in state if k.startswith("model.") and k.endswith(".weight")
                 and state[k].dim() == 2 and state[k].shape == exported_w.shape]
        if heads and not torch.allclose(state[heads[-1]].float() @ d1, exported_w.float(), atol=1e-4, rtol=1e-3):
            raise PlotError(f"{path}: w D1 does not match the exported classifier of run {rid}; the checkpoint is "
                             "not the one the model was exported from")
    return d1


def tsne_features(results: Path, rid: str, n: int = 1000, data_root: str | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Features of PGD-20 test images before (g(x')) and after (D1 g(x')) disentanglement, and labels."""
    import torch

    store = Store(results)
    res = store.read(rid)
    if res is None or res.get("status") != "done":
        raise PlotError(f"run {rid} has no finished result in {results}")
    blob = torch.load(store.model_path(rid), map_location="cpu", weights_only=True)
    model = build_model(blob["model"], blob["num_classes"], blob["in_channels"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    feats, head = feature_extractor_and_head(model)
    d1 = disentangler_weight(results, rid, head.weight.detach())
    cfg = res["config"]
    _, test, _ = load_dataset(cfg["dataset"], data_root)
    n = min(n, len(test))
    before, labels = [], []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, n, 250):
        x = test.images[i:min(n, i + 250)].float().div(255)
        y = test.labels[i:min(n, i + 250)]
        x_adv = pgd(model, x, y, eps=cfg["eps"], step_size=cfg["eval"]["pgd_step_size"],
                    steps=cfg["eval"]["pgd_steps"], random_start=True, generator=gen)
        with torch.no_grad():
            before.append(feats(x_adv))
        labels.append(y)
    g = torch.cat(before)
    return {"before": g.numpy(), "after": (g @ d1.T).numpy(), "labels": torch.cat(labels).numpy()}


KNN_K = 5


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """Leave-one-out k-NN class accuracy (%) of features x (Euclidean, majority vote, ties to the lowest label):
    how well the classes separate in the feature space itself, the quantity a t-SNE picture only suggests."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(x) - 1)
    if k < 1:
        return math.nan
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    votes = labels[idx]
    n_cls = int(labels.max()) + 1
    pred = np.array([np.bincount(v, minlength=n_cls).argmax() for v in votes])
    return 100.0 * float((pred == labels).mean())


def fig3(features: dict[str, np.ndarray], title: str = "", seed: int = 0) -> plt.Figure:
    from sklearn.manifold import TSNE

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    labels = features["labels"]
    n = len(labels)
    perplexity = min(30.0, max(2.0, (n - 1) / 3))
    for ax, key, name in zip(axes, ("before", "after"), ("before disentanglement: g(x')",
                                                           "after disentanglement: f1 = D1 g(x')")):
        x = features[key]
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(emb[m, 0], emb[m, 1], s=4, label=str(c))
        acc = knn_accuracy(x, labels)
        ax.set_title(f"{name}\n{KNN_K}-NN accuracy of these features: {acc:.1f} ± {binomial_se(acc, n):.1f}% "
                     f"({SE_NOTE}, n = {n})", fontsize=9)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    axes[1].legend(title="class", fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   ncol=1 if len(np.unique(labels)) <= 20 else 2)
    fig.suptitle(title or "Figure 3: t-SNE of PGD-20 adversarial features", fontsize=10)
    _caption(fig, f"t-SNE (perplexity {perplexity:g}, one t-SNE seed) of the features of the first {n} test images "
                  "after PGD-20 against the evaluated model, one run. t-SNE axes have no units and cluster shapes change "
                  f"with the seed and perplexity: compare the panels by their leave-one-out {KNN_K}-NN class accuracy, "
                  f"computed on the features themselves, {SE_NOTE} = binomial √(p(1−p)/n); a difference inside about "
                  "2√2 SE is noise.", width=120)
    fig.tight_layout()
    return fig


# -- entry point -----------------------------------------------------------------------------------------------
def plot(figure: str, grid: str | list[RunConfig], results: Path, out: Path, *, name: str = "", seeds: int = 1,
         run: str | None = None, n: int = 1000, data_root: str | None = None,
         methods: tuple[str, ...] | None = FIG1_METHODS) -> list[Path]:
    """Draw one figure for a grid; returns the PNG and PDF paths. ``methods``: fig1's curves (None = every
    fine-tuning method of the grid)."""
    df = load(grid, results, seeds)
    if name.endswith(".toml"):  # a grid file: name the figure after the file, not its path
        name = Path(name).stem
    stem = f"{figure}_{name}" if name else figure
    if figure == "fig1":
        import sys

        no_gap, no_run = _gapless(gap_curves(df, methods))
        if no_gap:
            print(f"bench plot: {NO_GAP_NOTE} for {', '.join(no_gap)}: drawn as the final-epoch gap only; "
                  "train with --set eval.feature_gap_every_epoch=true for curves", file=sys.stderr)
        if no_run:
            print(f"bench plot: {NO_RUN_NOTE} for {', '.join(no_run)}: run the grid first", file=sys.stderr)
        fig = fig1(df, methods=methods)
    elif figure == "fig4":
        if not (df.method == "afd").any():  # its panels are AFD's hyperparameters: nothing to draw them from
            raise PlotError(f"fig4 sweeps AFD's hyperparameters: grid {name or 'given'} has no AFD run "
                            "(use --grid fig4)")
        fig = fig4(df)
    elif figure == "fig3":
        afd = df[(df.method == "afd") & (df.status == "done")]
        rid = run or (afd.run_id.iloc[0] if len(afd) else None)
        if rid is None:
            raise PlotError("fig3 needs a finished AFD run in this grid (or --run RUN_ID)")
        row = df[df.run_id == rid]
        where = _where(row) if len(row) else rid
        fig = fig3(tsne_features(Path(results), rid, n=n, data_root=data_root),
                   title=f"Figure 3: t-SNE of PGD-20 adversarial features, AFD run {rid} ({where})")
    else:
        raise ValueError(f"unknown figure {figure}; known: fig1, fig3, fig4")
    try:
        return save(fig, Path(out), stem)
    finally:
        plt.close(fig)

"""One method against another on a grid's results (``bench compare --grid G --a mine --b afd``): per model and data
set and per metric, each method's mean ± std over its seeds, the difference, its noise and a verdict under the
claims' noise rule (``bench.report.claims``: a difference is real when it exceeds twice the larger of its seed
spread and its test-sample error).

The accuracies' test-sample error is the binomial one of the claims. The feature gap is not an accuracy: its
test-sample error is the one each result records (``feature_gap_se``), the two methods' taken as independent, and
a smaller gap is the better one; two gaps measured on different features (AFD's f1 against another method's
penultimate layer) get no verdict. A method's runs are those at its defaults, or at the one setting the grid gives
it, as in the claims (``at_defaults``): a sweep's other variants are left out and counted in a note. A verdict that
rests on a run whose evaluation's reliability indicators tripped says so, naming the runs and the indicators.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pandas as pd

from bench.core.config import ConfigError, RunConfig
from bench.report.claims import noise, unreliable_runs, verdict
from bench.report.frame import load
from bench.report.labels import DATASET_LABELS, MODEL_LABELS, UNRELIABLE_WORDS, method_label
from bench.report.plots import at_defaults
from bench.report.render import markdown_table

# (column, label, higher is better, index of its test-image count in eval_sizes or None)
# The threat models beyond L-inf (bench/eval/threats.py) where both methods' results hold them: L2 on the PGD-20 and
# AutoAttack images, the corruption mean on the clean images (each of its sets; the mean of 60 or 75 of them is
# less noisy than one, so its binomial error overstates the noise rather than understating it).
METRICS = (("clean", "Clean", True, 0), ("pgd20", "PGD-20", True, 1), ("aa", "AA", True, 2),
           ("l2_pgd20", "L2 PGD-20", True, 1), ("l2_aa", "L2 AA", True, 2), ("corr_mean", "Corr. mean", True, 0),
           ("feature_gap", "feature gap", False, None))
HEADER = ("Model / data", "Metric", "A", "B", "A − B", "noise", "verdict")  # A and B: the methods' labels
FORMATS = ("markdown", "csv")


def _mean_std(vals: pd.Series, digits: int) -> str:
    if len(vals) == 1:
        return f"{vals.iloc[0]:.{digits}f} (1)"
    return f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f} ({len(vals)})"


def _gap_noise(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The noise of a difference of two mean feature gaps: the seed spread, or the recorded test-sample SEs of the
    two (each averaged over its seeds: the seeds share the test images), whichever is larger; NaN where a result
    records no SE (written before it was recorded): the seed spread alone would call a one-seed difference real."""
    seed = math.sqrt(sum(float(x.var(ddof=1)) / len(x) for x in (a.feature_gap, b.feature_gap) if len(x) > 1))
    se = [float(x.feature_gap_se.mean()) for x in (a, b)]
    return math.nan if any(math.isnan(s) for s in se) else max(seed, math.sqrt(sum(s * s for s in se)))


def _features(runs: pd.DataFrame) -> str:
    """What a method's feature gap was measured on (AFD: its intrinsic features f1; most: the penultimate ones)."""
    return "; ".join(sorted({str(w) for w in runs.feature_gap_of.dropna()})) or "unrecorded features"


def _row(a: pd.DataFrame, b: pd.DataFrame, metric: tuple, labels: tuple[str, str]) -> list[str] | None:
    """One metric of one model and data set, or None when one of the two has no value of it."""
    key, label, higher, size = metric
    if key not in a or key not in b:  # a frame made by hand (a researcher's, the tests') may lack the threat columns
        return None
    va, vb = a[key].dropna(), b[key].dropna()
    # the fewer test images of the two, where their evaluations differ: the larger binomial error
    n_test = min(int(x.eval_sizes.iloc[0][size]) for x in (a, b)) if size is not None else None
    if not len(va) or not len(vb) or n_test == 0:
        return None  # e.g. no AutoAttack (n_aa = 0)
    digits = 2 if size is not None else 4
    diff = float(va.mean() - vb.mean())
    nz = noise(va, vb, n_test) if size is not None else _gap_noise(a.loc[va.index], b.loc[vb.index])
    if size is None and _features(a) != _features(b):
        said = f"not comparable: measured on {_features(a)} and on {_features(b)}"
    elif math.isnan(nz):
        said = "no verdict: no test-sample error recorded"
    else:
        said = verdict(diff if higher else -diff, nz)
        said = {"holds": f"{labels[0]} ahead", "does not hold (the opposite, beyond noise)": f"{labels[1]} ahead"}.get(
            said, "not distinguishable" if said.startswith("not distinguishable") else said)
    return [label, _mean_std(va, digits), _mean_std(vb, digits), f"{diff:+.{digits}f}",
            "—" if math.isnan(nz) else f"{nz:.{digits}f}", said]


def rows(df: pd.DataFrame, a: str, b: str) -> list[list[str]]:
    """The comparison's rows: per model and data set where both methods have finished runs, per metric."""
    done = df[df.status == "done"]
    done = done[at_defaults(done)] if len(done) else done
    labels = (method_label(a), method_label(b))
    out = []
    for (model, dataset), g in done[done.method.isin((a, b))].groupby(["model", "dataset"], sort=False):
        ga, gb = g[g.method == a], g[g.method == b]
        if not len(ga) or not len(gb):
            continue
        where = f"{MODEL_LABELS.get(model, model)} / {DATASET_LABELS.get(dataset, dataset)}"
        rests = _rests_on(g)
        out += [[where, *r[:-1], r[-1] + rests] for m in METRICS if (r := _row(ga, gb, m, labels)) is not None]
    return out


def _rests_on(runs: pd.DataFrame) -> str:
    """What a verdict adds when a run behind it has an evaluation potentially unreliable: the runs and the
    indicators tripped (nothing where none tripped or the results predate the indicators)."""
    bad = unreliable_runs(runs)
    return f"; rests on an {UNRELIABLE_WORDS}: " + "; ".join(
        f"{method_label(r.method)} seed {r.seed} (run {r.run_id}: {r.unreliable})" for r in bad.itertuples()
    ) if len(bad) else ""


def compare(runs: str | list[RunConfig], results: str | Path, a: str, b: str, fmt: str = "markdown",
            name: str | None = None) -> str:
    """Method ``a`` against method ``b`` on a grid's runs (a grid's name, or its expanded runs), as Markdown or CSV;
    ``name`` is the grid named in the text. A method the grid does not run is bad input (ConfigError)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt}; known: {', '.join(FORMATS)}")
    df = load(runs, results)
    name = name or (runs if isinstance(runs, str) else "this grid")
    for m in (a, b):
        if m not in set(df.method):
            raise ConfigError(f"method '{m}' is not in grid {name}; its methods: "
                              + ", ".join(dict.fromkeys(df.method)))
    if a == b:
        raise ConfigError(f"--a and --b are both {a}: name two methods of grid {name}")
    body = rows(df, a, b)
    head = [*HEADER[:2], method_label(a), method_label(b), f"{method_label(a)} − {method_label(b)}", *HEADER[5:]]
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([head, *body])
        return buf.getvalue()
    lines = [f"## {method_label(a)} against {method_label(b)} (grid {name})", ""]
    lines += markdown_table(head, "llrrrrl", [[c.replace("|", "\\|") for c in r] for r in body]) if body else [
        "No model and data set where both have finished runs."]
    return "\n".join(lines + [""] + _notes(df, a, b)) + "\n"


def _notes(df: pd.DataFrame, a: str, b: str) -> list[str]:
    """What the numbers are, and the runs they leave out (not finished; a sweep's other variants)."""
    out = ["Mean ± sample standard deviation over seeds (their number in brackets), accuracies in %. The difference "
           "is of the means; noise: the larger of the seed spread and the test-sample error (binomial for "
           "accuracies; the recorded standard errors for the feature gap, where a smaller gap is ahead). A "
           "difference is real when it exceeds twice its noise (the rule of `bench report --claims`)."]
    mine = df[df.method.isin((a, b))]
    bad = mine[mine.status != "done"]
    if len(bad):
        counts = bad.status.value_counts()  # `bench status --grid` lists them one by one
        out.append(f"Not finished, left out: {len(bad)} of {len(mine)} runs of the two ("
                   + ", ".join(f"{n} {st}" for st, n in counts.items()) + ").")
    done = mine[mine.status == "done"]
    other = int((~at_defaults(done)).sum()) if len(done) else 0
    if other:
        out.append(f"Left out: {other} finished run{'s' * (other > 1)} of a sweep at other than the method's "
                   "default hyperparameters.")
    return out

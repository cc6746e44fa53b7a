"""The noise rule the tables' marks and the claims' verdicts share: a difference is *real* when it is larger than
twice its noise, where the noise of a difference of two means is the larger of (a) the seed-to-seed spread,
sqrt(s_a^2 / n_a + s_b^2 / n_b) with s the sample standard deviation over seeds, and (b) the test-sample noise,
sqrt(p_a (1 - p_a) / N + p_b (1 - p_b) / N) for accuracies measured on N test images (binomial standard error).

Its own module so that ``build`` (the tables' bold) and ``claims`` (which reads the paper's numbers through
``build``) both use it without importing each other in a cycle.
"""
from __future__ import annotations

import math

import pandas as pd


def binomial_noise(p_a: float, p_b: float, n_test: int) -> float:
    """Test-sample standard error of the difference of two accuracies (percent), each on n_test images; NaN when
    nothing was measured (``n_test`` 0: AutoAttack left out)."""
    if not n_test or n_test < 1:
        return math.nan
    return math.sqrt(sum((p / 100) * (1 - p / 100) / n_test for p in (p_a, p_b))) * 100


def noise(a: pd.Series, b: pd.Series, n_test: int) -> float:
    """The noise of mean(a) - mean(b) (percent accuracies over seeds, each measured on n_test images)."""
    a, b = a.dropna(), b.dropna()
    seed = math.sqrt(sum(float(x.var(ddof=1)) / len(x) for x in (a, b) if len(x) > 1))
    sample = binomial_noise(a.mean(), b.mean(), n_test)
    return seed if math.isnan(sample) else max(seed, sample)


def verdict(diff: float, nz: float, claim_sign: int = 1) -> str:
    if math.isnan(diff):
        return "not measured"
    if abs(diff) <= 2 * nz:
        return "not distinguishable (|difference| <= 2 x noise)"
    return "holds" if diff * claim_sign > 0 else "does not hold (the opposite, beyond noise)"

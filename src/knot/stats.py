"""Paired comparisons over seeds: t interval, paired t-test with Holm's adjustment within a
declared family, Wilcoxon signed-rank beside it, and a two-level (seeds, then test items)
bootstrap of a class-balanced per-item metric.

A study runs two methods on the same seeds (same splits, same teachers), so each seed gives
one difference ``d_s = metric(a, s) - metric(b, s)``. :func:`paired_comparison` summarises
those differences: mean, sample SD, a Student t interval of the mean, the paired t-test
p-value, the two-sided Wilcoxon signed-rank p-value, and a *reading*.

Why a t interval (issue 20). The earlier percentile bootstrap of the mean over seeds is
too narrow at 10 seeds: on 4,000 simulated null data sets it excluded 0 in 9.7 % (15.7 %
at 5 seeds) instead of 5 %, because the resampled means have the plug-in variance
``(n-1)/n * s^2 / n`` and normal rather than t tails. The t interval ``mean ± t_{n-1} s /
sqrt(n)`` covers 95 % for normal differences at any n (tests/test_stats.py checks 93-97 %
at n = 5 and 10); seed-to-seed differences of a metric averaged over thousands of test
items are close to normal.

Why the paired t p-value decides and Wilcoxon is only shown. A reading must be consistent
with the interval printed beside it: the t interval excludes 0 exactly when the paired t
p-value is below ``1 - ci``, so the rule "interval excludes 0 and Holm-adjusted p < 0.05"
is one test, Holm-adjusted. The Wilcoxon test is also reported (robust to one outlying
seed), but with n = 10 its smallest two-sided exact p is 2 / 2**10 = 0.00195: within a
family of 4 (the primary claim's four tasks) Holm needs 0.05 / 4 = 0.0125 for the
smallest p, which Wilcoxon reaches only with 9 or 10 seeds on one side, and a family of
26 would be out of its reach altogether. Its method is set explicitly
(:func:`wilcoxon_p`), since scipy's default changed between versions.

Reading. A difference is called *better* (or *worse*, from a's side; ``sign`` is +1 when a
larger metric is better, -1 for distances) only when its t interval excludes 0 **and** its
Holm-adjusted p (:func:`holm`, within the family declared in the study config, see
:func:`adjust_family`) is below ``alpha`` (0.05); ``equal`` when every difference is 0;
else ``no difference shown``. A single comparison is its own family of one.

Test-item sampling. The seeds change training randomness on one fixed test set, so the
seed-only interval does not cover the sampling of test items. :func:`two_level_bootstrap`
resamples seeds and then, within each resampled seed, test items (stratified by true
class, so a class-balanced mean such as Semantic Distance is recomputed the way it is
defined), and gives a percentile interval of the mean paired difference. It is shown beside
the seed-only t interval; it shares the percentile bootstrap's optimism at the seed level,
so read its width relative to the t interval, as how much item sampling adds.

>>> r = paired_comparison([0.02, 0.03, 0.01, 0.04, 0.02, 0.03], sign=+1)
>>> r["reading"], r["n"], round(r["mean"], 3)
('better', 6, 0.025)
>>> round(r["ci_low"], 3), round(r["ci_high"], 3)   # 0.025 -+ 2.5706 * 0.010488 / sqrt(6)
(0.014, 0.036)
>>> round(r["p_t"], 4), round(r["p_wilcoxon"], 4)     # tied |d|: Wilcoxon by normal approximation
(0.0021, 0.0269)
>>> paired_comparison([0.01, -0.02, 0.015, -0.01], sign=+1)["reading"]
'no difference shown'
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "ALPHA",
    "bootstrap_ci",
    "t_interval",
    "paired_t_p",
    "wilcoxon_p",
    "holm",
    "paired_comparison",
    "adjust_family",
    "class_balanced_mean",
    "two_level_bootstrap",
]

#: Significance level of every reading (two-sided), after Holm's adjustment in a family.
ALPHA = 0.05


def _diffs(diffs: Any, what: str) -> np.ndarray:
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim < 1 or d.shape[-1] == 0:
        raise ValueError(f"{what}: need a non-empty list of differences")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{what}: differences must be finite")
    return d


def bootstrap_ci(
    diffs: Sequence[float], ci: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (kept for comparison: it
    undercovers at 5-10 seeds, see the module docstring; readings use :func:`t_interval`).

    Parameters
    ----------
    diffs : sequence of float, length n >= 1
        Paired differences, one per seed.
    ci : float
        Coverage, in (0, 1).
    n_boot : int
        Resamples (each draws n seeds with replacement).
    seed : int
        Seed of the resampling generator.

    Returns
    -------
    (low, high)
        The ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles of the resampled means.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    d = _diffs(diffs, "bootstrap_ci")
    if d.ndim != 1:
        raise ValueError("bootstrap_ci: need a 1-D list of differences")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"bootstrap_ci: ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))  # (n_boot, n)
    means = d[idx].mean(axis=1)  # (n_boot,)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def t_interval(diffs: Any, ci: float = 0.95) -> tuple[Any, Any]:
    r"""Student t interval of the mean of paired differences.

    .. math:: \bar d \pm t_{n-1,\,(1+ci)/2}\; s / \sqrt{n}

    Parameters
    ----------
    diffs : array-like, shape (..., n)
        Paired differences along the last axis (one set per leading index: the coverage
        test passes thousands of simulated sets at once).
    ci : float
        Coverage, in (0, 1).

    Returns
    -------
    (low, high)
        Floats for 1-D input, arrays of shape ``diffs.shape[:-1]`` otherwise. With one
        difference (n = 1) there is no interval: ``(-inf, inf)``. Constant differences give
        ``(mean, mean)``.

    >>> [round(x, 4) for x in t_interval([1.0, 2.0, 3.0])]  # 2 ± 4.3027 * 1 / sqrt(3)
    [-0.4841, 4.4841]
    >>> t_interval([0.5, 0.5])
    (0.5, 0.5)
    """
    from scipy.stats import t as student_t

    d = _diffs(diffs, "t_interval")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"t_interval: ci must be in (0, 1), got {ci}")
    n = d.shape[-1]
    mean = d.mean(axis=-1)
    if n < 2:
        low, high = np.full_like(mean, -np.inf), np.full_like(mean, np.inf)
    else:
        half = student_t.ppf((1.0 + ci) / 2.0, n - 1) * d.std(axis=-1, ddof=1) / math.sqrt(n)
        low, high = mean - half, mean + half
    if d.ndim == 1:
        return float(low), float(high)
    return low, high


def paired_t_p(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test (mean difference 0), n - 1 degrees of freedom.

    Constant differences have no spread: p = 1.0 when they are all 0, else 0.0 (the
    t statistic is infinite). One difference: 1.0 (no test).

    >>> round(paired_t_p([1.0, 2.0, 3.0]), 4)
    0.0742
    >>> paired_t_p([0.0, 0.0]), paired_t_p([0.2, 0.2]), paired_t_p([0.3])
    (1.0, 0.0, 1.0)
    """
    from scipy.stats import t as student_t

    d = _diffs(diffs, "paired_t_p")
    if d.size < 2:
        return 1.0
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(d.size))
    return float(2.0 * student_t.sf(abs(t), d.size - 1))


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``diffs`` against 0, method set explicitly.

    Zero differences are dropped (``zero_method="wilcox"``); with none left the p-value is
    1.0. ``method="exact"`` (the exact null distribution of the signed-rank statistic)
    when at most 50 differences remain and their absolute values have no ties, else
    ``method="approx"`` (normal approximation, tie-corrected variance, no continuity
    correction): the exact distribution assumes distinct ranks. Both are stated here
    because scipy's default changed between versions (1.9 "auto" and 1.13's handling of
    ties and zeros).

    >>> wilcoxon_p([0.0, 0.0])
    1.0
    >>> round(wilcoxon_p([1, 2, 3, 4, 5]), 4)  # exact: 2 / 2**5
    0.0625
    >>> round(wilcoxon_p(list(range(1, 11))), 5)  # the smallest p at n = 10: 2 / 2**10
    0.00195
    """
    from scipy.stats import wilcoxon

    d = _diffs(diffs, "wilcoxon_p")
    d = d[d != 0.0]
    if d.size == 0:
        return 1.0
    a = np.abs(d)
    ties = np.unique(a).size < a.size
    method = "exact" if d.size <= 50 and not ties else "approx"
    p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided", method=method,
                       correction=False).pvalue)
    return 1.0 if math.isnan(p) else p


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (strong control of the
    family-wise error rate).

    Sorted ascending, the i-th smallest (i = 1..m) gets ``max_{j <= i} min(1, (m - j + 1)
    p_(j))``; the adjusted values are returned in the input order.

    >>> holm([0.01, 0.04, 0.03, 0.005])   # sorted 0.005, 0.01, 0.03, 0.04: x4, x3, x2, x1
    [0.03, 0.06, 0.06, 0.02]
    >>> holm([0.5]), holm([])
    ([0.5], [])
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError("holm: expected a flat list of p-values")
    if p.size == 0:
        return []
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError(f"holm: p-values must be in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m,)
    adjusted = np.maximum.accumulate(scaled)
    out = np.empty(m)
    out[order] = adjusted
    return [round(float(x), 12) for x in out]


def _reading(d: np.ndarray, low: float, high: float, p_adjusted: float, sign: int, alpha: float) -> str:
    if np.all(d == 0.0):
        return "equal"
    if p_adjusted < alpha and (low > 0.0 or high < 0.0):
        return "better" if (low > 0.0) == (sign > 0) else "worse"
    return "no difference shown"


def paired_comparison(
    diffs: Sequence[float],
    sign: int = +1,
    *,
    ci: float = 0.95,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Summarise paired differences ``a - b`` over seeds (a family of one; see
    :func:`adjust_family` for the reading within a declared family).

    Parameters
    ----------
    diffs : sequence of float
        ``metric(a) - metric(b)`` per seed.
    sign : {+1, -1}
        +1 when a larger metric is better (accuracy, F1), -1 when smaller is better
        (Semantic Distance, expected cost, W1).
    ci : float
        Coverage of the t interval.
    alpha : float
        Level of the (Holm-adjusted) test behind a reading.

    Returns
    -------
    dict
        ``n``, ``mean``, ``std`` (sample, 0 for one seed), ``ci_low``, ``ci_high`` (t
        interval), ``ci``, ``p_t`` (paired t), ``p_wilcoxon``, ``p_holm`` (``p_t`` adjusted
        in its family; here ``p_t``), ``family`` (its size), ``sign``, ``better``/``worse``
        (seed counts where a beats / loses to b) and ``reading`` (module docstring).
    """
    if sign not in (1, -1):
        raise ValueError(f"paired_comparison: sign must be +1 or -1, got {sign}")
    d = _diffs(diffs, "paired_comparison")
    if d.ndim != 1:
        raise ValueError("paired_comparison: need a 1-D list of differences")
    low, high = t_interval(d, ci=ci)
    p_t = paired_t_p(d)
    return {
        "n": int(d.size),
        "mean": float(d.mean()),
        "std": float(d.std(ddof=1)) if d.size > 1 else 0.0,
        "ci_low": low,
        "ci_high": high,
        "ci": ci,
        "p_t": p_t,
        "p_wilcoxon": wilcoxon_p(d),
        "p_holm": p_t,
        "family": 1,
        "alpha": alpha,
        "sign": sign,
        "diffs": d.tolist(),
        "better": int(np.sum(sign * d > 0)),
        "worse": int(np.sum(sign * d < 0)),
        "reading": _reading(d, low, high, p_t, sign, alpha),
    }


def adjust_family(comparisons: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Holm-adjust a declared family of :func:`paired_comparison` results and re-read them.

    Returns new dicts with ``p_holm`` (Holm over the family's ``p_t``), ``family`` (its size)
    and ``reading`` recomputed: better/worse only where the t interval excludes 0 and
    ``p_holm < alpha``.

    >>> fam = [paired_comparison(x, sign=-1) for x in ([-.02, -.03, -.01, -.025, -.02],
    ...                                                 [-.01, .01, -.03, -.02, -.01])]
    >>> [c["reading"] for c in fam], [c["reading"] for c in adjust_family(fam)]
    (['better', 'no difference shown'], ['better', 'no difference shown'])
    >>> one = paired_comparison([0.01, 0.03, 0.005, 0.02, 0.015], sign=+1)   # p_t = 0.021
    >>> one["reading"], adjust_family([one] * 3)[0]["reading"]               # x3 > 0.05
    ('better', 'no difference shown')
    """
    adjusted = holm([c["p_t"] for c in comparisons])
    out = []
    for c, p in zip(comparisons, adjusted):
        d = np.asarray(c["diffs"], dtype=np.float64)
        out.append({**c, "p_holm": p, "family": len(comparisons),
                    "reading": _reading(d, c["ci_low"], c["ci_high"], p, c["sign"], c.get("alpha", ALPHA))})
    return out


def class_balanced_mean(values: Any, labels: Any) -> Any:
    """Mean within each true class present, then over those classes, along the last axis.

    Parameters
    ----------
    values : array-like, shape (..., N)
    labels : array-like, shape (N,) int

    >>> class_balanced_mean([1.0, 3.0, 10.0], [0, 0, 1])   # mean(2, 10)
    6.0
    """
    v = np.asarray(values, dtype=np.float64)
    y = np.asarray(labels)
    if y.ndim != 1 or v.shape[-1] != y.size or y.size == 0:
        raise ValueError(f"class_balanced_mean: values (..., {v.shape[-1]}) and labels ({y.size},) must match")
    means = [v[..., y == c].mean(axis=-1) for c in np.unique(y)]
    out = np.mean(means, axis=0)
    return float(out) if np.ndim(out) == 0 else out


def two_level_bootstrap(
    a: Any,
    b: Any,
    labels: Any,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    chunk: int = 100,
) -> dict[str, Any]:
    """Two-level percentile bootstrap of the mean paired difference of a class-balanced
    per-item metric: resample seeds, then test items within each resampled seed.

    Each replicate draws S seeds with replacement and, for each drawn seed independently,
    ``n_c`` items with replacement within each true class c (stratified, so every class
    keeps its count and the class-balanced mean is recomputed as defined); the replicate
    is the mean over the drawn seeds of the class-balanced mean of ``a - b`` over the drawn
    items. (The class-balanced mean is linear, so that is CB(a) - CB(b).)

    Parameters
    ----------
    a, b : array-like, shape (S, N)
        Per-item metric (e.g. :func:`knot.metrics.semantic_distance_per_item`) of the two
        models, per seed, on the same N test items in the same order.
    labels : array-like, shape (N,) int
        True class of each item.
    ci, n_boot, seed
        Coverage, replicates, seed of the generator.
    chunk : int
        Replicates drawn at once (memory ``chunk * S * N`` floats).

    Returns
    -------
    dict
        ``mean`` (over seeds of the class-balanced mean difference), ``ci_low``,
        ``ci_high``, ``ci``, ``n_seeds``, ``n_items``, ``n_boot``.

    >>> a = [[1.0, 1.0, 2.0], [1.0, 1.0, 2.0]]
    >>> b = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    >>> r = two_level_bootstrap(a, b, [0, 0, 1], n_boot=200)
    >>> r["mean"], r["ci_low"], r["ci_high"]   # constant within classes: no spread
    (1.5, 1.5, 1.5)
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (S, N)
    y = np.asarray(labels)
    if d.ndim != 2 or d.shape[1] != y.size or d.shape[1] == 0:
        raise ValueError(f"two_level_bootstrap: a and b must be (S, N) with N = len(labels), got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("two_level_bootstrap: values must be finite")
    if not 0.0 < ci < 1.0 or n_boot < 1 or chunk < 1:
        raise ValueError("two_level_bootstrap: need 0 < ci < 1, n_boot >= 1, chunk >= 1")
    s = d.shape[0]
    rng = np.random.default_rng(seed)
    strata = [d[:, y == c] for c in np.unique(y)]  # each (S, n_c)
    reps = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        seeds = rng.integers(0, s, size=(m, s))  # (m, S) drawn seeds
        per_class = []
        for dc in strata:
            n_c = dc.shape[1]
            items = rng.integers(0, n_c, size=(m, s, n_c))  # (m, S, n_c) drawn items per drawn seed
            per_class.append(dc[seeds[:, :, None], items].mean(axis=2))  # (m, S)
        reps[start:start + m] = np.mean(per_class, axis=0).mean(axis=1)  # (m,)
    q = (1.0 - ci) / 2.0
    low, high = np.quantile(reps, [q, 1.0 - q])
    return {"mean": float(class_balanced_mean(d, y).mean()), "ci_low": float(low), "ci_high": float(high),
            "ci": ci, "n_seeds": s, "n_items": int(y.size), "n_boot": n_boot}

"""Paired comparisons over seeds (knot.stats): values worked out by hand, checked against
scipy, and the t interval's coverage checked by simulation."""

import itertools

import numpy as np
import pytest
from scipy.stats import ttest_1samp, wilcoxon

from knot.stats import (adjust_family, bootstrap_ci, class_balanced_mean, holm, paired_comparison, paired_t_p,
                        t_interval, two_level_bootstrap, wilcoxon_p)


def test_bootstrap_ci_of_constant_is_the_constant():
    assert bootstrap_ci([0.25] * 5, n_boot=500) == (0.25, 0.25)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    d = [0.1, -0.05, 0.2, 0.0, 0.05, 0.12]
    low, high = bootstrap_ci(d, n_boot=4000, seed=3)
    assert low < np.mean(d) < high
    assert (low, high) == bootstrap_ci(d, n_boot=4000, seed=3)
    assert min(d) <= low and high <= max(d)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")]])
def test_bad_input_is_rejected(bad):
    for fn in (bootstrap_ci, t_interval, paired_comparison):
        with pytest.raises(ValueError):
            fn(bad)


@pytest.mark.parametrize("n", [5, 10])
@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_t_interval_covers_95_percent_of_simulated_paired_data(n, shift):
    # 4,000 simulated sets of n paired normal differences (mean `shift`, SD 1), all at once
    rng = np.random.default_rng(20 + n)
    d = rng.normal(shift, 1.0, size=(4000, n))
    low, high = t_interval(d)
    coverage = np.mean((low <= shift) & (shift <= high))
    assert 0.93 <= coverage <= 0.97, coverage
    # the same sets' paired t p-values reject a true null at about 5 %
    if shift == 0.0:
        assert 0.03 <= np.mean((low > 0) | (high < 0)) <= 0.07


def test_percentile_bootstrap_undercovers_at_five_seeds():
    """Why the page moved off the bootstrap (issue 20): its null false exclusions exceed 5 %."""
    rng = np.random.default_rng(5)
    d = rng.normal(0.0, 1.0, size=(400, 5))
    excl = np.mean([not (lo <= 0 <= hi) for lo, hi in (bootstrap_ci(x, n_boot=500, seed=i) for i, x in enumerate(d))])
    assert excl > 0.09


def test_t_interval_and_p_by_hand_and_against_scipy():
    # mean 2, s = 1, n = 3: t_{2, 0.975} = 4.302653
    low, high = t_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.302653 / np.sqrt(3), 2 + 4.302653 / np.sqrt(3)), rel=1e-6)
    d = [0.3, -0.1, 0.25, 0.4, 0.05, 0.2]
    assert paired_t_p(d) == pytest.approx(ttest_1samp(d, 0.0).pvalue)
    assert t_interval([0.4]) == (-np.inf, np.inf)
    assert paired_t_p([0.0, 0.0]) == 1.0 and paired_t_p([0.1, 0.1]) == 0.0


def test_wilcoxon_method_is_explicit():
    no_ties = [0.3, -0.1, 0.25, 0.4, 0.0, 0.05, 0.2]
    nz = [x for x in no_ties if x != 0]
    assert wilcoxon_p(no_ties) == pytest.approx(wilcoxon(nz, method="exact").pvalue)
    ties = [0.1, 0.1, -0.2, 0.3, 0.3, 0.4]
    assert wilcoxon_p(ties) == pytest.approx(
        wilcoxon(ties, method="approx", correction=False, zero_method="wilcox").pvalue)
    assert wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 2**5)
    assert wilcoxon_p(range(1, 11)) == pytest.approx(2 / 2**10)   # the floor at 10 seeds
    assert wilcoxon_p([0, 0, 0]) == 1.0


def test_holm_by_hand_and_against_brute_force():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.uniform(0, 0.2, size=6)
        m = len(p)
        order = sorted(range(m), key=lambda i: p[i])
        brute = [0.0] * m
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[i]))
            brute[i] = running
        assert holm(p) == pytest.approx(brute)
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


def test_reading_follows_interval_direction_and_family():
    up = [0.02, 0.03, 0.01, 0.04, 0.02, 0.03]
    down = [-x for x in up]
    assert paired_comparison(up, sign=+1)["reading"] == "better"
    assert paired_comparison(up, sign=-1)["reading"] == "worse"      # a larger distance is worse
    assert paired_comparison(down, sign=-1)["reading"] == "better"
    assert paired_comparison([0.0, 0.0, 0.0])["reading"] == "equal"
    mixed = paired_comparison([0.05, -0.04, 0.03, -0.06], sign=+1)
    assert mixed["reading"] == "no difference shown" and mixed["ci_low"] < 0 < mixed["ci_high"]
    assert (mixed["better"], mixed["worse"], mixed["n"]) == (2, 2, 4)
    # 3 better / 2 worse of 5 seeds (the example) is no longer read as better
    assert paired_comparison([0.05, 0.04, 0.06, -0.01, -0.02], sign=+1)["reading"] == "no difference shown"
    # p_t = 0.021 alone: better; in a family of 4 Holm multiplies it by 4: not shown
    one = paired_comparison([0.01, 0.03, 0.005, 0.02, 0.015], sign=+1)
    assert one["p_t"] == pytest.approx(0.0213, abs=1e-3) and one["reading"] == "better"
    strong = paired_comparison([0.02, 0.021, 0.019, 0.022, 0.02], sign=+1)
    fam = adjust_family([one, strong, mixed, paired_comparison([0.01, -0.01, 0.0, 0.02], sign=+1)])
    assert [c["family"] for c in fam] == [4] * 4
    assert fam[0]["p_holm"] == pytest.approx(min(1, 3 * one["p_t"]))  # second smallest of 4: x3
    assert [c["reading"] for c in fam[:2]] == ["no difference shown", "better"]


def test_comparison_fields():
    r = paired_comparison([1.0, 3.0], sign=+1)
    assert r["mean"] == 2.0 and r["std"] == pytest.approx(np.sqrt(2.0)) and r["ci"] == 0.95
    assert r["family"] == 1 and r["p_holm"] == r["p_t"]
    assert paired_comparison([1.0])["std"] == 0.0
    with pytest.raises(ValueError):
        paired_comparison([1.0], sign=0)


def test_class_balanced_mean():
    assert class_balanced_mean([1.0, 3.0, 10.0], [0, 0, 1]) == 6.0
    np.testing.assert_allclose(class_balanced_mean([[1.0, 3.0, 10.0], [0.0, 0.0, 4.0]], [0, 0, 1]), [6.0, 2.0])


def _two_level_brute(d, y, n_boot, seed):
    """The two-level bootstrap written as loops, drawing the same random numbers."""
    rng = np.random.default_rng(seed)
    s = d.shape[0]
    classes = np.unique(y)
    reps = []
    seeds = items = None
    for _ in range(n_boot):
        seeds = rng.integers(0, s, size=(1, s))[0]
        per_class = []
        for c in classes:
            dc = d[:, y == c]
            idx = rng.integers(0, dc.shape[1], size=(1, s, dc.shape[1]))[0]
            per_class.append([dc[seeds[k], idx[k]].mean() for k in range(s)])
        reps.append(np.mean(np.mean(per_class, axis=0)))
    return np.quantile(reps, [0.025, 0.975])


def test_two_level_bootstrap_matches_a_brute_force_loop():
    rng = np.random.default_rng(1)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    a, b = rng.normal(1.0, 0.3, (4, 9)), rng.normal(0.8, 0.3, (4, 9))
    r = two_level_bootstrap(a, b, y, n_boot=300, seed=7, chunk=1)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(_two_level_brute(a - b, y, 300, 7)))
    assert r["mean"] == pytest.approx(np.mean([class_balanced_mean(x, y) for x in a - b]))
    # chunking changes the order of draws, not the method: same seed -> same answer per chunk size
    assert two_level_bootstrap(a, b, y, n_boot=300, seed=7) == two_level_bootstrap(a, b, y, n_boot=300, seed=7)


def test_two_level_bootstrap_by_hand():
    # one seed, class 0 items differ by 0 and 2, class 1 item by 4: a class-0 resample has
    # mean 0, 1 or 2 (prob 1/4, 1/2, 1/4); class 1 is always 4 -> replicate (m0 + 4) / 2
    d = np.array([[0.0, 2.0, 4.0]])
    r = two_level_bootstrap(d, np.zeros_like(d), [0, 0, 1], n_boot=4000, seed=0)
    assert r["mean"] == 2.5
    assert (r["ci_low"], r["ci_high"]) == (2.0, 3.0)
    # the exact distribution of replicates, enumerated
    reps = [(np.mean([d[0, i], d[0, j]]) + 4) / 2 for i, j in itertools.product([0, 1], repeat=2)]
    assert sorted(set(reps)) == [2.0, 2.5, 3.0]


def test_two_level_bootstrap_is_wider_than_seeds_alone_when_items_vary():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    item = rng.normal(0, 1.0, 300)  # per-item effect shared by all seeds
    a = item + rng.normal(0, 0.01, (10, 300)) - 0.05
    b = np.zeros((10, 300))
    seed_only = t_interval([class_balanced_mean(x, y) for x in a - b])
    r = two_level_bootstrap(a, b, y, n_boot=500, seed=0)
    assert (r["ci_high"] - r["ci_low"]) > 5 * (seed_only[1] - seed_only[0])

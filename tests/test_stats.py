"""Paired comparisons over seeds (knot.stats): values worked out by hand or checked against scipy."""

import numpy as np
import pytest
from scipy.stats import wilcoxon

from knot.stats import bootstrap_ci, paired_comparison, wilcoxon_p


def test_bootstrap_ci_of_constant_is_the_constant():
    assert bootstrap_ci([0.25] * 5, n_boot=500) == (0.25, 0.25)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    d = [0.1, -0.05, 0.2, 0.0, 0.05, 0.12]
    low, high = bootstrap_ci(d, n_boot=4000, seed=3)
    assert low < np.mean(d) < high
    assert (low, high) == bootstrap_ci(d, n_boot=4000, seed=3)
    # the interval cannot leave the range of the data (means of resamples)
    assert min(d) <= low and high <= max(d)


def test_bootstrap_ci_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    small = rng.normal(0.0, 1.0, 5)
    large = rng.normal(0.0, 1.0, 200)
    w_small = np.subtract(*bootstrap_ci(small, seed=0)[::-1])
    w_large = np.subtract(*bootstrap_ci(large, seed=0)[::-1])
    assert w_large < w_small


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, float("nan")]])
def test_bootstrap_ci_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        bootstrap_ci(bad)


def test_wilcoxon_matches_scipy_and_drops_zeros():
    d = [0.3, -0.1, 0.25, 0.4, 0.0, 0.05, 0.2]
    expected = wilcoxon([x for x in d if x != 0]).pvalue
    assert wilcoxon_p(d) == pytest.approx(expected)
    # all positive, n = 5: exact two-sided p = 2 / 2**5
    assert wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(0.0625)
    assert wilcoxon_p([0, 0, 0]) == 1.0


def test_reading_follows_the_interval_and_the_metric_direction():
    up = [0.02, 0.03, 0.01, 0.04, 0.02, 0.03]
    down = [-x for x in up]
    assert paired_comparison(up, sign=+1)["reading"] == "better"
    assert paired_comparison(up, sign=-1)["reading"] == "worse"      # a larger distance is worse
    assert paired_comparison(down, sign=-1)["reading"] == "better"
    assert paired_comparison(down, sign=+1)["reading"] == "worse"
    assert paired_comparison([0.0, 0.0, 0.0])["reading"] == "equal"
    mixed = paired_comparison([0.05, -0.04, 0.03, -0.06], sign=+1)
    assert mixed["reading"] == "no difference shown"
    assert mixed["ci_low"] < 0 < mixed["ci_high"]
    assert (mixed["better"], mixed["worse"], mixed["n"]) == (2, 2, 4)


def test_comparison_fields():
    r = paired_comparison([1.0, 3.0], sign=+1, n_boot=100)
    assert r["mean"] == 2.0 and r["std"] == pytest.approx(np.sqrt(2.0)) and r["ci"] == 0.95
    assert paired_comparison([1.0], n_boot=10)["std"] == 0.0
    with pytest.raises(ValueError):
        paired_comparison([1.0], sign=0)

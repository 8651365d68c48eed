"""knot.metrics: hand-computed Semantic Distance and expected cost, F1 conventions, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from knot.geometry import LabelGeometry
from knot.metrics import (
    accuracy,
    evaluate_probs,
    expected_cost,
    macro_f1,
    per_class_report,
    semantic_distance,
)
from knot.ot import ot_cost

STARS = LabelGeometry.preset("sentiment5")
PROPS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_semantic_distance_1d_by_hand():
    probs = np.array(
        [
            [0.5, 0.5, 0.0, 0.0, 0.0],  # true "1" at -2; E[x] = -1.5 -> 0.5
            [1.0, 0.0, 0.0, 0.0, 0.0],  # true "1"; exact -> 0
            [0.0, 0.0, 0.0, 0.0, 1.0],  # true "3" at 0; predicted 2 -> 2
            [0.25, 0.0, 0.0, 0.0, 0.75],  # true "5" at 2; E[x] = 1.0 -> 1
        ]
    )
    y = np.array([0, 0, 2, 4])
    # class means: "1": 0.25, "3": 2, "5": 1; classes "2" and "4" have no examples
    assert semantic_distance(probs, y, STARS.coords) == pytest.approx((0.25 + 2 + 1) / 3)
    assert semantic_distance(probs, y, STARS, average="example") == pytest.approx((0.5 + 0 + 2 + 1) / 4)
    # expected cost: 0.5, 0, 2, 0.25 * 4 = 1 -> class means 0.25, 2, 1
    assert expected_cost(probs, y, STARS.cost) == pytest.approx((0.25 + 2 + 1) / 3)


def test_semantic_distance_2d_by_hand():
    g = LabelGeometry.preset("emotion5")  # anger (-0.4, 0.8), joy (0.9, 0.2), neutral (0, 0), ...
    probs = np.array(
        [
            [0.0, 0.5, 0.5, 0.0, 0.0],  # true neutral; E = (0.45, 0.1) -> |(0.45, 0.1)|
            [0.0, 0.0, 0.0, 0.0, 1.0],  # true joy; surprise (0.4, 0.9) -> |(-0.5, 0.7)|
            [0.0, 1.0, 0.0, 0.0, 0.0],  # true joy; exact -> 0
        ]
    )
    y = np.array([2, 1, 1])
    d_neutral = math.hypot(0.45, 0.1)
    d_joy = (math.hypot(0.5, 0.7) + 0.0) / 2
    assert semantic_distance(probs, y, g.coords) == pytest.approx((d_neutral + d_joy) / 2)
    # expected cost to neutral: 0.5 * |joy| ; to joy: |surprise - joy|, 0
    e_neutral = 0.5 * math.hypot(0.9, 0.2)
    e_joy = math.hypot(0.5, 0.7) / 2
    assert expected_cost(probs, y, g.cost) == pytest.approx((e_neutral + e_joy) / 2)


@PROPS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30))
def test_expected_cost_is_ot_to_the_one_hot_label_and_bounds_semantic_distance(seed, n):
    g = LabelGeometry.preset("emotion5")
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(5, 0.5), size=n)
    y = rng.integers(0, 5, size=n)
    ot = ot_cost(torch.from_numpy(probs), torch.eye(5, dtype=torch.float64)[y], g).numpy()
    per_class = [ot[y == c].mean() for c in np.unique(y)]
    assert expected_cost(probs, y, g) == pytest.approx(np.mean(per_class), abs=1e-9)
    # Jensen: |E[c] - c_y| <= E|c - c_y| example by example, so also on the class means
    assert semantic_distance(probs, y, g) <= expected_cost(probs, y, g) + 1e-12


def test_macro_f1_ignores_classes_absent_from_truth_and_predictions():
    y_true = [0, 0, 1, 1]
    y_pred = [0, 1, 1, 1]
    # classes 2..4 of the five never occur: F1 over classes {0, 1} only
    expected = f1_score(y_true, y_pred, average="macro")
    assert macro_f1(y_true, y_pred, num_labels=5) == pytest.approx(expected)
    # a predicted-but-never-true class counts with F1 = 0
    assert macro_f1([0, 0], [0, 3], num_labels=5) == pytest.approx((2 / 3 + 0) / 2)


def test_accuracy_and_per_class_report():
    assert accuracy(np.array([1, 2, 3]), torch.tensor([1, 2, 0])) == pytest.approx(2 / 3)
    report = per_class_report([0, 0, 1, 2], [0, 1, 1, 2], ["neg", "neu", "pos", "mixed"])
    assert list(report) == ["neg", "neu", "pos", "mixed"]
    assert report["neg"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert report["neu"]["precision"] == 0.5 and report["neu"]["recall"] == 1.0
    assert report["mixed"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_evaluate_probs_accepts_numpy_and_torch():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=20)
    y = rng.integers(0, 5, size=20)
    a = evaluate_probs(probs, y, STARS)
    b = evaluate_probs(torch.from_numpy(probs).float(), torch.from_numpy(y), STARS)
    assert list(a) == ["n", "accuracy", "macro_f1", "semantic_distance", "expected_cost", "mean_entropy"]
    assert a["mean_entropy"] == pytest.approx(float(np.mean(-(probs * np.log(probs)).sum(1))))
    assert a["n"] == 20 and isinstance(a["n"], int)
    for key in ("accuracy", "macro_f1"):
        assert a[key] == b[key]
    for key in ("semantic_distance", "expected_cost"):
        assert a[key] == pytest.approx(b[key], rel=1e-6)
    pred = probs.argmax(1)
    assert a["accuracy"] == pytest.approx(np.mean(pred == y))
    assert a["macro_f1"] == pytest.approx(macro_f1(y, pred, 5))


def test_perfect_predictions_score_perfectly():
    y = np.array([0, 1, 2, 3, 4, 4])
    m = evaluate_probs(np.eye(5)[y], y, LabelGeometry.preset("sentiment5-knot6d"))
    assert m == {"n": 6, "accuracy": 1.0, "macro_f1": 1.0, "semantic_distance": 0.0, "expected_cost": 0.0,
                 "mean_entropy": 0.0}


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (np.full((2, 4), 0.25), [0, 1], "probs: 4 columns but the geometry has K=5"),
        (np.full((2, 5), 0.2), [0, 5], r"labels: class index 5 outside \[0, 4\]"),
        (np.full((2, 5), 0.2), [0, 1, 2], "probs has 2 rows but labels has 3"),
        (np.array([[0.2, 0.2, 0.2, 0.2, np.nan]] * 2), [0, 1], "probs: row 0 contains NaN"),
        (np.array([[0.6, 0.6, -0.2, 0.0, 0.0]] * 2), [0, 1], "probs: row 0 has negative entries"),
        (np.array([[0.2] * 5, [0.5] * 5]), [0, 1], "probs: row 1 sums to 2.5"),
        (np.full((2, 5), 0.2), [0.5, 1], "labels: expected integer class indices"),
        (np.full(5, 0.2), [0], r"probs: expected shape \(N, K\)"),
        (np.zeros((0, 5)), [], "no examples"),
    ],
)
def test_bad_input_is_rejected(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        evaluate_probs(probs, np.array(labels), STARS)


def test_bad_average_and_coords():
    with pytest.raises(ValueError, match="average: expected 'class' or 'example'"):
        semantic_distance(np.eye(5)[:2], [0, 1], STARS, average="macro")
    with pytest.raises(ValueError, match=r"cost: expected shape \(K, K\)"):
        expected_cost(np.eye(5)[:2], [0, 1], np.zeros((5, 4)))


# ---- gold (human) distributions --------------------------------------------------------


def test_gold_metrics_by_hand():
    from knot.metrics import evaluate_gold, js_divergence, spearman_to_score, total_variation, w1_to_gold

    g = LabelGeometry.preset("sentiment5")  # coordinates -2..2
    p = np.array([[0.0, 0.0, 1.0, 0.0, 0.0],     # all on "3"
                  [0.0, 0.0, 0.0, 0.5, 0.5]])    # half "4", half "5"
    h = np.array([[0.0, 0.5, 0.0, 0.5, 0.0],     # raters split between "2" and "4"
                  [0.0, 0.0, 0.0, 0.0, 1.0]])
    # W1: row 1 moves 0.5 one step each way = 1.0; row 2 moves 0.5 one step = 0.5; mean 0.75
    assert w1_to_gold(p, h, g) == pytest.approx(0.75)
    assert w1_to_gold(p, h, g, average=False) == pytest.approx([1.0, 0.5])
    # TV: row 1 disjoint = 1.0; row 2 0.5 * (0.5 + 0.5) = 0.5
    assert total_variation(p, h) == pytest.approx(0.75)
    # JS: row 1 disjoint supports = 1 bit; row 2: m = (0, 0, 0, .25, .75),
    # KL(p||m) = .5 log2 2 + .5 log2(2/3), KL(h||m) = log2(4/3)
    row2 = 0.5 * (0.5 + 0.5 * math.log2(2 / 3)) + 0.5 * math.log2(4 / 3)
    assert js_divergence(p, h) == pytest.approx((1.0 + row2) / 2)
    # expected coordinates 0 and 1.5 rank like the scores 0.1 < 2.0, but 2 points always give +-1
    assert spearman_to_score(p, [0.1, 2.0], g.coords.numpy()) == pytest.approx(1.0)
    assert spearman_to_score(p, [2.0, 0.1], g.coords.numpy()) == pytest.approx(-1.0)
    m = evaluate_gold(p, h, g)
    assert m["spearman_gold"] is None and m["w1_gold"] == pytest.approx(0.75)


def test_gold_w1_equals_tv_under_a_01_cost_and_matches_scipy_in_1d():
    from scipy.stats import wasserstein_distance

    from knot.metrics import total_variation, w1_to_gold

    rng = np.random.default_rng(0)
    p, h = rng.dirichlet(np.ones(5), 20), rng.dirichlet(np.ones(5), 20)
    assert w1_to_gold(p, h, 1.0 - np.eye(5)) == pytest.approx(total_variation(p, h), abs=1e-9)
    pos = np.arange(5, dtype=float) - 2
    ref = np.mean([wasserstein_distance(pos, pos, a, b) for a, b in zip(p, h)])
    assert w1_to_gold(p, h, LabelGeometry.preset("sentiment5")) == pytest.approx(ref, abs=1e-9)


def test_gold_metrics_reject_mismatched_shapes_and_non_1d_spearman():
    from knot.metrics import spearman_to_score, total_variation

    with pytest.raises(ValueError, match="probs: 3 columns"):
        total_variation(np.full((2, 2), 0.5), np.full((2, 3), 1 / 3))
    g2 = LabelGeometry.preset("emotion5")  # 2-D: no single expected position
    assert spearman_to_score(np.full((3, 5), 0.2), [1.0, 2.0, 3.0], g2.coords.numpy()) is None

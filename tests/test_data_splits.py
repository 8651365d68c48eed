"""Split sizes, stratification, determinism, no dialogue leakage, partitions, subsets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knot.data.splits import (
    apportion,
    assign_splits,
    derive_rng,
    group_assign,
    partition,
    stratified_assign,
    stratified_subsample,
)

RATIOS = [0.7, 0.1, 0.2]


@given(
    counts=st.lists(st.integers(0, 60), min_size=1, max_size=6),
    ratios=st.sampled_from([RATIOS, [0.8, 0.1, 0.1], [0.5, 0.25, 0.25], [0.6, 0.0, 0.4]]),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=150, deadline=None)
def test_stratified_split_is_within_one_example_per_class_and_exact_in_size(counts, ratios, seed):
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    a = stratified_assign(labels, ratios, derive_rng(seed))
    sizes = np.bincount(a, minlength=3)
    assert sizes.tolist() == apportion(len(labels), ratios).tolist()
    for c, n in enumerate(counts):
        got = np.bincount(a[np.asarray(labels) == c], minlength=3)
        assert np.all(np.abs(got - n * np.asarray(ratios)) < 1 + 1e-9), (c, n, got)


def test_split_sizes_by_hand():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20  # 100 items
    a = stratified_assign(labels, RATIOS, derive_rng(1))
    assert np.bincount(a).tolist() == [70, 10, 20]
    per_class = {lab: np.bincount(a[np.asarray(labels) == lab], minlength=3).tolist() for lab in "abc"}
    assert per_class == {"a": [35, 5, 10], "b": [21, 3, 6], "c": [14, 2, 4]}


def test_same_seed_same_split_other_seed_other_split():
    labels = [i % 5 for i in range(500)]
    one = stratified_assign(labels, RATIOS, derive_rng(2021, "split"))
    assert np.array_equal(one, stratified_assign(labels, RATIOS, derive_rng(2021, "split")))
    assert not np.array_equal(one, stratified_assign(labels, RATIOS, derive_rng(2022, "split")))
    assert not np.array_equal(one, stratified_assign(labels, RATIOS, derive_rng(2021, "other")))


def dialogues(n: int, seed: int = 0):
    """n dialogues of 2..20 utterances with a skewed label mix."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for d in range(n):
        for _ in range(int(rng.integers(2, 21))):
            labels.append(str(rng.choice(["neutral", "joy", "anger", "sad"], p=[0.7, 0.15, 0.1, 0.05])))
            groups.append(f"d{d}")
    return labels, groups


def test_group_split_never_puts_a_dialogue_in_two_splits_and_is_balanced():
    labels, groups = dialogues(600)
    a = group_assign(labels, groups, RATIOS, derive_rng(3))
    where = {}
    for g, s in zip(groups, a):
        assert where.setdefault(g, s) == s
    n = len(labels)
    sizes = np.bincount(a, minlength=3)
    assert np.all(np.abs(sizes - n * np.asarray(RATIOS)) <= 20)  # within one dialogue
    for lab, total in Counter(labels).items():
        got = np.bincount(a[np.asarray(labels) == lab], minlength=3)
        assert np.all(np.abs(got - total * np.asarray(RATIOS)) <= max(3, 0.1 * total)), (lab, got)
    # dialogues are not sorted into splits by length
    lengths = Counter(groups)
    mean_len = [np.mean([lengths[g] for g, s in where.items() if s == k]) for k in range(3)]
    assert max(mean_len) - min(mean_len) < 3


def test_group_split_deterministic_per_seed():
    labels, groups = dialogues(200)
    one = group_assign(labels, groups, RATIOS, derive_rng(5))
    assert np.array_equal(one, group_assign(labels, groups, RATIOS, derive_rng(5)))
    assert not np.array_equal(one, group_assign(labels, groups, RATIOS, derive_rng(6)))


def test_assign_splits_uses_groups_only_when_they_repeat():
    labels = ["a", "b"] * 10
    by_item = assign_splits(labels, [None] * 20, [0.5, 0.25, 0.25], derive_rng(0))
    assert np.array_equal(by_item, stratified_assign(labels, [0.5, 0.25, 0.25], derive_rng(0)))
    groups = [i // 2 for i in range(20)]
    by_group = assign_splits(labels, groups, [0.5, 0.25, 0.25], derive_rng(0))
    assert all(by_group[i] == by_group[i + 1] for i in range(0, 20, 2))


def test_partition_gives_equal_disjoint_parts_independent_of_row_order():
    labels, groups = dialogues(400, seed=1)
    p = partition(labels, groups, 4, derive_rng(2021, "partition", 4))
    part_of = {}
    for g, k in zip(groups, p):
        assert part_of.setdefault(g, k) == k
    assert np.all(np.abs(np.bincount(p) - len(labels) / 4) <= 20)
    perm = np.random.default_rng(0).permutation(len(labels))
    q = partition([labels[i] for i in perm], [groups[i] for i in perm], 4, derive_rng(2021, "partition", 4))
    assert {groups[i]: k for i, k in zip(perm, q)} == part_of


def test_subsample_keeps_proportions_every_class_and_is_seeded():
    labels = ["a"] * 700 + ["b"] * 250 + ["c"] * 49 + ["d"]
    idx = stratified_subsample(labels, 100, derive_rng(1))
    got = Counter(labels[i] for i in idx)
    assert sum(got.values()) == 100 and list(idx) == sorted(idx)
    # quotas 70, 25, 4.9, 0.1: "d" takes its one from "c", the class furthest above quota
    assert (got["a"], got["b"], got["c"], got["d"]) == (70, 25, 4, 1)
    assert np.array_equal(idx, stratified_subsample(labels, 100, derive_rng(1)))
    assert not np.array_equal(idx, stratified_subsample(labels, 100, derive_rng(2)))
    assert len(stratified_subsample(labels, 5000, derive_rng(1))) == len(labels)


@pytest.mark.parametrize("total, weights, expected", [(3, [1, 1, 1], [1, 1, 1]), (2, [1, 1, 1], [1, 1, 0]),
                                                      (9, [0.7, 0.1, 0.2], [6, 1, 2]), (0, [1, 2], [0, 0])])
def test_apportion_by_hand(total, weights, expected):
    assert apportion(total, weights).tolist() == expected

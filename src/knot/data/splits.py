"""Seeded, stratified train/val/test splits, partitions and subsets.

Pure functions over label and group sequences; they return split indices and never
touch files.

* Without dialogues every class is split on its own (:func:`stratified_assign`): the
  count of each class in each split is within one example of ``n_class * ratio`` and the
  split sizes are exactly ``round(n * ratio)`` (largest remainders), so the per-class
  proportions match the targets as closely as whole examples allow.
* With dialogues (``groups``) whole dialogues are assigned (:func:`group_assign`): no
  dialogue is ever in two splits, and a greedy pass that visits dialogues in random
  order puts each one where it best closes the gap to the per-class and per-split
  targets.
* :func:`partition` cuts a corpus into equal parts the same way (DailyDialog into four
  domains); :func:`stratified_subsample` takes a seeded subset with the class
  proportions kept.
* :func:`first_occurrences` finds exact duplicate texts (dropped before splitting, so one
  text is never in two splits) and :func:`shared_texts` counts the texts two domains'
  splits have in common.

Randomness comes from :func:`derive_rng`, which turns ``(seed, tag, ...)`` into an
independent NumPy generator, so the partition, the split and each subset use different
streams of the same seed.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Hashable, Sequence

import numpy as np

__all__ = [
    "derive_rng",
    "apportion",
    "stratified_assign",
    "group_assign",
    "assign_splits",
    "partition",
    "stratified_subsample",
    "first_occurrences",
    "shared_texts",
]

_EPS = 1e-9


def derive_rng(seed: int, *tags: str | int) -> np.random.Generator:
    """A NumPy generator determined by ``seed`` and the ``tags`` (stable across runs).

    >>> int(derive_rng(1, "split").integers(100)) == int(derive_rng(1, "split").integers(100))
    True
    """
    words = [int(seed) % (2**63)]
    for tag in tags:
        digest = hashlib.sha256(str(tag).encode("utf-8")).digest()
        words.append(int.from_bytes(digest[:8], "little"))
    return np.random.default_rng(np.random.SeedSequence(words))


def apportion(total: int, weights: Sequence[float]) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (largest remainders).

    Every share is ``floor`` or ``ceil`` of its exact quota and the shares sum to
    ``total``; ties go to the earlier weight.

    >>> apportion(10, [0.7, 0.1, 0.2]).tolist()
    [7, 1, 2]
    >>> apportion(7, [0.7, 0.1, 0.2]).tolist()
    [5, 1, 1]
    >>> apportion(5, [3, 1]).tolist()
    [4, 1]
    """
    w = np.asarray(weights, dtype=np.float64)
    if total == 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    quota = total * w / w.sum()
    share = np.floor(quota + _EPS).astype(np.int64)
    left = int(total - share.sum())
    frac = quota - share
    order = sorted(range(len(w)), key=lambda i: (-round(frac[i], 9), i))
    for i in order[:left]:
        share[i] += 1
    return share


def _codes(labels: Sequence[Hashable]) -> tuple[list, np.ndarray]:
    """Distinct labels in a fixed order (None last) and each item's code."""
    keys = sorted(set(labels), key=lambda k: (k is None, str(k)))
    index = {k: i for i, k in enumerate(keys)}
    return keys, np.fromiter((index[x] for x in labels), dtype=np.int64, count=len(labels))


def _controlled_round(counts: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Integer ``(C, S)`` table: row c sums to ``counts[c]``, column s to
    ``apportion(N, ratios)[s]``, every cell within one of ``counts[c] * ratios[s]``."""
    target = counts[:, None] * ratios[None, :]  # (C, S)
    lo = np.floor(target + _EPS)
    hi = np.ceil(target - _EPS)
    alloc = np.stack([apportion(int(n), ratios) for n in counts]).astype(np.int64)  # (C, S)
    goal = apportion(int(counts.sum()), ratios)  # (S,)
    n_splits = len(ratios)
    for _ in range(int(counts.sum()) + 1):
        diff = alloc.sum(0) - goal
        if not diff.any():
            break
        # move one example along a path over -> ... -> under, each step through a class
        # whose cell may shrink at the start and grow at the end
        prev: dict[int, tuple[int, int]] = {}
        queue = deque(int(s) for s in np.flatnonzero(diff > 0))
        seen = set(queue)
        end = None
        while queue and end is None:
            s = queue.popleft()
            for t in range(n_splits):
                if t in seen:
                    continue
                ok = np.flatnonzero((alloc[:, s] > lo[:, s]) & (alloc[:, t] < hi[:, t]))
                if ok.size:
                    prev[t] = (s, int(ok[0]))
                    seen.add(t)
                    if diff[t] < 0:
                        end = t
                        break
                    queue.append(t)
        if end is None:  # cannot happen for a 2-D table; keep the row-wise rounding
            break
        t = end
        while t in prev:
            s, c = prev[t]
            alloc[c, s] -= 1
            alloc[c, t] += 1
            t = s
    return alloc


def stratified_assign(
    labels: Sequence[Hashable], ratios: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Split index (0, 1, 2, ...) of each item, stratified by label.

    Parameters
    ----------
    labels : sequence, length N
        Class of each item (any hashable; ``None`` is a class of its own).
    ratios : sequence of float, length S
        Target fraction of each split, summing to 1.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray of int64, shape (N,)

    Examples
    --------
    >>> a = stratified_assign(["x"] * 10 + ["y"] * 20, [0.7, 0.1, 0.2], derive_rng(0))
    >>> np.bincount(a).tolist(), np.bincount(a[:10]).tolist()
    ([21, 3, 6], [7, 1, 2])
    """
    r = np.asarray(ratios, dtype=np.float64)
    keys, codes = _codes(list(labels))
    if not keys:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(codes, minlength=len(keys))
    alloc = _controlled_round(counts, r)  # (C, S)
    out = np.empty(len(codes), dtype=np.int64)
    for c in range(len(keys)):
        idx = rng.permutation(np.flatnonzero(codes == c))
        bounds = np.cumsum(alloc[c])
        out[idx] = np.searchsorted(bounds, np.arange(len(idx)), side="right")
    return out


def group_assign(
    labels: Sequence[Hashable],
    groups: Sequence[Hashable],
    ratios: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Split index of each item such that all items of a group share one split.

    Groups are visited in random order and each goes to the split whose per-class and
    total counts it brings closest to target (so every split gets a random mix of long
    and short dialogues): it
    minimises :math:`\\sum_c (x_{sc} - t_{sc})^2 / n_c + C (x_s - t_s)^2 / N` after the
    move, where :math:`t_{sc} = n_c r_s`, :math:`t_s = N r_s`. Splits with ratio 0 get
    nothing.

    Parameters
    ----------
    labels, groups : sequence, length N
    ratios : sequence of float, length S
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray of int64, shape (N,)

    Examples
    --------
    >>> labels = ["a", "b"] * 50
    >>> groups = [i // 4 for i in range(100)]          # 25 dialogues of 4
    >>> a = group_assign(labels, groups, [0.6, 0.2, 0.2], derive_rng(0))
    >>> np.bincount(a).tolist()
    [60, 20, 20]
    """
    r = np.asarray(ratios, dtype=np.float64)
    keys, codes = _codes(list(labels))
    gkeys, gcodes = _codes(list(groups))
    n_classes, n_groups, n_splits = len(keys), len(gkeys), len(r)
    m = np.zeros((n_groups, n_classes), dtype=np.float64)  # (G, C) class counts per group
    np.add.at(m, (gcodes, codes), 1.0)
    size = m.sum(1)  # (G,)
    n_c = m.sum(0)  # (C,)
    total = float(n_c.sum())
    target = r[:, None] * n_c[None, :]  # (S, C)
    target_tot = r * total  # (S,)
    w = 1.0 / np.maximum(n_c, 1.0)  # (C,)
    lam = n_classes / max(total, 1.0)
    cur = np.zeros((n_splits, n_classes))  # (S, C)
    tot = np.zeros(n_splits)  # (S,)
    order = rng.permutation(n_groups)
    where = np.empty(n_groups, dtype=np.int64)
    closed = r <= 0
    for g in order:
        v = m[g]  # (C,)
        delta = ((2.0 * (cur - target) + v) * v * w).sum(1)  # (S,)
        delta += lam * (2.0 * (tot - target_tot) + size[g]) * size[g]
        delta[closed] = np.inf
        s = int(np.argmin(delta))
        where[g] = s
        cur[s] += v
        tot[s] += size[g]
    return where[gcodes]


def assign_splits(
    labels: Sequence[Hashable],
    groups: Sequence[Hashable] | None,
    ratios: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """:func:`group_assign` when some group holds several items, else
    :func:`stratified_assign`. Items whose group is ``None`` form groups of one."""
    if groups is not None:
        keyed = [g if g is not None else ("\0item", i) for i, g in enumerate(groups)]
        if len(set(keyed)) < len(keyed):
            return group_assign(labels, keyed, ratios, rng)
    return stratified_assign(labels, ratios, rng)


def partition(
    labels: Sequence[Hashable],
    groups: Sequence[Hashable] | None,
    parts: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Part index (0..parts-1) of each item: equal parts, stratified, whole groups.

    >>> p = partition(["a", "b"] * 40, [i // 2 for i in range(80)], 4, derive_rng(0))
    >>> np.bincount(p).tolist()
    [20, 20, 20, 20]
    """
    if parts < 1:
        raise ValueError(f"parts: expected >= 1, got {parts}")
    return assign_splits(labels, groups, [1.0 / parts] * parts, rng)


def stratified_subsample(labels: Sequence[Hashable], n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded subset of size ``n`` with the class proportions kept.

    Each class gets its largest-remainder share of ``n``; when ``n`` is at least the
    number of classes, a class that would get none takes one from the class furthest
    above its quota, so no class present in the input disappears.

    >>> idx = stratified_subsample(["a"] * 90 + ["b"] * 10, 20, derive_rng(0))
    >>> len(idx), int((idx >= 90).sum())
    (20, 2)
    >>> len(stratified_subsample(["a"] * 99 + ["b"], 10, derive_rng(0)))
    10
    """
    labels = list(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    keys, codes = _codes(labels)
    counts = np.bincount(codes, minlength=len(keys))
    alloc = apportion(n, counts)
    quota = n * counts / counts.sum()
    if n >= len(keys):
        for c in np.flatnonzero((alloc == 0) & (counts > 0)):
            donors = np.flatnonzero(alloc > 1)
            if donors.size == 0:
                break
            d = donors[np.argmax((alloc - quota)[donors])]
            alloc[d] -= 1
            alloc[c] += 1
    chosen = [
        rng.choice(np.flatnonzero(codes == c), size=int(alloc[c]), replace=False)
        for c in range(len(keys))
        if alloc[c] > 0
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def first_occurrences(texts: Sequence[str], labels: Sequence[Hashable]) -> tuple[list[int], int]:
    """Indices of the first occurrence of each distinct text, and the label conflicts.

    Returns ``(keep, conflicts)``: ``keep`` lists, in order, the index of every text's
    first occurrence; ``conflicts`` counts the later occurrences (dropped) whose label
    differs from the kept one's.

    >>> first_occurrences(["a", "b", "a", "a", "c"], [1, 2, 1, 3, 2])
    ([0, 1, 4], 1)
    """
    first: dict[str, int] = {}
    keep, conflicts = [], 0
    for i, text in enumerate(texts):
        j = first.setdefault(text, i)
        if j == i:
            keep.append(i)
        elif labels[j] != labels[i]:
            conflicts += 1
    return keep, conflicts


def shared_texts(a: dict[str, set[str]], b: dict[str, set[str]]) -> tuple[int, dict[tuple[str, str], int]]:
    """Texts two domains share: the number of distinct shared texts and, per pair of
    splits ``(split of a, split of b)``, how many (only pairs that share any).

    >>> shared_texts({"train": {"x", "y"}, "test": {"z"}}, {"train": {"y", "z"}})
    (2, {('train', 'train'): 1, ('test', 'train'): 1})
    """
    all_a = set().union(*a.values()) if a else set()
    all_b = set().union(*b.values()) if b else set()
    pairs = {}
    for sa, ta in a.items():
        for sb, tb in b.items():
            n = len(ta & tb)
            if n:
                pairs[(sa, sb)] = n
    return len(all_a & all_b), pairs

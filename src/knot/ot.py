r"""Optimal transport between histograms over a small set of labels.

Every function takes histograms ``p`` and ``q`` of shape ``(..., K)`` (leading dimensions
are batch dimensions and broadcast against each other) and a ground cost ``C`` of shape
``(K, K)``, and returns the OT cost

.. math::
    \mathrm{OT}_C(p, q) = \min_{P \ge 0,\; P\mathbf{1} = p,\; P^\top\mathbf{1} = q} \langle P, C \rangle

of shape ``(...)``, differentiable in ``p`` (and ``q``). They run on any device and in
float32 or float64, and never move data to a device on their own.

Solvers
-------
:func:`wasserstein_1d`
    exact closed form when the labels sit on a line (CDF differences times gaps).
:func:`exact_cost`
    exact for any cost through the dual: the LP's optimum is attained at a vertex of the dual
    polyhedron, and for small K the vertices are few (16 for five stars on a line, 70 for
    five points in the plane), so they are enumerated once per cost and the OT cost of a
    whole batch is one matrix product and a max. For a metric cost the Kantorovich-Rubinstein
    dual :math:`\max_{f \in \mathrm{Lip}_1(C)} f \cdot (p - q)` is used. Larger K falls back
    to :func:`lp_cost`.
:func:`lp_cost`
    exact per-pair network-simplex LP (POT's ``emd``), gradients from its dual potentials.
:func:`sinkhorn_plan`, :func:`sinkhorn_cost`
    batched log-domain Sinkhorn with eps-annealing, stopping on the marginal error, with an
    optional debiased Sinkhorn divergence.
:func:`ot_cost`
    the dispatcher used by :mod:`knot.losses`: ``method="auto"`` picks ``1d``, then the
    dual-vertex solver, then the LP; Sinkhorn only when asked for.

Gradients of the exact solvers are dual potentials (a subgradient where the optimal dual is
not unique); Sinkhorn's gradient is the converged dual potential (envelope theorem), not a
backward pass through the iterations.

>>> import torch
>>> from knot.geometry import LabelGeometry
>>> g = LabelGeometry.preset("sentiment5")
>>> p = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
>>> q = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5])
>>> ot_cost(p, q, g).item()  # half the mass moves 3 steps, half moves 4
3.5
>>> round(exact_cost(p, q, g.cost).item(), 6)
3.5
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "GroundCost",
    "as_ground_cost",
    "check_histograms",
    "wasserstein_1d",
    "exact_cost",
    "lp_cost",
    "SinkhornResult",
    "SinkhornConvergenceWarning",
    "sinkhorn_plan",
    "sinkhorn_cost",
    "ot_cost",
    "resolve_method",
    "METHODS",
]

log = logging.getLogger(__name__)

#: Values accepted by ``ot_cost(method=...)``.
METHODS = ("auto", "1d", "exact", "lp", "sinkhorn")

#: Default largest number of dual vertices for which :func:`exact_cost` uses enumeration.
MAX_VERTICES = 4096
#: Enumeration gives up (and the LP is used) when a growth level holds more partial vertices.
MAX_ENUMERATION_STATES = 20_000


class SinkhornConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iter`` with a marginal error above ``tol``."""


# ---------------------------------------------------------------------------
# ground cost with cached solver data
# ---------------------------------------------------------------------------


def _enumerate_kr_vertices(cost: np.ndarray, max_states: int) -> np.ndarray | None:
    """Vertices of ``{f : f_0 = 0, f_i - f_j <= C_ij}`` (1-Lipschitz functions), shape (V, K).

    A vertex has K-1 independent tight constraints forming a spanning tree; growing the tree
    one label at a time, a new label ``u`` is tight either from above,
    ``f_u = min_x f_x + C_ux``, or from below, ``f_u = max_x f_x - C_ux`` (over the labels
    already placed), so every vertex is reached and every leaf is feasible. Returns None when
    a level holds more than ``max_states`` partial vertices.
    """
    k = cost.shape[0]
    scale = float(cost.max()) or 1.0
    states = np.full((1, k), np.nan)
    states[0, 0] = 0.0
    for _ in range(k - 1):
        placed = ~np.isnan(states)  # (N, K)
        vals = np.nan_to_num(states)
        upper = np.where(placed[:, None, :], vals[:, None, :] + cost[None], np.inf).min(2)  # (N, K)
        lower = np.where(placed[:, None, :], vals[:, None, :] - cost[None], -np.inf).max(2)
        si, ui = np.nonzero(~placed)
        children = np.concatenate([states[si], states[si]])
        rows = np.arange(len(si))
        children[rows, ui] = upper[si, ui]
        children[rows + len(si), ui] = lower[si, ui]
        key = np.where(np.isnan(children), np.inf, np.round(children / scale, 9))
        _, first = np.unique(key, axis=0, return_index=True)
        states = children[np.sort(first)]
        if len(states) > max_states:
            return None
    return states


def _enumerate_dual_vertices(cost: np.ndarray, max_states: int) -> np.ndarray | None:
    """Vertices of ``{(f, g) : f_0 = 0, f_i + g_j <= C_ij}``, shape (V, 2K) as ``[f | g]``.

    Any cost. The tight graph of a vertex is a spanning tree of the bipartite graph rows x
    columns; a new row is placed at ``f_i = min_j C_ij - g_j`` and a new column at
    ``g_j = min_i C_ij - f_i`` (over the placed nodes of the other side).
    """
    k = cost.shape[0]
    n = 2 * k
    scale = float(np.abs(cost).max()) or 1.0
    states = np.full((1, n), np.nan)
    states[0, 0] = 0.0
    for _ in range(n - 1):
        f, g = states[:, :k], states[:, k:]
        f_set, g_set = ~np.isnan(f), ~np.isnan(g)
        cand_f = np.where(g_set[:, None, :], cost[None] - np.nan_to_num(g)[:, None, :], np.inf).min(2)
        cand_g = np.where(f_set[:, None, :], cost.T[None] - np.nan_to_num(f)[:, None, :], np.inf).min(2)
        cand = np.concatenate([cand_f, cand_g], 1)  # (N, 2K)
        si, ui = np.nonzero(np.isnan(states) & np.isfinite(cand))
        children = states[si].copy()
        children[np.arange(len(si)), ui] = cand[si, ui]
        key = np.where(np.isnan(children), np.inf, np.round(children / scale, 9))
        _, first = np.unique(key, axis=0, return_index=True)
        states = children[np.sort(first)]
        if len(states) > max_states:
            return None
    return states


def _is_metric(cost: np.ndarray, rtol: float = 1e-9) -> bool:
    tol = rtol * max(float(np.abs(cost).max()), 1.0)
    if not np.allclose(cost, cost.T, rtol=0, atol=tol) or np.abs(np.diag(cost)).max() > tol:
        return False
    # C_ij <= C_ik + C_kj for all i, j, k
    via = (cost[:, :, None] + cost[None, :, :]).min(1)  # (K, K): min_k C_ik + C_kj
    return bool((cost <= via + tol).all())


class GroundCost:
    """A (K, K) ground cost with solver data cached per (dtype, device).

    :class:`knot.geometry.LabelGeometry` builds one (``geometry.ground_cost``); the solvers
    accept either. Building it costs nothing; the dual vertices are enumerated on first use.

    Parameters
    ----------
    cost : array-like, shape (K, K)
        Finite, non-negative ground cost.
    positions : array-like, shape (K,), optional
        1-D label positions when ``cost[i, j] == |x_i - x_j| ** power``; enables
        :func:`wasserstein_1d`.
    power : {1, 2}
        Power of the distance in the 1-D cost.

    Examples
    --------
    >>> gc = GroundCost([[0.0, 1.0], [1.0, 0.0]])
    >>> gc.num_labels, gc.is_metric, gc.num_vertices()
    (2, True, 2)
    """

    def __init__(self, cost: Any, positions: Any = None, power: int = 1):
        c = torch.as_tensor(cost, dtype=torch.float64).detach().cpu().clone()
        if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 1:
            raise ValueError(f"ground cost: expected a square (K, K) matrix, got shape {tuple(c.shape)}")
        if not torch.isfinite(c).all() or (c < 0).any():
            raise ValueError("ground cost: entries must be finite and non-negative")
        self._cost = c
        self.num_labels = int(c.shape[0])
        self.max_cost = float(c.max())
        self.power = int(power)
        self._np = c.numpy()
        self.is_metric = _is_metric(self._np)
        self.positions = None
        if positions is not None:
            x = torch.as_tensor(positions, dtype=torch.float64).detach().cpu().reshape(-1)
            if x.numel() != self.num_labels:
                raise ValueError(f"positions: expected {self.num_labels} values, got {x.numel()}")
            expect = (x[:, None] - x[None, :]).abs() ** self.power
            if not torch.allclose(expect, c, rtol=1e-9, atol=1e-12):
                raise ValueError("positions: the cost is not |x_i - x_j| ** power for these positions")
            self.positions = x
        self.sorted_is_identity = bool(self.positions is None or (self.positions[1:] >= self.positions[:-1]).all())
        self._cache: dict = {}
        self._vertices: Any = _UNSET

    @property
    def is_1d(self) -> bool:
        return self.positions is not None

    def matrix(self, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> torch.Tensor:
        """The cost as a (K, K) tensor of ``dtype`` on ``device`` (cached; do not modify)."""
        return self._cached("cost", dtype, device, lambda: self._cost)

    def numpy(self) -> np.ndarray:
        """The float64 cost as a read-only numpy array."""
        return self._np

    def _cached(self, name: str, dtype: torch.dtype, device: Any, make) -> torch.Tensor:
        key = (name, dtype, torch.device(device))
        out = self._cache.get(key)
        if out is None:
            # Built outside inference mode (and copied): a cache first filled during an
            # evaluation under torch.inference_mode must still serve later training steps.
            with torch.inference_mode(False):
                out = make().to(dtype=dtype, device=device).clone()
            self._cache[key] = out
        return out

    # -- 1-D ----------------------------------------------------------------
    def sorted_1d(self, dtype: torch.dtype, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, sorted positions)`` for the 1-D solver (cached)."""
        if self.positions is None:
            raise ValueError("the 1-D solver needs 1-D label positions (a geometry with D = 1)")
        order = self._cached("order", torch.int64, device, lambda: torch.argsort(self.positions))
        xs = self._cached("xs", dtype, device, lambda: torch.sort(self.positions).values)
        return order, xs

    # -- dual vertices ---------------------------------------------------------
    def vertices(self) -> np.ndarray | None:
        """Dual vertices, float64: (V, K) Lipschitz vertices for a metric cost, else (V, 2K)
        ``[f | g]`` pairs; None when there are too many to enumerate."""
        if self._vertices is _UNSET:
            enum = _enumerate_kr_vertices if self.is_metric else _enumerate_dual_vertices
            verts = enum(self._np, MAX_ENUMERATION_STATES)
            if verts is None:
                log.debug("ground cost with K=%d: too many dual vertices to enumerate", self.num_labels)
            else:
                log.debug("ground cost with K=%d: %d dual vertices", self.num_labels, len(verts))
            self._vertices = verts
        return self._vertices

    def num_vertices(self) -> int | None:
        v = self.vertices()
        return None if v is None else int(v.shape[0])

    def vertex_tensors(self, dtype: torch.dtype, device: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dual vertices as tensors, cached.

        For a metric cost ``(F, None)`` with ``F`` of shape (K, V/2): the Lipschitz polytope
        is symmetric (``f`` is a vertex iff ``-f`` is), so one vertex of each pair is kept
        and the cost is ``max |F^T (p - q)|``. Otherwise ``(F, G)`` of shape (K, V) each.
        """
        verts = self.vertices()
        if verts is None:
            raise ValueError("too many dual vertices for this cost; use method='lp'")
        k = self.num_labels
        if self.is_metric:
            f = self._cached("vf", dtype, device, lambda: torch.from_numpy(_half_of_symmetric(verts)).T.contiguous())
            return f, None
        v64 = torch.from_numpy(verts)
        f = self._cached("vf", dtype, device, lambda: v64[:, :k].T.contiguous())
        g = self._cached("vg", dtype, device, lambda: v64[:, k:].T.contiguous())
        return f, g

    def __repr__(self) -> str:
        kind = "1-D" if self.is_1d else ("metric" if self.is_metric else "non-metric")
        return f"GroundCost(K={self.num_labels}, {kind}, max_cost={self.max_cost:g})"


class _Unset:
    pass


_UNSET = _Unset()
_COST_CACHE: "OrderedDict[bytes, GroundCost]" = OrderedDict()


def as_ground_cost(cost: Any) -> GroundCost:
    """A :class:`GroundCost` from a geometry, a GroundCost, or a (K, K) array/tensor.

    Raw matrices are cached by content (a few dozen), so solver data is built once.
    """
    if isinstance(cost, GroundCost):
        return cost
    ground = getattr(cost, "ground_cost", None)  # LabelGeometry
    if isinstance(ground, GroundCost):
        return ground
    arr = torch.as_tensor(cost).detach().to("cpu", torch.float64)
    key = bytes(str(tuple(arr.shape)), "ascii") + arr.numpy().tobytes()
    hit = _COST_CACHE.get(key)
    if hit is None:
        hit = GroundCost(arr)
        _COST_CACHE[key] = hit
        if len(_COST_CACHE) > 32:
            _COST_CACHE.popitem(last=False)
    else:
        _COST_CACHE.move_to_end(key)
    return hit


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------


def _prepare(p: torch.Tensor, q: torch.Tensor, gc: GroundCost) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, promote to a common float dtype, broadcast leading dimensions."""
    if not isinstance(p, torch.Tensor) or not isinstance(q, torch.Tensor):
        raise ValueError(f"p and q: expected torch tensors, got {type(p).__name__} and {type(q).__name__}")
    k = gc.num_labels
    for name, x in (("p", p), ("q", q)):
        if x.ndim < 1 or x.shape[-1] != k:
            raise ValueError(f"{name}: expected shape (..., {k}) for a {k}x{k} cost, got {tuple(x.shape)}")
    if p.device != q.device:
        raise ValueError(f"p and q are on different devices ({p.device}, {q.device})")
    dtype = torch.promote_types(p.dtype, q.dtype)
    if not dtype.is_floating_point or dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    try:
        p, q = torch.broadcast_tensors(p.to(dtype), q.to(dtype))
    except RuntimeError:
        raise ValueError(
            f"p and q: leading dimensions do not broadcast, {tuple(p.shape)} vs {tuple(q.shape)}"
        ) from None
    return p, q


def check_histograms(x: torch.Tensor, name: str = "p", atol: float = 1e-4) -> None:
    """Raise ValueError unless every row of ``x`` (..., K) is finite, >= 0 and sums to 1.

    >>> check_histograms(torch.tensor([[0.5, 0.5], [0.2, 0.9]]), "teacher")
    Traceback (most recent call last):
    ...
    ValueError: teacher: row 1 sums to 1.1, expected 1 (atol 0.0001)
    """
    if not torch.isfinite(x).all():
        row = int(torch.nonzero(~torch.isfinite(x).reshape(-1, x.shape[-1]).all(-1))[0])
        raise ValueError(f"{name}: row {row} contains NaN or inf")
    if (x < 0).any():
        row = int(torch.nonzero((x < 0).reshape(-1, x.shape[-1]).any(-1))[0])
        raise ValueError(f"{name}: row {row} has negative entries")
    sums = x.reshape(-1, x.shape[-1]).sum(-1)
    bad = (sums - 1).abs() > atol
    if bad.any():
        row = int(torch.nonzero(bad)[0])
        raise ValueError(f"{name}: row {row} sums to {float(sums[row]):.6g}, expected 1 (atol {atol:g})")


# ---------------------------------------------------------------------------
# exact 1-D
# ---------------------------------------------------------------------------


def wasserstein_1d(p: torch.Tensor, q: torch.Tensor, positions: Any, power: int = 1) -> torch.Tensor:
    r"""Exact OT cost between histograms on 1-D label positions.

    For ``power=1`` this is :math:`W_1 = \sum_k |F_p(x_k) - F_q(x_k)|\,(x_{k+1} - x_k)` over
    the sorted positions (:math:`F` the CDFs); for ``power=2`` the cost
    :math:`\int_0^1 |F_p^{-1}(t) - F_q^{-1}(t)|^2 dt` of the monotone (quantile) coupling,
    which is optimal for any convex cost of :math:`x - y`.

    Parameters
    ----------
    p, q : torch.Tensor, shape (..., K)
        Histograms (leading dimensions broadcast).
    positions : array-like (K,), LabelGeometry or GroundCost
        Label positions, in any order.
    power : {1, 2}
        Ground cost :math:`|x - y|^{power}` (ignored for a geometry, which knows its own).

    Returns
    -------
    torch.Tensor, shape (...)

    Examples
    --------
    >>> p = torch.tensor([0.5, 0.5, 0.0])
    >>> q = torch.tensor([0.0, 0.5, 0.5])
    >>> wasserstein_1d(p, q, [0.0, 1.0, 3.0]).item()  # 0.5 moves 0->1, 0.5 moves 1->3
    1.5
    >>> wasserstein_1d(p, q, [0.0, 1.0, 3.0], power=2).item()  # 0.5 * 1 + 0.5 * 4
    2.5
    """
    if isinstance(positions, GroundCost) or hasattr(positions, "ground_cost"):
        gc = as_ground_cost(positions)
    else:
        x = torch.as_tensor(positions, dtype=torch.float64).detach().cpu().reshape(-1)
        gc = GroundCost((x[:, None] - x[None, :]).abs() ** power, positions=x, power=power)
    p, q = _prepare(p, q, gc)
    return _w1d(p, q, gc)


def _w1d(p: torch.Tensor, q: torch.Tensor, gc: GroundCost) -> torch.Tensor:
    order, xs = gc.sorted_1d(p.dtype, p.device)
    if not gc.sorted_is_identity:  # python bool: no device sync
        p, q = p[..., order], q[..., order]
    cp, cq = torch.cumsum(p, -1), torch.cumsum(q, -1)  # (..., K)
    if gc.power == 1:
        gaps = xs[1:] - xs[:-1]  # (K-1,)
        return ((cp[..., :-1] - cq[..., :-1]).abs() * gaps).sum(-1)
    # quantile coupling: breakpoints of both CDFs split [0, 1] into pieces on which
    # F_p^{-1} and F_q^{-1} are constant
    k = gc.num_labels
    cuts = torch.sort(torch.cat([cp[..., :-1], cq[..., :-1]], -1), dim=-1).values  # (..., 2K-2)
    zero = torch.zeros_like(cuts[..., :1])
    edges = torch.cat([zero, cuts, zero + 1], -1)  # (..., 2K)
    lengths = (edges[..., 1:] - edges[..., :-1]).clamp_min(0)  # (..., 2K-1)
    mids = (0.5 * (edges[..., 1:] + edges[..., :-1])).detach().contiguous()
    ip = torch.searchsorted(cp.detach().contiguous(), mids, right=True).clamp_max(k - 1)
    iq = torch.searchsorted(cq.detach().contiguous(), mids, right=True).clamp_max(k - 1)
    return (lengths * (xs[ip] - xs[iq]).abs() ** gc.power).sum(-1)


# ---------------------------------------------------------------------------
# exact: dual vertices, LP
# ---------------------------------------------------------------------------


def exact_cost(
    p: torch.Tensor, q: torch.Tensor, cost: Any, max_vertices: int = MAX_VERTICES, **lp_options
) -> torch.Tensor:
    r"""Exact OT cost for any ground cost, batched.

    By LP duality :math:`\mathrm{OT}_C(p, q) = \max_{(f, g) \in V} f \cdot p + g \cdot q`
    over the vertices :math:`V` of the dual polyhedron
    :math:`\{f_i + g_j \le C_{ij}\}`; for a metric cost
    :math:`\max_{f \in V} f \cdot (p - q)` over the vertices of the 1-Lipschitz polytope
    (Kantorovich-Rubinstein). The vertices are enumerated once per cost (see
    :class:`GroundCost`); a batch then costs one matrix product and a max, and the gradient
    is the maximising dual vertex. When the cost has more than ``max_vertices`` vertices
    (K above about 7), the per-pair LP (:func:`lp_cost`) is used instead.

    Parameters
    ----------
    p, q : torch.Tensor, shape (..., K)
        Histograms on the simplex (leading dimensions broadcast).
    cost : LabelGeometry, GroundCost or array-like (K, K)
    max_vertices : int
        Largest vertex set used; beyond it the LP.
    **lp_options
        Passed to :func:`lp_cost` when it is used.

    Returns
    -------
    torch.Tensor, shape (...)

    Examples
    --------
    >>> c = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.5], [2.0, 1.5, 0.0]])
    >>> exact_cost(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.5, 0.5]), c).item()
    1.5
    """
    gc = as_ground_cost(cost)
    p, q = _prepare(p, q, gc)
    nv = gc.num_vertices() if gc.num_labels <= 12 else None
    if nv is None or nv > max_vertices:
        return lp_cost(p, q, gc, **lp_options)
    return _vertex_cost(p, q, gc)


def _half_of_symmetric(verts: np.ndarray) -> np.ndarray:
    """One vertex of each pair ``{f, -f}`` of a symmetric vertex set (V, K) -> (V/2, K)."""
    scale = float(np.abs(verts).max()) or 1.0
    key = {tuple(np.round(v / scale, 9)): i for i, v in enumerate(verts)}
    keep, dropped = [], set()
    for i, v in enumerate(verts):
        if i in dropped:
            continue
        keep.append(i)
        j = key.get(tuple(np.round(-v / scale, 9)))
        if j is not None and j != i:
            dropped.add(j)
    return verts[keep]


_SCORE_BUDGET = 1 << 24  # largest (rows, V) score matrix kept for the backward pass


class _VertexMax(torch.autograd.Function):
    """``max_v f_v . p + g_v . q`` over dual vertices, or ``max_v |f_v . (p - q)|`` (metric).

    The backward pass gathers the maximising vertex (the first one on exact ties: an
    optimal dual all the same; zero where ``p == q`` in the metric case) and never builds
    the gradient of the (N, V) score matrix.
    """

    @staticmethod
    def forward(ctx, p, q, f, g):  # p, q: (N, K), q None for a metric (p is then p - q); f, g: (K, V)
        n, nv = p.shape[0], f.shape[1]
        rows = max(1, _SCORE_BUDGET // max(nv, 1))
        values, targets, saved = [], [], []
        keep = n * nv <= _SCORE_BUDGET  # keep the scores for backward, else the duals now
        for s in range(0, n, rows):
            ps = p[s : s + rows]
            scores = ps @ f if g is None else ps @ f + q[s : s + rows] @ g  # (n, V)
            if g is None:
                # max |score| without abs over (n, V): the larger of max and -min; the
                # target is the signed score the maximising vertex has (ties: the max side)
                hi, lo = scores.amax(-1), scores.amin(-1)
                use_hi = hi >= -lo
                value, target = torch.where(use_hi, hi, -lo), torch.where(use_hi, hi, lo)
            else:
                value = target = scores.amax(-1)
            values.append(value)
            targets.append(target)
            if keep:
                saved.append(scores)
            else:
                saved.append(torch.cat([x for x in _optimal_dual(scores, target, f, g) if x is not None], -1))
        value = torch.cat(values) if len(values) != 1 else values[0]
        target = torch.cat(targets) if len(targets) != 1 else targets[0]
        ctx.keep = keep
        ctx.symmetric = g is None
        ctx.save_for_backward(target, f, g if g is not None else f, *saved)
        return value

    @staticmethod
    def backward(ctx, grad):  # grad: (N,)
        target, f, g, *saved = ctx.saved_tensors
        k = f.shape[0]
        if ctx.keep:
            gp, gq = _optimal_dual(saved[0], target, f, None if ctx.symmetric else g)
        else:
            both = torch.cat(saved)
            gp, gq = both[:, :k], both[:, k:]
        grad = grad[:, None]
        return (
            gp * grad if ctx.needs_input_grad[0] else None,
            gq * grad if not ctx.symmetric and ctx.needs_input_grad[1] else None,
            None,
            None,
        )


def _optimal_dual(scores: torch.Tensor, target: torch.Tensor, f: torch.Tensor, g: torch.Tensor | None):
    """Optimal dual potentials (n, K) for p and q: a maximising vertex per row.

    ``target`` (n,) is the maximising score: the max, or for a metric the signed score of
    largest magnitude (the vertex is then ``sign * f``).
    """
    hit = scores == target[:, None]  # (n, V)
    idx = hit.view(torch.uint8).argmax(-1)  # first maximiser (uint8 argmax is fast on CPU)
    # f, g are (K, V) contiguous: selecting columns is ~15x faster than rows of the transposed view
    fp = f.index_select(1, idx).T  # (n, K)
    if g is None:  # max |f . (p - q)|: vertex sign * f, the gradient in p - q; 0 where p == q
        return fp * target.sign()[:, None], None
    return fp, g.index_select(1, idx).T


def _vertex_cost(p: torch.Tensor, q: torch.Tensor, gc: GroundCost) -> torch.Tensor:
    f, g = gc.vertex_tensors(p.dtype, p.device)  # (K, V') and (K, V) or None
    lead = p.shape[:-1]
    k = f.shape[0]
    if g is None:  # metric: only p - q matters (autograd handles broadcast views)
        d = (p - q).reshape(-1, k)
        value = _VertexMax.apply(d, None, f, None)  # (N,)
    else:
        value = _VertexMax.apply(p.reshape(-1, k), q.reshape(-1, k), f, g)
    return value.reshape(lead)


def _emd_solver():
    """Return ``solve(a, b, M) -> (cost, u, v)`` backed by POT's network simplex."""
    try:
        from ot.lp.emd_wrap import emd_c  # fast path: no argument conversion

        def solve(a, b, m, max_iter):
            _, cost, u, v, code = emd_c(a, b, m, max_iter, 1)
            return cost, u, v, code

        solve(np.ones(1), np.ones(1), np.zeros((1, 1)), 10)
        return solve
    except (ImportError, TypeError, ValueError):  # pragma: no cover - other POT versions
        try:
            import ot
        except ImportError:  # pragma: no cover
            raise ImportError("method='lp' needs POT: pip install pot") from None

        def solve(a, b, m, max_iter):
            _, info = ot.emd(a, b, m, numItermax=max_iter, log=True)
            code = 1 if info.get("result_code", 1) == 1 else info["result_code"]
            return float(info["cost"]), info["u"], info["v"], code

        return solve


_SOLVER = None


def lp_cost(
    p: torch.Tensor, q: torch.Tensor, cost: Any, threads: int | None = None, max_iter: int = 100_000
) -> torch.Tensor:
    r"""Exact OT cost by one network-simplex LP per pair (POT), with dual-potential gradients.

    Inputs are copied to the CPU in float64 and each row is renormalised to sum to 1; the
    result and its gradient (the dual potentials :math:`u, v` of each LP) come back in the
    inputs' dtype and device. Pairs are split over ``threads`` threads (POT releases the
    GIL).

    Parameters
    ----------
    p, q : torch.Tensor, shape (..., K)
        Histograms on the simplex.
    cost : LabelGeometry, GroundCost or array-like (K, K)
    threads : int, optional
        Worker threads (default ``torch.get_num_threads()``).
    max_iter : int
        Network-simplex iteration cap per LP.

    Returns
    -------
    torch.Tensor, shape (...)

    Examples
    --------
    >>> c = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> lp_cost(torch.tensor([0.75, 0.25]), torch.tensor([0.25, 0.75]), c).item()
    0.5
    """
    global _SOLVER
    gc = as_ground_cost(cost)
    p, q = _prepare(p, q, gc)
    k = gc.num_labels
    lead = p.shape[:-1]
    a = p.detach().to("cpu", torch.float64).reshape(-1, k).numpy()
    b = q.detach().to("cpu", torch.float64).reshape(-1, k).numpy()
    for name, x in (("p", a), ("q", b)):
        if not np.isfinite(x).all() or (x < 0).any() or (x.sum(1) <= 0).any():
            raise ValueError(f"{name}: histograms must be finite, non-negative and not all zero")
    a = np.ascontiguousarray(a / a.sum(1, keepdims=True))
    b = np.ascontiguousarray(b / b.sum(1, keepdims=True))
    if _SOLVER is None:
        _SOLVER = _emd_solver()
    solve, m = _SOLVER, gc.numpy()
    n = a.shape[0]
    vals = np.empty(n)
    us = np.empty((n, k))
    vs = np.empty((n, k))
    failed = []

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            c, u, v, code = solve(a[i], b[i], m, max_iter)
            if code != 1:
                failed.append((i, code))
            za, zb = a[i] == 0, b[i] == 0
            if za.any() or zb.any():
                u, v = _complete_duals(u, v, m, za, zb)
            shift = u.mean()
            vals[i], us[i], vs[i] = c, u - shift, v + shift

    workers = max(1, min(threads or torch.get_num_threads(), n // 64, os.cpu_count() or 1))
    if workers == 1:
        work(0, n)
    else:
        bounds = np.linspace(0, n, workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, bounds[:-1], bounds[1:]))
    if failed:
        warnings.warn(
            f"lp_cost: {len(failed)} of {n} LPs did not reach optimality (first: row {failed[0][0]}, "
            f"code {failed[0][1]}); raise max_iter",
            RuntimeWarning,
            stacklevel=2,
        )
    val = torch.from_numpy(vals).to(dtype=p.dtype, device=p.device).reshape(lead)
    u = torch.from_numpy(us).to(dtype=p.dtype, device=p.device).reshape(p.shape)
    v = torch.from_numpy(vs).to(dtype=p.dtype, device=p.device).reshape(p.shape)
    return _with_gradient(val, p, u, q, v)


def _complete_duals(u: np.ndarray, v: np.ndarray, m: np.ndarray, za: np.ndarray, zb: np.ndarray):
    """Feasible, optimal potentials on zero-mass labels (the network simplex leaves them arbitrary).

    ``u_i = min_{j: b_j > 0} (M_ij - v_j)`` on empty sources, then
    ``v_j = min_i (M_ij - u_i)`` on empty targets (c-transforms): every constraint
    ``u_i + v_j <= M_ij`` holds and the objective is unchanged (those labels carry no mass).
    """
    u, v = u.copy(), v.copy()
    if za.any() and (~zb).any():
        u[za] = (m[np.ix_(za, ~zb)] - v[~zb]).min(1)
    if zb.any():
        v[zb] = (m[:, zb] - u[:, None]).min(0)
    return u, v


def _with_gradient(value: torch.Tensor, p, u, q, v) -> torch.Tensor:
    """``value`` whose gradient is ``u`` in ``p`` and ``v`` in ``q`` (envelope/dual gradient)."""
    out = value
    if p.requires_grad:
        out = out + ((p - p.detach()) * u).sum(-1)
    if q.requires_grad:
        out = out + ((q - q.detach()) * v).sum(-1)
    return out


# ---------------------------------------------------------------------------
# Sinkhorn
# ---------------------------------------------------------------------------


@dataclass
class SinkhornResult:
    r"""Outcome of :func:`sinkhorn_plan`.

    Attributes
    ----------
    plan : torch.Tensor, shape (..., K, K)
        Entropic transport plan (detached).
    f, g : torch.Tensor, shape (..., K)
        Dual potentials (detached); the plan is
        :math:`P_{ij} = p_i q_j \exp((f_i + g_j - C_{ij}) / \varepsilon)`.
    cost : torch.Tensor, shape (...)
        Transport cost :math:`\langle P, C \rangle` (detached).
    dual : torch.Tensor, shape (...)
        Entropic objective at the potentials, :math:`f \cdot p + g \cdot q`.
    eps : float
        Regularisation used (absolute).
    n_iter : int
        (f, g) updates done, annealing included.
    marginal_error : float
        Largest L1 error of the plan's row sums over the batch.
    converged : bool
        ``marginal_error <= tol``.
    """

    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    cost: torch.Tensor
    dual: torch.Tensor
    eps: float
    n_iter: int
    marginal_error: float
    converged: bool


def _resolve_eps(gc: GroundCost, eps: float | None, rel_eps: float) -> float:
    e = rel_eps * gc.max_cost if eps is None else float(eps)
    if not e > 0 or not math.isfinite(e):
        raise ValueError(f"eps: expected a positive number, got {e!r}")
    return e


@torch.no_grad()
def _sinkhorn(
    p: torch.Tensor,
    q: torch.Tensor,
    c: torch.Tensor,
    eps: float,
    max_iter: int,
    tol: float,
    anneal: bool,
    scaling: float,
    check_every: int,
    cmax: float,
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Log-domain Sinkhorn on (..., K) histograms; returns ``(f, g, n_iter, error)``."""
    logp = torch.log(p)  # -inf at zeros: those rows/columns carry no mass in the plan
    logq = torch.log(q)
    f = torch.zeros_like(p)
    g = torch.zeros_like(q)

    scaled: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def cost_over(e):  # (C / e, C^T / e), contiguous, once per eps level
        if e not in scaled:
            ce = c / e
            scaled[e] = (ce, ce.T.contiguous())
        return scaled[e]

    def f_update(g, e):  # f_i = -e log sum_j q_j exp((g_j - C_ij) / e)
        return -e * torch.logsumexp((logq + g / e)[..., None, :] - cost_over(e)[0], dim=-1)

    def g_update(f, e):  # g_j = -e log sum_i p_i exp((f_i - C_ij) / e)
        return -e * torch.logsumexp((logp + f / e)[..., None, :] - cost_over(e)[1], dim=-1)

    schedule = []
    if anneal and cmax > eps:
        e = cmax
        while e > eps:
            schedule.append(e)
            e *= scaling
    n_iter = 0
    for e in schedule:  # eps-annealing: one update per level
        f = f_update(g, e)
        g = g_update(f, e)
        n_iter += 1
    err = math.inf
    while n_iter < max_iter:
        f_new = f_update(g, eps)
        n_iter += 1
        if n_iter % check_every == 0 or n_iter >= max_iter:
            # row sums of the current plan are p * exp((f - f_new) / eps)
            ratio = torch.exp(((f - f_new) / eps).clamp(max=80.0))
            dev = torch.where(p > 0, p * (ratio - 1).abs(), torch.zeros_like(p)).sum(-1)
            err = float(dev.max()) if dev.numel() else 0.0
            if not math.isfinite(err):
                err = math.inf
        f = f_new
        g = g_update(f, eps)
        if err <= tol:
            break
    return f, g, n_iter, err


@torch.no_grad()
def _sinkhorn_symmetric(
    p: torch.Tensor, c: torch.Tensor, eps: float, max_iter: int, tol: float, anneal: bool,
    scaling: float, check_every: int, cmax: float,
) -> tuple[torch.Tensor, int, float]:
    """Symmetric problem OT_eps(p, p): averaged updates ``a <- (a + T(a)) / 2`` (Feydy et al.).

    The alternating updates converge very slowly when both marginals are equal; the
    averaged fixed-point iteration takes tens of steps. Returns ``(a, n_iter, error)``.
    """
    logp = torch.log(p)
    a = torch.zeros_like(p)

    scaled: dict[float, torch.Tensor] = {}

    def t_update(a, e):  # a_i <- -e log sum_j p_j exp((a_j - C_ij) / e)
        if e not in scaled:
            scaled[e] = c / e
        return -e * torch.logsumexp((logp + a / e)[..., None, :] - scaled[e], dim=-1)

    schedule = []
    if anneal and cmax > eps:
        e = cmax
        while e > eps:
            schedule.append(e)
            e *= scaling
    n_iter = 0
    for e in schedule:
        a = 0.5 * (a + t_update(a, e))
        n_iter += 1
    err = math.inf
    while n_iter < max_iter:
        t = t_update(a, eps)
        n_iter += 1
        if n_iter % check_every == 0 or n_iter >= max_iter:
            ratio = torch.exp(((a - t) / eps).clamp(max=80.0))  # row sums are p * ratio
            dev = torch.where(p > 0, p * (ratio - 1).abs(), torch.zeros_like(p)).sum(-1)
            err = float(dev.max()) if dev.numel() else 0.0
            if not math.isfinite(err):
                err = math.inf
        if err <= tol:
            break
        a = 0.5 * (a + t)
    return a, n_iter, err


def sinkhorn_plan(
    p: torch.Tensor,
    q: torch.Tensor,
    cost: Any,
    eps: float | None = None,
    max_iter: int = 2000,
    tol: float = 1e-5,
    *,
    rel_eps: float = 1e-2,
    anneal: bool = True,
    scaling: float = 0.7,
    check_every: int = 10,
    warn: bool = True,
) -> SinkhornResult:
    r"""Entropic OT plan by batched log-domain Sinkhorn.

    Solves

    .. math::
        \min_{P\mathbf{1} = p,\; P^\top\mathbf{1} = q}
        \langle P, C \rangle + \varepsilon\, \mathrm{KL}(P \,\|\, p \otimes q)

    by alternating exact updates of the dual potentials in the log domain, so zeros in
    ``p`` or ``q`` and small ``eps`` stay finite. With ``anneal`` the regulariser starts at
    the largest cost and shrinks by ``scaling`` per update down to ``eps`` (one update per
    level), then updates continue at ``eps`` until the L1 error of the plan's row sums is at
    most ``tol`` (checked every ``check_every`` updates) or ``max_iter`` updates were done.

    Parameters
    ----------
    p, q : torch.Tensor, shape (..., K)
        Histograms (leading dimensions broadcast).
    cost : LabelGeometry, GroundCost or array-like (K, K)
    eps : float, optional
        Absolute regularisation; default ``rel_eps`` times the largest cost.
    max_iter : int
        Update budget (annealing included).
    tol : float
        Stopping threshold on the largest row-marginal L1 error in the batch.
    rel_eps : float
        Regularisation relative to the largest cost when ``eps`` is None.
    anneal : bool
        Use eps-annealing (eps-scaling).
    scaling : float
        Annealing factor in (0, 1).
    check_every : int
        Marginal-error check period (each check synchronises with the device).
    warn : bool
        Issue a :class:`SinkhornConvergenceWarning` when not converged.

    Returns
    -------
    SinkhornResult

    References
    ----------
    Cuturi, "Sinkhorn distances: lightspeed computation of optimal transport", NeurIPS 2013.
    Schmitzer, "Stabilized sparse scaling algorithms for entropy regularized transport
    problems", SIAM J. Sci. Comput. 2019 (log domain, eps-scaling).

    See Also
    --------
    sinkhorn_cost : the transport cost, differentiable.

    Examples
    --------
    >>> c = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> res = sinkhorn_plan(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), c, eps=0.01)
    >>> res.converged, [round(x, 3) for x in res.plan.reshape(-1).tolist()]
    (True, [0.5, 0.0, 0.0, 0.5])
    """
    gc = as_ground_cost(cost)
    p, q = _prepare(p, q, gc)
    e = _resolve_eps(gc, eps, rel_eps)
    if not 0 < scaling < 1:
        raise ValueError(f"scaling: expected a number in (0, 1), got {scaling!r}")
    if max_iter < 1 or check_every < 1:
        raise ValueError("max_iter and check_every: expected >= 1")
    c = gc.matrix(p.dtype, p.device)
    pd, qd = p.detach(), q.detach()
    f, g, n_iter, err = _sinkhorn(pd, qd, c, e, max_iter, tol, anneal, scaling, check_every, gc.max_cost)
    with torch.no_grad():
        logplan = torch.log(pd)[..., :, None] + torch.log(qd)[..., None, :]
        plan = torch.exp(logplan + (f[..., :, None] + g[..., None, :] - c) / e)  # (..., K, K)
        tcost = (plan * c).sum((-2, -1))
        dual = (pd * f).sum(-1) + (qd * g).sum(-1)
    converged = err <= tol
    if not converged and warn:
        warnings.warn(
            f"Sinkhorn did not converge in {n_iter} updates (eps={e:.3g}, marginal error "
            f"{err:.3g} > tol {tol:g}); raise max_iter or eps, or use an exact method",
            SinkhornConvergenceWarning,
            stacklevel=2,
        )
    return SinkhornResult(plan, f, g, tcost, dual, e, n_iter, err, converged)


def sinkhorn_cost(
    p: torch.Tensor,
    q: torch.Tensor,
    cost: Any,
    eps: float | None = None,
    max_iter: int = 2000,
    tol: float = 1e-5,
    *,
    rel_eps: float = 1e-2,
    debias: bool = False,
    entropic: bool = False,
    return_result: bool = False,
    **options,
):
    r"""Sinkhorn approximation of the OT cost, batched and differentiable.

    Returns the transport cost :math:`\langle P_\varepsilon, C \rangle` of the entropic plan
    (``entropic=False``, close to the exact cost from above for small ``eps``) or the
    entropic objective :math:`\mathrm{OT}_\varepsilon(p, q) = f \cdot p + g \cdot q`
    (``entropic=True``). With ``debias`` it returns the Sinkhorn divergence
    :math:`\mathrm{OT}_\varepsilon(p, q) - \tfrac12 \mathrm{OT}_\varepsilon(p, p)
    - \tfrac12 \mathrm{OT}_\varepsilon(q, q)` (Feydy et al., 2019), which is 0 at
    ``p == q``; its self terms are solved with the averaged symmetric update, which
    converges in tens of steps where alternating updates crawl. In every case the gradient
    in ``p`` is the converged dual potential (envelope theorem; for ``debias``,
    :math:`f_{pq} - a_p` with :math:`a_p` the symmetric potential of
    :math:`\mathrm{OT}_\varepsilon(p, p)`), computed without differentiating through the
    iterations.

    Parameters
    ----------
    p, q : torch.Tensor, shape (..., K)
    cost : LabelGeometry, GroundCost or array-like (K, K)
    eps, max_iter, tol, rel_eps
        As in :func:`sinkhorn_plan`.
    debias : bool
        Return the debiased Sinkhorn divergence.
    entropic : bool
        Return the entropic objective instead of the transport cost (ignored with debias).
    return_result : bool
        Also return the :class:`SinkhornResult` of the (p, q) problem.
    **options
        ``anneal``, ``scaling``, ``check_every``, ``warn`` of :func:`sinkhorn_plan`.

    Returns
    -------
    torch.Tensor, shape (...), or (torch.Tensor, SinkhornResult)

    Examples
    --------
    >>> from knot.geometry import LabelGeometry
    >>> g = LabelGeometry.preset("sentiment5")
    >>> p = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1])
    >>> q = torch.tensor([0.0, 0.0, 0.1, 0.3, 0.6])
    >>> exact = ot_cost(p, q, g).item()
    >>> approx = sinkhorn_cost(p, q, g, rel_eps=1e-3).item()
    >>> abs(approx - exact) / exact < 0.01
    True
    """
    gc = as_ground_cost(cost)
    p, q = _prepare(p, q, gc)
    if debias:
        main = sinkhorn_plan(p, q, gc, eps=eps, rel_eps=rel_eps, max_iter=max_iter, tol=tol, **options)
        e = main.eps
        anneal = options.get("anneal", True)
        scaling = options.get("scaling", 0.7)
        check_every = options.get("check_every", 10)
        c = gc.matrix(p.dtype, p.device)
        both = torch.stack([p.detach(), q.detach()])  # (2, ..., K): OT(p, p) and OT(q, q) in one solve
        a, n_sym, err_sym = _sinkhorn_symmetric(both, c, e, max_iter, tol, anneal, scaling, check_every, gc.max_cost)
        if err_sym > tol and options.get("warn", True):
            warnings.warn(
                f"symmetric Sinkhorn (debias) did not converge in {n_sym} updates (marginal error "
                f"{err_sym:.3g} > tol {tol:g})",
                SinkhornConvergenceWarning,
                stacklevel=2,
            )
        with torch.no_grad():
            self_terms = 2 * (both * a).sum(-1)  # OT_eps(x, x) = 2 <x, a_x>
            value = main.dual - 0.5 * self_terms[0] - 0.5 * self_terms[1]
        # gradient: d/dp = f_pq - a_p, d/dq = g_pq - a_q
        out = _with_gradient(value, p, main.f - a[0], q, main.g - a[1])
    else:
        main = sinkhorn_plan(p, q, gc, eps=eps, rel_eps=rel_eps, max_iter=max_iter, tol=tol, **options)
        value = main.dual if entropic else main.cost
        out = _with_gradient(value, p, main.f, q, main.g)
    return (out, main) if return_result else out


# ---------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------


def resolve_method(cost: Any, method: str = "auto", max_vertices: int = MAX_VERTICES) -> str:
    """The solver ``ot_cost`` uses for ``cost``: ``1d``, ``exact`` (dual vertices), ``lp`` or ``sinkhorn``.

    >>> from knot.geometry import LabelGeometry
    >>> resolve_method(LabelGeometry.preset("sentiment5")), resolve_method(LabelGeometry.preset("emotion5"))
    ('1d', 'exact')
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    gc = as_ground_cost(cost)
    if method == "1d" and not gc.is_1d:
        raise ValueError("method '1d' needs 1-D label positions (a geometry with D = 1)")
    if method != "auto":
        if method == "exact":
            nv = gc.num_vertices() if gc.num_labels <= 12 else None
            return "exact" if nv is not None and nv <= max_vertices else "lp"
        return method
    if gc.is_1d:
        return "1d"
    return resolve_method(gc, "exact", max_vertices)


def ot_cost(p: torch.Tensor, q: torch.Tensor, geometry_or_cost: Any, method: str = "auto", validate: bool = False, **kw) -> torch.Tensor:
    """OT cost between ``p`` and ``q`` (..., K) with a chosen or automatic solver.

    ``method="auto"`` uses the exact closed form for 1-D geometries, the exact dual-vertex
    solver when the cost has at most ``max_vertices`` dual vertices (K up to about 7), and
    the exact per-pair LP otherwise; ``"sinkhorn"`` only when asked for.

    Parameters
    ----------
    p, q : torch.Tensor, shape (..., K)
        Histograms (leading dimensions broadcast).
    geometry_or_cost : LabelGeometry, GroundCost or array-like (K, K)
    method : {"auto", "1d", "exact", "lp", "sinkhorn"}
    validate : bool
        Check that both are finite, non-negative and sum to 1 (costs a device sync).
    **kw
        Solver options: ``max_vertices`` (auto/exact), ``threads``, ``max_iter`` (lp),
        ``eps``, ``rel_eps``, ``max_iter``, ``tol``, ``debias``, ... (sinkhorn).

    Returns
    -------
    torch.Tensor, shape (...)

    Examples
    --------
    >>> from knot.geometry import LabelGeometry
    >>> g = LabelGeometry.preset("emotion5")
    >>> p, q = torch.eye(5)[0], torch.eye(5)[2]  # anger -> neutral
    >>> round(ot_cost(p, q, g).item(), 6) == round(g.cost[0, 2].item(), 6)
    True
    """
    gc = as_ground_cost(geometry_or_cost)
    p, q = _prepare(p, q, gc)
    if validate:
        check_histograms(p, "p")
        check_histograms(q, "q")
    max_vertices = kw.pop("max_vertices", MAX_VERTICES)
    chosen = resolve_method(gc, method, max_vertices)
    if chosen == "1d":
        if kw:
            raise ValueError(f"method '1d' takes no options, got {sorted(kw)}")
        return _w1d(p, q, gc)
    if chosen == "exact":
        if kw.keys() - {"threads", "max_iter"}:
            raise ValueError(f"method 'exact' takes no options besides max_vertices, got {sorted(kw)}")
        return _vertex_cost(p, q, gc)
    if chosen == "lp":
        return lp_cost(p, q, gc, **kw)
    return sinkhorn_cost(p, q, gc, **kw)

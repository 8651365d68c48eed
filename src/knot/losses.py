r"""Distillation losses from several teachers, and the local teachers' OT + CE loss.

Every distillation loss has the same call::

    distillation_loss(name, student_logits (B, K), teacher_probs (B, T, K), weights (T,) or (B, T),
                      geometry, aggregate="per_teacher" | "mixture", temperature=1.0, method="auto")

Teacher weights are normalised (per example when they are (B, T)). With
``aggregate="per_teacher"`` (the KNOT reference's form) the loss is

.. math::
    \frac{1}{B} \sum_b \sum_j w_{bj}\, \ell(s_b, t_{bj}),

and with ``aggregate="mixture"`` (the paper's wording, and FedDF's average of teachers)
:math:`\frac{1}{B} \sum_b \ell(s_b, \sum_j w_{bj} t_{bj})`, where
:math:`s_b = \mathrm{softmax}(z_b / \tau)` is the student's distribution. For a loss that is
convex in the teacher distribution (all of them here) the mixture is never larger.

Losses, by name (:func:`register_loss` adds more):

``ot``
    KNOT: the exact OT cost :math:`\mathrm{OT}_C(s, t)` over the label geometry's ground cost
    (:func:`knot.ot.ot_cost`, ``method`` chooses the solver).
``entropy``
    the reference's sentiment baseline, symmetric KL
    :math:`\tfrac12 (\mathrm{KL}(s \| t) + \mathrm{KL}(t \| s))`.
``kl``
    forward KL :math:`\mathrm{KL}(t \| s)` (Hinton-style distillation, FedDF with ``mixture``).
``ce``
    soft cross-entropy :math:`-\sum_k t_k \log s_k`.
``ot_kl``
    :math:`\lambda\, \mathrm{OT}_C(s, t) + (1 - \lambda)\, \tau^2 \mathrm{KL}(t \| s)` (option
    ``lam``, default 0.5; WKD/WKL-style: :func:`lambda_schedule` moves :math:`\lambda` over
    the epochs).
``sord``
    SORD (Diaz & Marathe, CVPR 2019): the target's argmax :math:`y` becomes the soft label
    :math:`q = \mathrm{softmax}(-C_{y,:} / \tau_s)` over the ground cost (option ``tau``,
    default 1), and the loss is :math:`\tau^2 \mathrm{KL}(q \| s)`; with
    ``aggregate="mixture"`` :math:`y` is the teachers' weighted consensus.
``uld``
    ULD (Boizard et al., 2024): :math:`\sum_i |s_{(i)} - t_{(i)}|`, the L1 distance between
    the two distributions sorted in decreasing order, i.e. twice the exact OT cost under a
    0/1 cost between the sorted vectors: a W1 that ignores which label is which.

A temperature :math:`\tau` softens the student (:math:`z / \tau`) and the teachers
(:math:`t^{1/\tau}` renormalised, i.e. their logits divided by :math:`\tau`, before any
mixing) alike; the KL-family losses (``kl``, ``entropy``, ``ce``) are multiplied by
:math:`\tau^2` so that their gradients keep their scale (Hinton et al., 2015); ``ot`` is
not rescaled.

>>> import torch
>>> from knot.geometry import LabelGeometry
>>> g = LabelGeometry.preset("sentiment5")
>>> logits = torch.tensor([[8.0, 0.0, 0.0, 0.0, 0.0]])        # student: almost surely 1 star
>>> teachers = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 1.0],      # teacher A: 5 stars
...                           [0.0, 1.0, 0.0, 0.0, 0.0]]])    # teacher B: 2 stars
>>> round(distillation_loss("ot", logits, teachers, [0.5, 0.5], g).item(), 2)  # about (4 + 1) / 2
2.5
>>> sorted(available_losses())
['ce', 'entropy', 'kl', 'ot', 'ot_kl', 'sord', 'uld']
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from knot.ot import METHODS, ot_cost

__all__ = [
    "register_loss",
    "get_loss",
    "available_losses",
    "loss_uses_geometry",
    "TEACHER_LOSSES",
    "loss_options",
    "lambda_schedule",
    "sord_targets",
    "SCHEDULE_KINDS",
    "distillation_loss",
    "normalize_weights",
    "validate_teacher_probs",
    "ot_ce_loss",
    "soften",
    "AGGREGATES",
    "WEIGHT_KINDS",
    "PROB_ATOL",
]

log = logging.getLogger(__name__)

#: Values accepted by ``distillation_loss(aggregate=...)``.
AGGREGATES = ("per_teacher", "mixture")
#: Teacher weightings of a distillation method (``distill.methods[].weights``, see
#: :func:`knot.soft_labels.teacher_weights`); the others are the ``bias`` kind's bases.
WEIGHT_KINDS = ("uniform", "size", "explicit", "bias")
#: Default tolerance on a teacher distribution's sum (soft labels are stored in float32).
PROB_ATOL = 1e-3

# name -> (pairwise loss function, names of its options, whether it reads the geometry)
_REGISTRY: dict[str, tuple[Callable[..., torch.Tensor], frozenset[str], bool]] = {}


def register_loss(name: str, options: Sequence[str] | None = None, *, uses_geometry: bool = False) -> Callable:
    """Register a pairwise distillation loss under ``name`` (decorator).

    The function is called as ``fn(student_logits (B, K), targets (B, M, K), geometry, *,
    temperature, **options)`` with targets on the simplex (already softened by the
    temperature; the function softens the student), and returns the loss of every
    (example, target) pair, shape (B, M). The options :func:`distillation_loss` accepts for
    it are its keyword-only parameters besides ``temperature``, plus ``options``.
    ``uses_geometry`` says whether it reads ``geometry`` (a method's own ``geometry`` is
    then meaningful; see :func:`loss_uses_geometry`). Once registered (the module imported
    before the config is read), the name is valid in ``distill.methods[].loss`` and
    ``knot distill --loss``.

    >>> @register_loss("l1")
    ... def _l1(student_logits, targets, geometry, *, temperature=1.0):
    ...     s = torch.softmax(student_logits / temperature, -1)[:, None, :]
    ...     return (s - targets).abs().sum(-1)
    >>> "l1" in available_losses()
    True
    >>> _ = _REGISTRY.pop("l1")
    """

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is already registered")
        params = inspect.signature(fn).parameters.values()
        allowed = frozenset(
            p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "temperature"
        ) | frozenset(options or ())
        _REGISTRY[name] = (fn, allowed, bool(uses_geometry))
        return fn

    return deco


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The pairwise loss registered as ``name``; ValueError listing the known names otherwise.

    >>> get_loss("emd")
    Traceback (most recent call last):
    ...
    ValueError: unknown loss 'emd' (expected one of: ce, entropy, kl, ot, ot_kl, sord, uld)
    """
    try:
        return _REGISTRY[name][0]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r} (expected one of: {', '.join(available_losses())})") from None


def available_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_REGISTRY)


def loss_uses_geometry(name: str) -> bool:
    """Whether the loss ``name`` reads the label geometry (registered with ``uses_geometry``).

    >>> [n for n in available_losses() if loss_uses_geometry(n)]
    ['ot', 'ot_kl', 'sord']
    """
    get_loss(name)
    return _REGISTRY[name][2]


def loss_options(name: str) -> frozenset[str]:
    """The options :func:`distillation_loss` accepts for the loss ``name``.

    >>> "lam" in loss_options("ot_kl"), "lam" in loss_options("kl")
    (True, False)
    """
    get_loss(name)
    return _REGISTRY[name][1]


#: Kinds of :func:`lambda_schedule`.
SCHEDULE_KINDS = ("constant", "linear", "cosine")


def lambda_schedule(kind: str = "cosine", start: float = 1.0, end: float = 0.0) -> Callable[[float], float]:
    r"""The weight :math:`\lambda(u)` of a loss term as a function of training progress :math:`u \in [0, 1]`.

    ``linear``: :math:`\lambda = a + (b - a) u`; ``cosine``: :math:`\lambda = b + (a - b)(1 +
    \cos \pi u) / 2` (flat at both ends); ``constant``: :math:`a`; with :math:`a` = ``start``
    and :math:`b` = ``end``. :func:`knot.distill` evaluates it at :math:`u = e / (E - 1)` for
    epoch :math:`e = 0, \dots, E - 1` (the first epoch gets ``start``, the last ``end``).

    Parameters
    ----------
    kind : {"constant", "linear", "cosine"}
    start, end : float in [0, 1]

    Returns
    -------
    callable ``u -> lambda`` (``u`` clipped to [0, 1])

    Examples
    --------
    >>> f = lambda_schedule("cosine", 1.0, 0.0)
    >>> [round(f(u), 3) for u in (0.0, 0.5, 1.0)]
    [1.0, 0.5, 0.0]
    >>> lambda_schedule("linear", 1.0, 0.0)(0.25)
    0.75
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule.kind: expected one of {', '.join(SCHEDULE_KINDS)}, got {kind!r}")
    for key, v in (("start", start), ("end", end)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"schedule.{key}: expected a number in [0, 1], got {v!r}")
    a, b = float(start), float(end)

    def lam(u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        if kind == "constant":
            return a
        if kind == "linear":
            return a + (b - a) * u
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * u))

    return lam


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``probs ** (1 / temperature)`` renormalised (softmax of log-probs / temperature); zeros stay 0.

    >>> soften(torch.tensor([0.8, 0.2, 0.0]), 2.0).tolist()
    [0.6666666865348816, 0.3333333432674408, 0.0]
    """
    if temperature == 1.0:
        return probs
    return torch.softmax(torch.log(probs) / temperature, dim=-1)


def _student_log_probs(student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(student_logits.to(_work_dtype(student_logits)) / temperature, dim=-1)


def normalize_weights(weights: Any, batch: int, num_teachers: int, like: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Teacher weights as a (B, T) or (1, T) tensor whose rows sum to 1.

    Parameters
    ----------
    weights : array-like (T,) or (B, T)
        Non-negative, finite, not all zero (per example).
    batch, num_teachers : int
        B and T.
    like : torch.Tensor
        Gives the dtype and device.
    check : bool
        Check the values (a device sync).

    >>> normalize_weights([1, 3], 4, 2, torch.zeros(1)).tolist()
    [[0.25, 0.75]]
    """
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != num_teachers or w.shape[0] not in (1, batch):
        raise ValueError(
            f"weights: expected shape ({num_teachers},) or ({batch}, {num_teachers}) for {num_teachers} "
            f"teachers and batch {batch}, got {tuple(torch.as_tensor(weights).shape)}"
        )
    total = w.sum(-1, keepdim=True)  # (B or 1, 1)
    if check:
        lowest_w, lowest_total, highest_total = torch.stack([w.min(), total.min(), total.max()]).tolist()
        ok = lowest_w >= 0 and lowest_total > 0 and math.isfinite(highest_total)
    if check and not ok:
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"weights: expected finite non-negative teacher weights, got {w.tolist()[:4]}")
        row = int(torch.nonzero(total[:, 0] <= 0)[0])
        raise ValueError(f"weights: all teacher weights are zero (example {row})")
    return w / total


def validate_teacher_probs(
    teacher_probs: torch.Tensor, teacher_names: Sequence[str] | None = None, atol: float = PROB_ATOL
) -> None:
    """Raise ValueError naming the first teacher whose soft labels are not distributions.

    Parameters
    ----------
    teacher_probs : torch.Tensor, shape (B, T, K)
    teacher_names : list of str, optional
        Names for the messages (default ``teacher 0``, ``teacher 1``, ...).
    atol : float
        Tolerance on each distribution's sum.

    >>> t = torch.tensor([[[0.5, 0.5], [0.7, 0.7]]])
    >>> validate_teacher_probs(t, ["books", "movies"])
    Traceback (most recent call last):
    ...
    ValueError: teacher 'movies' (index 1): soft label of example 0 sums to 1.4, expected 1 (atol 0.001)
    """
    if not isinstance(teacher_probs, torch.Tensor) or teacher_probs.ndim != 3:
        shape = tuple(teacher_probs.shape) if hasattr(teacher_probs, "shape") else type(teacher_probs).__name__
        raise ValueError(f"teacher_probs: expected a (B, T, K) tensor, got {shape}")
    _, t, _ = teacher_probs.shape
    if teacher_names is not None and len(teacher_names) != t:
        raise ValueError(f"teacher_names: {len(teacher_names)} names for {t} teachers")

    def who(j: int) -> str:
        return f"teacher {teacher_names[j]!r} (index {j})" if teacher_names is not None else f"teacher {j}"

    sums = teacher_probs.sum(-1)  # (B, T); NaN/inf anywhere makes its sum non-finite
    if teacher_probs.numel() == 0:
        return
    # happy path: one device sync (NaN propagates through sum and max)
    off_sum, neg = torch.stack([(sums - 1).abs().max(), -teacher_probs.min()]).tolist()
    if off_sum <= atol and neg <= 0:  # False for NaN
        return
    finite = torch.isfinite(teacher_probs).all(-1)  # (B, T)
    nonneg = (teacher_probs >= 0).all(-1)
    off = (sums - 1).abs() > atol
    bad = ~finite | ~nonneg | off
    b, j = (int(v) for v in torch.nonzero(bad.T)[0].flip(0))  # first bad teacher, then example
    if not finite[b, j]:
        raise ValueError(f"{who(j)}: soft label of example {b} contains NaN or inf")
    if not nonneg[b, j]:
        raise ValueError(f"{who(j)}: soft label of example {b} has negative probabilities")
    raise ValueError(
        f"{who(j)}: soft label of example {b} sums to {float(sums[b, j]):.6g}, expected 1 (atol {atol:g})"
    )


def _check_inputs(student_logits, teacher_probs, geometry) -> None:
    if not isinstance(student_logits, torch.Tensor) or student_logits.ndim != 2:
        shape = tuple(student_logits.shape) if hasattr(student_logits, "shape") else type(student_logits).__name__
        raise ValueError(f"student_logits: expected a (B, K) tensor, got {shape}")
    if not student_logits.dtype.is_floating_point:
        raise ValueError(f"student_logits: expected floating-point logits, got {student_logits.dtype}")
    if not isinstance(teacher_probs, torch.Tensor) or teacher_probs.ndim != 3:
        shape = tuple(teacher_probs.shape) if hasattr(teacher_probs, "shape") else type(teacher_probs).__name__
        raise ValueError(f"teacher_probs: expected a (B, T, K) tensor, got {shape}")
    b, k = student_logits.shape
    if teacher_probs.shape[0] != b:
        raise ValueError(f"batch size mismatch: student_logits has {b} rows, teacher_probs {teacher_probs.shape[0]}")
    if teacher_probs.shape[2] != k:
        raise ValueError(f"label count mismatch: student_logits has K={k}, teacher_probs K={teacher_probs.shape[2]}")
    if teacher_probs.shape[1] < 1:
        raise ValueError("teacher_probs: no teachers (T = 0)")
    if k != geometry.num_labels:
        raise ValueError(
            f"label count mismatch: the logits have K={k} but the geometry has {geometry.num_labels} labels "
            f"({', '.join(geometry.labels)})"
        )


# ---------------------------------------------------------------------------
# the losses
# ---------------------------------------------------------------------------


# solver options of knot.ot.ot_cost passed through by the ``ot`` loss
_OT_OPTIONS = ("eps", "rel_eps", "max_iter", "tol", "debias", "entropic", "anneal", "scaling",
               "check_every", "warn", "threads", "max_vertices")


@register_loss("ot", options=_OT_OPTIONS, uses_geometry=True)
def _ot_loss(student_logits, targets, geometry, *, temperature=1.0, method="auto", **solver):
    """OT cost between the student and each target, (B, M)."""
    s = _student_log_probs(student_logits, temperature).exp()  # (B, K)
    t = targets  # (B, M, K), already softened
    return ot_cost(s[:, None, :], t, geometry, method=method, **solver)



def _check_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _log_targets(t: torch.Tensor, floor: float) -> torch.Tensor:
    return torch.log(t.clamp_min(floor))


@register_loss("kl")
def _kl_loss(student_logits, targets, geometry, *, temperature=1.0):
    """Forward KL(t || s) * tau^2, (B, M); zero-probability teacher entries contribute 0."""
    log_s = _student_log_probs(student_logits, temperature)[:, None, :]  # (B, 1, K)
    t = targets
    return (torch.xlogy(t, t) - t * log_s).sum(-1) * temperature**2


@register_loss("entropy")
def _entropy_loss(student_logits, targets, geometry, *, temperature=1.0, log_floor=1e-8):
    """Symmetric KL, 0.5 (KL(s || t) + KL(t || s)) * tau^2, (B, M).

    ``KL(s || t)`` is infinite where a teacher gives probability 0; ``log t`` is clamped at
    ``log(log_floor)`` there (the reference added 1e-5 to the probabilities instead).
    """
    log_s = _student_log_probs(student_logits, temperature)[:, None, :]  # (B, 1, K)
    t = targets
    log_t = _log_targets(t, log_floor)
    s = log_s.exp()
    kl_st = (s * (log_s - log_t)).sum(-1)
    kl_ts = (torch.xlogy(t, t) - t * log_s).sum(-1)
    return 0.5 * (kl_st + kl_ts) * temperature**2


@register_loss("ce")
def _ce_loss(student_logits, targets, geometry, *, temperature=1.0):
    """Soft cross-entropy -sum_k t_k log s_k * tau^2, (B, M)."""
    log_s = _student_log_probs(student_logits, temperature)[:, None, :]
    t = targets
    return -(t * log_s).sum(-1) * temperature**2


@register_loss("ot_kl", options=_OT_OPTIONS, uses_geometry=True)
def _ot_kl_loss(student_logits, targets, geometry, *, temperature=1.0, lam=0.5, method="auto", **solver):
    """lam * OT + (1 - lam) * KL(t || s) tau^2, (B, M); a term with weight 0 is not computed."""
    lam = _check_unit("ot_kl: lam", lam)
    out = 0.0
    if lam > 0:
        out = lam * _ot_loss(student_logits, targets, geometry, temperature=temperature, method=method, **solver)
    if lam < 1:
        out = out + (1.0 - lam) * _kl_loss(student_logits, targets, geometry, temperature=temperature)
    return out


def sord_targets(labels: torch.Tensor, cost: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    r"""SORD soft labels :math:`q_{y,k} = \mathrm{softmax}_k(-C_{y k} / \tau)`.

    Parameters
    ----------
    labels : LongTensor, shape (...)
        Class indices y.
    cost : torch.Tensor, shape (K, K)
        Ground cost with a zero diagonal (so the target peaks at y).
    tau : float > 0

    Returns
    -------
    torch.Tensor, shape (..., K), rows on the simplex

    >>> c = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    >>> [round(v, 3) for v in sord_targets(torch.tensor([0]), c)[0].tolist()]
    [0.665, 0.245, 0.09]
    """
    if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0):
        raise ValueError(f"sord: tau: expected a positive number, got {tau!r}")
    return torch.softmax(-cost[labels] / tau, dim=-1)


@register_loss("sord", uses_geometry=True)
def _sord_loss(student_logits, targets, geometry, *, temperature=1.0, tau=1.0):
    """KL(q || s) tau^2 to the SORD target q of each target's argmax, (B, M)."""
    cost = geometry.ground_cost.matrix(targets.dtype, targets.device)  # (K, K)
    q = sord_targets(targets.argmax(-1), cost, tau)  # (B, M, K)
    return _kl_loss(student_logits, q, geometry, temperature=temperature)


@register_loss("uld")
def _uld_loss(student_logits, targets, geometry, *, temperature=1.0):
    """sum_i |s_(i) - t_(i)| over both sorted decreasingly, (B, M); ignores the geometry."""
    s = _student_log_probs(student_logits, temperature).exp()  # (B, K)
    s_sorted = torch.sort(s, dim=-1, descending=True).values[:, None, :]  # (B, 1, K)
    t_sorted = torch.sort(targets, dim=-1, descending=True).values  # (B, M, K)
    return (s_sorted - t_sorted).abs().sum(-1)


def distillation_loss(
    name: str,
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    weights: Any,
    geometry: Any,
    aggregate: str = "per_teacher",
    temperature: float = 1.0,
    method: str = "auto",
    teacher_names: Sequence[str] | None = None,
    validate: bool = True,
    atol: float = PROB_ATOL,
    sharpen: float | None = None,
    **options: Any,
) -> torch.Tensor:
    """Distillation loss of a student against T weighted teachers (a scalar tensor).

    Parameters
    ----------
    name : {"ot", "entropy", "kl", "ce", "ot_kl", "sord", "uld"} or a registered name
    student_logits : torch.Tensor, shape (B, K)
    teacher_probs : torch.Tensor, shape (B, T, K)
        Teachers' soft labels (on the simplex; moved to the logits' device and dtype).
    weights : array-like, shape (T,) or (B, T)
        Teacher weights, normalised here (per example for (B, T)).
    geometry : knot.geometry.LabelGeometry
        Label geometry; K must match.
    aggregate : {"per_teacher", "mixture"}
        Weighted mean of per-teacher losses, or the loss to the weighted teacher mixture.
    temperature : float
        Softens student and teachers (see the module docstring).
    method : str
        OT solver for ``ot`` (:func:`knot.ot.ot_cost`); ignored by the other losses.
    teacher_names : list of str, optional
        Names used in validation errors.
    validate : bool
        Check teacher soft labels and weights (one device sync); a training loop that
        validated its soft labels once may turn it off.
    atol : float
        Tolerance on the soft labels' sums.
    sharpen : float in (0, 1], optional
        With ``aggregate="mixture"`` only: the weighted teacher average :math:`\bar t` is
        sharpened to :math:`\\bar t^{1/T} / \\sum_k \\bar t_k^{1/T}` with :math:`T` =
        ``sharpen`` (DS-FL's entropy-reduction aggregation, Itahara et al., 2021).
    **options
        Options of the named loss (e.g. ``log_floor`` for ``entropy``; ``eps``,
        ``max_iter`` for ``ot`` with ``method="sinkhorn"``).

    Returns
    -------
    torch.Tensor, shape ()

    Examples
    --------
    >>> import torch
    >>> from knot.geometry import LabelGeometry
    >>> g = LabelGeometry.preset("uniform", labels=["neg", "pos"])
    >>> logits = torch.zeros(1, 2)                                  # student 50/50
    >>> t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                # teachers disagree
    >>> distillation_loss("ot", logits, t, [1, 1], g).item()        # TV 0.5 to each
    0.5
    >>> distillation_loss("ot", logits, t, [1, 1], g, aggregate="mixture").item()
    0.0
    """
    fn = get_loss(name)
    allowed = _REGISTRY[name][1]
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"loss {name!r}: unknown options {sorted(unknown)} (expected: {', '.join(sorted(allowed)) or 'none'})"
        )
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate: expected one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if sharpen is not None:
        if aggregate != "mixture":
            raise ValueError(f"sharpen: only with aggregate 'mixture', got aggregate {aggregate!r}")
        if isinstance(sharpen, bool) or not isinstance(sharpen, (int, float)) or not 0 < sharpen <= 1:
            raise ValueError(f"sharpen: expected a temperature in (0, 1], got {sharpen!r}")
    _check_inputs(student_logits, teacher_probs, geometry)
    dtype = _work_dtype(student_logits)
    teachers = teacher_probs.to(device=student_logits.device, dtype=dtype)  # (B, T, K)
    b, t, _ = teachers.shape
    if validate:
        validate_teacher_probs(teachers, teacher_names, atol)
    w = normalize_weights(weights, b, t, teachers, check=validate)  # (B or 1, T)
    teachers = soften(teachers, temperature)  # each teacher at the temperature, before any mixing
    kwargs = dict(options)
    if "method" in allowed:
        kwargs["method"] = method
    if aggregate == "mixture":
        mix = (w[..., None] * teachers).sum(1, keepdim=True)  # (B, 1, K)
        if sharpen is not None:
            mix = soften(mix, float(sharpen))  # DS-FL: the average at temperature T < 1
        per = fn(student_logits, mix, geometry, temperature=temperature, **kwargs)  # (B, 1)
        return per[:, 0].mean()
    per = fn(student_logits, teachers, geometry, temperature=temperature, **kwargs)  # (B, T)
    return (w * per).sum(-1).mean()


#: The teachers' hard-label losses (``local.loss``, ``global_model.loss``) by name: each maps
#: the training settings to the OT term's weight in :func:`ot_ce_loss` (``ce``: the
#: cross-entropy alone; ``ot+ce``: the reference's local OT variant, weighted by ``ot_weight``).
TEACHER_LOSSES: dict[str, Callable[[Any], float]] = {
    "ce": lambda train_cfg: 0.0,
    "ot+ce": lambda train_cfg: float(train_cfg.ot_weight),
}


def ot_ce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    geometry: Any,
    smoothing: float = 0.1,
    ot_weight: float = 1.0,
    method: str = "auto",
) -> torch.Tensor:
    r"""Local-teacher loss of the reference: OT to the smoothed one-hot label plus cross-entropy.

    .. math::
        \frac{1}{B} \sum_b \Big[\lambda\, \mathrm{OT}_C\big(\mathrm{softmax}(z_b),\,
        (1 - \alpha)\, e_{y_b} + \alpha / K\big) - \log \mathrm{softmax}(z_b)_{y_b}\Big]

    with :math:`\lambda` = ``ot_weight`` and :math:`\alpha` = ``smoothing``.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, K)
    targets : torch.Tensor, shape (B,), int64
        Gold class indices in ``range(K)``.
    geometry : knot.geometry.LabelGeometry
    smoothing : float in [0, 1)
        Label smoothing of the OT target.
    ot_weight : float >= 0
        Weight of the OT term.
    method : str
        OT solver (:func:`knot.ot.ot_cost`).

    Returns
    -------
    torch.Tensor, shape ()

    Examples
    --------
    >>> import torch
    >>> from knot.geometry import LabelGeometry
    >>> g = LabelGeometry.preset("sentiment5")
    >>> logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 30.0]])
    >>> round(ot_ce_loss(logits, torch.tensor([4]), g, smoothing=0.0).item(), 6)
    0.0
    >>> round(ot_ce_loss(logits, torch.tensor([0]), g, smoothing=0.0, ot_weight=0.5).item(), 3)  # 0.5 * 4 + 30
    32.0
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"logits: expected a (B, K) tensor, got {getattr(logits, 'shape', type(logits).__name__)}")
    b, k = logits.shape
    if k != geometry.num_labels:
        raise ValueError(f"label count mismatch: the logits have K={k} but the geometry has {geometry.num_labels} labels")
    targets = torch.as_tensor(targets, device=logits.device)
    if targets.shape != (b,) or targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"targets: expected ({b},) integer class indices, got {tuple(targets.shape)} {targets.dtype}")
    targets = targets.long()
    if b and (int(targets.min()) < 0 or int(targets.max()) >= k):
        raise ValueError(f"targets: class indices must be in [0, {k - 1}], got {targets.min().item()}..{targets.max().item()}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing: expected a number in [0, 1), got {smoothing!r}")
    if ot_weight < 0:
        raise ValueError(f"ot_weight: expected >= 0, got {ot_weight!r}")
    work = logits.to(_work_dtype(logits))
    ce = F.cross_entropy(work, targets)
    if ot_weight == 0:
        return ce
    smooth = F.one_hot(targets, k).to(work.dtype) * (1 - smoothing) + smoothing / k  # (B, K)
    s = torch.softmax(work, dim=-1)
    return ot_weight * ot_cost(s, smooth, geometry, method=method).mean() + ce

"""Soft labels: the teachers' class probabilities on the transfer set, as an artefact.

The KNOT student never sees a gold label of the transfer set: it is trained on what the
teachers (each local teacher, then the global model) predict for the transfer texts.
Those predictions are stored as a :class:`SoftLabels` object, ``probs`` of shape
``(N, T, K)`` (examples, teachers, classes), together with everything needed to check
that the student, the weights and the evaluation use them the way they were made:
teacher names and roles in order, label names in geometry order, each teacher's
training-set size and checkpoint hash, and hashes of the transfer texts and of the
prepared transfer domain.

On disk (``RUN/soft_labels/``) each split is two files::

    train.safetensors   tensor "probs", float32 (N, T, K)
    train.json          the schema: names, sizes, hashes, the sha256 of the tensor file

This module also measures each teacher's *distribution bias* (its predicted-class
distribution on random-token inputs, ``bias.json``) and turns sizes, explicit lists or
biases into teacher weights for the distillation losses.

>>> import numpy as np
>>> p = np.array([[[0.9, 0.1], [0.2, 0.8]]], dtype=np.float32)   # N=1, T=2, K=2
>>> sl = SoftLabels(p, teacher_names=["a", "b"], label_names=["neg", "pos"],
...                 teacher_sizes=[100, 300])
>>> sl.num_examples, sl.num_teachers, sl.num_labels
(1, 2, 2)
>>> teacher_weights("size", sl).tolist()
[0.25, 0.75]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from knot import __version__
from knot.data import load_split, read_manifest
from knot.losses import WEIGHT_KINDS
from knot.metrics import evaluate_probs
from knot.models import checkpoint_hash
from knot.progress import progress
from knot.run import (
    RunContext,
    RunModel,
    require_checkpoint,
    teacher_size,
    transfer_hash,
)
from knot.errors import parse_finite
from knot.utils import atomic_path, atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "SoftLabels",
    "SOFT_LABELS_FORMAT",
    "BIAS_FORMAT",
    "teacher_weights",
    "bias_weights",
    "texts_hash",
    "predict_probs",
    "random_token_inputs",
    "predicted_class_distribution",
    "bias_table",
    "load_bias",
    "produce_soft_labels",
    "assemble_soft_labels",
    "TeacherOutput",
    "distribution_bias",
]

SOFT_LABELS_FORMAT = "knot.soft_labels"
BIAS_FORMAT = "knot.distribution_bias"
_SCHEMA_VERSION = 1
#: Tolerance on ``|sum_k p_k - 1|`` for a row of soft labels (float32 softmax outputs).
SUM_TOL = 1e-3


def texts_hash(texts: Iterable[str]) -> str:
    """sha256 over the texts in order (each UTF-8 encoded, NUL-separated).

    Ties a soft-label row to the text it was predicted for.

    >>> texts_hash(["a", "b"]) == texts_hash(["a", "b"]), texts_hash(["a", "b"]) == texts_hash(["b", "a"])
    (True, False)
    """
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------
# the artefact
# ---------------------------------------------------------------------------


@dataclass
class SoftLabels:
    """Teacher class probabilities on one split of the transfer set.

    Parameters
    ----------
    probs : ndarray, shape (N, T, K)
        ``probs[n, j, k]``: teacher ``j``'s probability of class ``k`` for example ``n``.
        Stored as float32; every row ``probs[n, j]`` is finite, non-negative and sums to 1
        (within :data:`SUM_TOL`).
    teacher_names : list of str, length T
        Teacher names in column order (local teachers in config order, then the global
        model).
    label_names : list of str, length K
        Class names in the geometry's order.
    teacher_sizes : list of int, length T, optional
        Each teacher's training-set size (for ``size`` weights).
    teacher_hashes : list of str, length T, optional
        sha256 of each teacher's ``model.safetensors``.
    teacher_roles : list of str, length T, optional
        ``local`` or ``global`` per teacher.
    transfer_hash : str, optional
        Hash of the prepared transfer domain (its manifest entry).
    texts_sha256 : str, optional
        :func:`texts_hash` of the N texts, in row order.
    domain, split : str, optional
        Which prepared split the rows belong to.
    extra : dict
        Free-form JSON-serialisable information (e.g. teacher metrics on the split).

    Raises
    ------
    ValueError
        If the shapes disagree with the names, or a row is NaN/inf, negative or does not
        sum to 1; the message names the teacher and the first bad row.
    """

    probs: np.ndarray
    teacher_names: list[str]
    label_names: list[str]
    teacher_sizes: list[int] | None = None
    teacher_hashes: list[str] | None = None
    teacher_roles: list[str] | None = None
    transfer_hash: str | None = None
    texts_sha256: str | None = None
    domain: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.probs = np.ascontiguousarray(np.asarray(self.probs, dtype=np.float32))
        self.teacher_names = [str(t) for t in self.teacher_names]
        self.label_names = [str(k) for k in self.label_names]
        self.validate()

    # -- shape --------------------------------------------------------------------
    @property
    def num_examples(self) -> int:
        return int(self.probs.shape[0])

    @property
    def num_teachers(self) -> int:
        return int(self.probs.shape[1])

    @property
    def num_labels(self) -> int:
        return int(self.probs.shape[2])

    def __len__(self) -> int:
        return self.num_examples

    def validate(self, source: str = "soft labels") -> None:
        """Check shapes, names and every probability row (see the class docstring)."""
        p = self.probs
        if p.ndim != 3:
            raise ValueError(f"{source}: probs must have shape (N, T, K), got {tuple(p.shape)}")
        n, t, k = p.shape
        if len(self.teacher_names) != t:
            raise ValueError(
                f"{source}: {t} teacher columns in probs but {len(self.teacher_names)} teacher "
                f"names {self.teacher_names}"
            )
        dup = sorted({x for x in self.teacher_names if self.teacher_names.count(x) > 1})
        if dup:
            raise ValueError(f"{source}: duplicate teacher names {dup}")
        if len(self.label_names) != k:
            raise ValueError(
                f"{source}: K={k} classes in probs but {len(self.label_names)} label names "
                f"{self.label_names}"
            )
        for name, values in (
            ("teacher_sizes", self.teacher_sizes),
            ("teacher_hashes", self.teacher_hashes),
            ("teacher_roles", self.teacher_roles),
        ):
            if values is not None and len(values) != t:
                raise ValueError(f"{source}: {name} has {len(values)} entries for {t} teachers")
        if self.teacher_sizes is not None:
            sizes = [parse_finite(s, f"{source}: teacher_sizes[{j}]") for j, s in enumerate(self.teacher_sizes)]
            bad = [j for j, s in enumerate(sizes) if s < 0 or not s.is_integer()]
            if bad:
                raise ValueError(
                    f"{source}: teacher_sizes[{bad[0]}]: expected a count >= 0, got {self.teacher_sizes[bad[0]]!r}"
                )
            self.teacher_sizes = [int(s) for s in sizes]
        if n == 0:
            return
        bad_finite = ~np.isfinite(p).all(axis=2)  # (N, T)
        bad_neg = (p < 0).any(axis=2)
        with np.errstate(invalid="ignore"):
            bad_sum = np.abs(p.astype(np.float64).sum(axis=2) - 1.0) > SUM_TOL
        for mask, what in (
            (bad_finite, "contains NaN or inf"),
            (bad_neg, "has negative probabilities"),
            (bad_sum & ~bad_finite, f"does not sum to 1 (tolerance {SUM_TOL:g})"),
        ):
            if mask.any():
                rows, cols = np.nonzero(mask)
                j = int(cols[0])
                count = int(mask[:, j].sum())
                raise ValueError(
                    f"{source}: teacher {self.teacher_names[j]!r}: row {int(rows[0])} {what} "
                    f"({count} bad row(s) for this teacher): {p[rows[0], j].tolist()}"
                )

    def check_matches(
        self,
        teacher_names: Sequence[str] | None = None,
        label_names: Sequence[str] | None = None,
        *,
        source: str = "soft labels",
    ) -> None:
        """Raise ``ValueError`` unless teachers and labels are exactly these, in this order."""
        if teacher_names is not None and list(teacher_names) != self.teacher_names:
            if sorted(teacher_names) == sorted(self.teacher_names):
                raise ValueError(
                    f"{source}: teacher order mismatch: stored {self.teacher_names}, expected "
                    f"{list(teacher_names)}; rerun `knot soft-labels`"
                )
            raise ValueError(
                f"{source}: teachers {self.teacher_names} do not match the run's teachers "
                f"{list(teacher_names)}; rerun `knot soft-labels`"
            )
        if label_names is not None and list(label_names) != self.label_names:
            raise ValueError(
                f"{source}: labels {self.label_names} (K={self.num_labels}) do not match the "
                f"task labels {list(label_names)} (K={len(label_names)})"
            )

    # -- views ---------------------------------------------------------------------
    def mixture(self, weights: np.ndarray) -> np.ndarray:
        """Weighted average of the teachers' distributions, shape (N, K).

        ``weights`` is (T,) or (N, T); it is normalised here.

        >>> p = np.array([[[1.0, 0.0], [0.0, 1.0]]])
        >>> SoftLabels(p, ["a", "b"], ["x", "y"]).mixture(np.array([3.0, 1.0])).tolist()
        [[0.75, 0.25]]
        """
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim == 1:
            w = np.broadcast_to(w, (self.num_examples, self.num_teachers))
        w = w / w.sum(axis=1, keepdims=True)
        return np.einsum("nt,ntk->nk", w, self.probs.astype(np.float64))

    # -- I/O ---------------------------------------------------------------------------
    def schema(self, probs_file: str, probs_sha256: str) -> dict[str, Any]:
        n, t, k = self.probs.shape
        return {
            "format": SOFT_LABELS_FORMAT,
            "version": _SCHEMA_VERSION,
            "domain": self.domain,
            "split": self.split,
            "num_examples": n,
            "num_teachers": t,
            "num_labels": k,
            "teacher_names": self.teacher_names,
            "teacher_roles": self.teacher_roles,
            "teacher_sizes": self.teacher_sizes,
            "teacher_hashes": self.teacher_hashes,
            "label_names": self.label_names,
            "transfer_hash": self.transfer_hash,
            "texts_sha256": self.texts_sha256,
            "probs_file": probs_file,
            "probs_sha256": probs_sha256,
            "dtype": "float32",
            "knot_version": __version__,
            "extra": self.extra,
        }

    def save(self, directory: str | Path, split: str | None = None) -> Path:
        """Write ``<split>.safetensors`` and ``<split>.json`` into ``directory`` (atomically).

        The tensor file is written first and the JSON schema, which records its sha256,
        last, so an interrupted save is detected by :meth:`load`. Returns the JSON path.
        """
        from safetensors.numpy import save_file

        split = split or self.split
        if not split:
            raise ValueError("SoftLabels.save: no split name given")
        directory = Path(directory)
        tensor_path = directory / f"{split}.safetensors"
        with atomic_path(tensor_path) as tmp:
            save_file({"probs": self.probs}, str(tmp), metadata={"format": SOFT_LABELS_FORMAT})
        digest = sha256_file(tensor_path)
        if self.split is None:
            self.split = split
        json_path = directory / f"{split}.json"
        atomic_write_json(json_path, self.schema(tensor_path.name, digest))
        return json_path

    @classmethod
    def load(cls, directory: str | Path, split: str) -> "SoftLabels":
        """Read and validate the soft labels of ``split`` from ``directory``.

        Raises
        ------
        FileNotFoundError
            If either file is missing.
        ValueError
            If the schema is malformed, the tensor file does not match its recorded hash or
            shape, or the probabilities fail :meth:`validate`.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        directory = Path(directory)
        json_path = directory / f"{split}.json"
        meta = read_json(
            json_path,
            SOFT_LABELS_FORMAT,
            what=f"knot soft-labels schema (format != {SOFT_LABELS_FORMAT!r})",
            missing="soft labels not found; run `knot soft-labels CONFIG` first",
        )
        if meta.get("version") != _SCHEMA_VERSION:
            raise ValueError(f"{json_path}: unsupported schema version {meta.get('version')!r}")
        for key in ("teacher_names", "label_names", "probs_file", "num_examples"):
            if key not in meta:
                raise ValueError(f"{json_path}: missing key {key!r}")
        tensor_path = directory / str(meta["probs_file"])
        if not tensor_path.is_file():
            raise FileNotFoundError(f"{tensor_path}: soft-label tensor file missing (named in {json_path})")
        if meta.get("probs_sha256") and sha256_file(tensor_path) != meta["probs_sha256"]:
            raise ValueError(
                f"{tensor_path}: contents do not match the sha256 recorded in {json_path} "
                "(interrupted or edited); rerun `knot soft-labels`"
            )
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{tensor_path}: unreadable safetensors file ({exc})") from None
        if "probs" not in tensors:
            raise ValueError(f"{tensor_path}: no tensor named 'probs'")
        probs = tensors["probs"]
        expected = (meta["num_examples"], meta.get("num_teachers"), meta.get("num_labels"))
        if tuple(probs.shape) != expected:
            raise ValueError(f"{tensor_path}: probs shape {tuple(probs.shape)} but {json_path} says {expected}")
        try:
            return cls(
                probs,
                teacher_names=meta["teacher_names"],
                label_names=meta["label_names"],
                teacher_sizes=meta.get("teacher_sizes"),
                teacher_hashes=meta.get("teacher_hashes"),
                teacher_roles=meta.get("teacher_roles"),
                transfer_hash=meta.get("transfer_hash"),
                texts_sha256=meta.get("texts_sha256"),
                domain=meta.get("domain"),
                split=meta.get("split", split),
                extra=meta.get("extra") or {},
            )
        except ValueError as exc:
            raise ValueError(f"{tensor_path}: {str(exc).removeprefix('soft labels: ')}") from None


# ---------------------------------------------------------------------------
# teacher weights
# ---------------------------------------------------------------------------


def _normalise(w: np.ndarray, what: str, names: Sequence[str]) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{what}: weights must be finite and >= 0, got {dict(zip(names, w.tolist()))}")
    total = w.sum()
    if total <= 0:
        raise ValueError(f"{what}: weights sum to 0 for teachers {list(names)}")
    return w / total


def bias_weights(
    probs: np.ndarray,
    bias: np.ndarray,
    base: np.ndarray | None = None,
    floor: float = 0.05,
) -> np.ndarray:
    r"""Per-example teacher weights that down-weight predictions resembling a teacher's bias.

    A teacher's *distribution bias* :math:`b_j` is the class distribution it predicts on
    random-token inputs (:func:`predicted_class_distribution`): what it says when the input
    carries no information. A prediction :math:`p_{nj}` close to :math:`b_j` is likely that
    default rather than evidence, so it gets less weight:

    .. math::

        d_{nj} = \tfrac12 \lVert p_{nj} - b_j \rVert_1, \qquad
        u_{nj} = w_j \max(d_{nj}, f), \qquad
        \omega_{nj} = \frac{u_{nj}}{\sum_i u_{ni}}

    with :math:`d` the total-variation distance (in [0, 1]), :math:`w_j` the normalised base
    weights (default uniform) and :math:`f` the floor (default 0.05), which keeps every
    teacher with a positive base weight in play and the normalisation well defined. This is
    the per-example distance weighting left commented out in the reference code, with a
    bounded distance, a floor and normalisation per example.

    Parameters
    ----------
    probs : ndarray, shape (N, T, K)
    bias : ndarray, shape (T, K)
    base : ndarray, shape (T,), optional
        Base teacher weights (normalised here); uniform when omitted.
    floor : float
        Lower bound of the distance, ``0 < floor <= 1``.

    Returns
    -------
    ndarray, shape (N, T), float64; each row sums to 1.

    Examples
    --------
    Teacher 0 repeats its bias (weight from the floor only), teacher 1 is far from its own:

    >>> p = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    >>> b = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> bias_weights(p, b, floor=0.05).round(4).tolist()
    [[0.0476, 0.9524]]
    """
    probs = np.asarray(probs, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"bias weights: probs must be (N, T, K), got {probs.shape}")
    n, t, k = probs.shape
    if bias.shape != (t, k):
        raise ValueError(f"bias weights: bias must be (T, K) = {(t, k)}, got {bias.shape}")
    if not (0.0 < floor <= 1.0):
        raise ValueError(f"bias weights: floor must be in (0, 1], got {floor}")
    w = np.full(t, 1.0 / t) if base is None else _normalise(base, "bias weights: base", [str(i) for i in range(t)])
    d = 0.5 * np.abs(probs - bias[None]).sum(axis=2)  # (N, T) total variation
    u = w[None, :] * np.maximum(d, floor)  # (N, T)
    return u / u.sum(axis=1, keepdims=True)


def teacher_weights(
    kind: str,
    soft_labels: SoftLabels,
    *,
    explicit: Sequence[float] | None = None,
    bias: np.ndarray | dict[str, Sequence[float]] | None = None,
    base: str = "size",
    floor: float = 0.05,
) -> np.ndarray:
    """Teacher weights for the distillation loss.

    Parameters
    ----------
    kind : {"uniform", "size", "explicit", "bias"}
        ``uniform``: 1/T each. ``size``: proportional to the teachers' training-set sizes
        (``soft_labels.teacher_sizes``; the reference's choice). ``explicit``: the list
        ``explicit`` (one value per teacher, in ``soft_labels.teacher_names`` order),
        normalised. ``bias``: per-example weights from :func:`bias_weights`, with base weights
        of kind ``base`` and the given ``floor``.
    soft_labels : SoftLabels
    explicit : sequence of float, optional
        Needed for ``explicit`` (and for ``base="explicit"``).
    bias : ndarray (T, K) or mapping teacher name -> distribution, optional
        Needed for ``bias``; a mapping must name exactly the soft labels' teachers.
    base : {"uniform", "size", "explicit"}
        Base weights of the ``bias`` kind.
    floor : float
        Distance floor of the ``bias`` kind.

    Returns
    -------
    ndarray, float64: shape (T,) for ``uniform``/``size``/``explicit``, (N, T) for ``bias``;
    weights sum to 1 (per example for ``bias``).

    Examples
    --------
    >>> p = np.full((2, 3, 2), 0.5, dtype=np.float32)
    >>> sl = SoftLabels(p, ["a", "b", "c"], ["x", "y"], teacher_sizes=[10, 30, 60])
    >>> teacher_weights("size", sl).tolist()
    [0.1, 0.3, 0.6]
    >>> teacher_weights("explicit", sl, explicit=[1, 1, 2]).tolist()
    [0.25, 0.25, 0.5]
    >>> teacher_weights("bias", sl, bias=np.full((3, 2), 0.5), base="uniform").shape
    (2, 3)
    """
    names = soft_labels.teacher_names
    t = soft_labels.num_teachers
    if kind == "uniform":
        return np.full(t, 1.0 / t)
    if kind == "size":
        sizes = soft_labels.teacher_sizes
        if sizes is None:
            raise ValueError("size weights: the soft labels record no teacher training-set sizes")
        missing = [n for n, s in zip(names, sizes) if s is None or s <= 0]
        if missing:
            raise ValueError(f"size weights: no positive training-set size for teacher(s) {missing}")
        return _normalise(np.asarray(sizes, dtype=np.float64), "size weights", names)
    if kind == "explicit":
        if explicit is None:
            raise ValueError("explicit weights: no list given (distill.methods[].explicit_weights)")
        if len(explicit) != t:
            raise ValueError(
                f"explicit weights: {len(explicit)} values for {t} teachers {names} "
                "(one value per teacher, locals in config order, then the global model)"
            )
        return _normalise(np.asarray(explicit, dtype=np.float64), "explicit weights", names)
    if kind == "bias":
        if bias is None:
            raise ValueError("bias weights: no distribution bias; run `knot bias CONFIG` first")
        if isinstance(bias, dict):
            missing = [n for n in names if n not in bias]
            if missing:
                raise ValueError(f"bias weights: no distribution bias for teacher(s) {missing}")
            bias = np.asarray([bias[n] for n in names], dtype=np.float64)
        if base == "bias":
            raise ValueError("bias weights: base must be uniform, size or explicit")
        base_w = teacher_weights(base, soft_labels, explicit=explicit)
        return bias_weights(soft_labels.probs, np.asarray(bias, dtype=np.float64), base_w, floor)
    raise ValueError(f"teacher weights: unknown kind {kind!r} (expected one of {', '.join(WEIGHT_KINDS)})")


# ---------------------------------------------------------------------------
# inference helpers (models with the classifier interface)
# ---------------------------------------------------------------------------


def predict_probs(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 128,
    device: Any = None,
    desc: str = "predict",
) -> np.ndarray:
    """Class probabilities of a :class:`knot.models.KnotClassifier` for ``texts``, in
    order, shape (N, K) float32, with a progress bar labelled ``desc``.

    Streams length-grouped batches under :func:`torch.inference_mode` (memory flat in N
    apart from the tokens and the (N, K) result); see ``KnotClassifier.predict_proba``.
    """
    return model.predict_proba(list(texts), batch_size=batch_size, device=device, progress=True, desc=desc)


def _num_labels(model: Any) -> int:
    geometry = getattr(model, "geometry", None)
    if geometry is not None:
        return int(geometry.num_labels)
    return int(model.num_labels)


def _max_length(model: Any) -> int:
    for obj in (model, getattr(model, "config", None), getattr(model, "model_cfg", None)):
        value = getattr(obj, "max_length", None) if obj is not None else None
        if isinstance(value, int):
            return value
    return int(getattr(model.tokenizer, "model_max_length", 512))


def special_wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids a tokenizer puts before and after a text's tokens.

    Found by encoding one word with and without special tokens (``([CLS], [SEP])`` for
    BERT-style tokenizers).
    """
    word = "hello"
    plain = list(tokenizer(word, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(word, add_special_tokens=True)["input_ids"])
    for at in range(len(full) - len(plain) + 1):
        if full[at : at + len(plain)] == plain:
            return full[:at], full[at + len(plain) :]
    raise ValueError("bias: cannot locate the tokenizer's special tokens around a text")


def random_token_inputs(
    tokenizer: Any,
    n_samples: int,
    length: int,
    seed: int,
    batch_size: int = 128,
) -> Iterable[tuple[Any, Any]]:
    """Seeded random-vocabulary-token batches ``(input_ids, attention_mask)``, each (B, L).

    Every input is ``length`` token ids drawn uniformly (with replacement) from the
    tokenizer's vocabulary without its special tokens, wrapped in the tokenizer's special
    tokens (``[CLS] ... [SEP]`` for BERT-style tokenizers). As in the reference, the inputs
    carry no meaning; unlike it they are drawn as ids, so their length is exactly
    ``length`` and they do not depend on how a joined string would re-tokenise. The same
    ``seed`` gives the same inputs for every teacher.
    """
    import torch

    vocab_size = len(tokenizer)
    special = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    candidates = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)
    if len(candidates) == 0:
        raise ValueError("bias: the tokenizer has no non-special tokens")
    prefix, suffix = special_wrap(tokenizer)
    gen = torch.Generator().manual_seed(int(seed))
    done = 0
    while done < n_samples:
        b = min(batch_size, n_samples - done)
        body = candidates[torch.randint(len(candidates), (b, length), generator=gen)]  # (B, L)
        ids = torch.cat(
            [
                torch.tensor(prefix, dtype=torch.long).expand(b, -1),
                body,
                torch.tensor(suffix, dtype=torch.long).expand(b, -1),
            ],
            dim=1,
        )
        yield ids, torch.ones_like(ids)
        done += b


def predicted_class_distribution(
    model: Any,
    *,
    n_samples: int,
    length: int,
    seed: int,
    batch_size: int = 128,
    device: Any = None,
    desc: str = "bias",
) -> dict[str, np.ndarray]:
    """A model's distribution bias: how often it predicts each class on random-token inputs.

    Parameters
    ----------
    model : classifier (``tokenizer`` attribute, ``forward(input_ids, attention_mask)``), or
        a :class:`knot.models.FrozenClassifier` (the inputs go through ``predict_proba``)
    n_samples, length, seed : number of random inputs, tokens per input, seed
    batch_size : inference batch size

    Returns
    -------
    dict with ``"distribution"``: ndarray (K,), the fraction of inputs whose argmax is each
    class (the reference's measure), and ``"mean_probs"``: ndarray (K,), the mean predicted
    distribution over the same inputs.
    """
    import torch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    k = _num_labels(model)
    n_special = sum(len(part) for part in special_wrap(model.tokenizer))
    allowed = _max_length(model) - n_special
    if length > allowed:
        log.warning("bias: length %d exceeds the model's max_length; using %d tokens", length, allowed)
        length = allowed
    counts = np.zeros(k, dtype=np.int64)
    prob_sum = np.zeros(k, dtype=np.float64)
    if getattr(model, "frozen", False):
        # A frozen model reads features: encode the same random inputs as token-id lists
        # (through its feature cache, so every teacher of a run shares one encoding).
        inputs = [row.tolist() for ids, _ in random_token_inputs(model.tokenizer, n_samples, length, seed, batch_size)
                  for row in ids]
        probs = torch.from_numpy(model.predict_proba(inputs, batch_size=batch_size, device=device, desc=desc))
        counts += np.bincount(probs.argmax(dim=-1).numpy(), minlength=k)
        prob_sum += probs.sum(dim=0).double().numpy()
        return {"distribution": counts / n_samples, "mean_probs": prob_sum / n_samples}
    with torch.inference_mode(), progress(total=n_samples, desc=desc, unit="input") as bar:
        for ids, mask in random_token_inputs(model.tokenizer, n_samples, length, seed, batch_size):
            logits = model(ids.to(device), mask.to(device)).float()  # (B, K)
            probs = torch.softmax(logits, dim=-1)
            counts += np.bincount(probs.argmax(dim=-1).cpu().numpy(), minlength=k)
            prob_sum += probs.sum(dim=0).double().cpu().numpy()
            bar.update(ids.shape[0])
    return {"distribution": counts / n_samples, "mean_probs": prob_sum / n_samples}


def bias_table(bias: dict[str, Any]) -> str:
    """The distribution biases of ``bias.json`` as a Markdown table (teachers x classes).

    >>> print(bias_table({"label_names": ["x", "y"], "teachers": ["a"],
    ...                   "distribution": {"a": [0.25, 0.75]}}))
    | teacher | x | y |
    |---|---|---|
    | a | 0.250 | 0.750 |
    """
    labels = bias["label_names"]
    lines = ["| teacher | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name in bias["teachers"]:
        row = bias["distribution"][name]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


def load_bias(directory: str | Path, teacher_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Read ``bias.json`` from ``directory``; check it covers ``teacher_names`` if given."""
    path = Path(directory) / "bias.json"
    data = read_json(path, BIAS_FORMAT, what="knot distribution-bias",
                     missing="no distribution bias; run `knot bias CONFIG` first")
    if teacher_names is not None:
        missing = [t for t in teacher_names if t not in data.get("distribution", {})]
        if missing:
            raise ValueError(f"{path}: no distribution bias for teacher(s) {missing}; rerun `knot bias`")
    for key in ("distribution", "mean_probs"):
        for name, values in (data.get(key) or {}).items():
            if not isinstance(values, list):
                raise ValueError(f"{path}: {key}.{name}: expected a list of probabilities, got {values!r}")
            for k, v in enumerate(values):
                parse_finite(v, f"{path}: {key}.{name}[{k}]")
    return data


# ---------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------


def produce_soft_labels(run: RunContext) -> dict[str, Any]:
    """Soft-label stage: every teacher predicts on the transfer set's splits.

    Reads the teacher checkpoints (``layout.teacher(d)`` for each local domain, then
    ``layout.global_model``) and the prepared transfer splits (``cfg.soft_labels.splits``),
    and writes one :class:`SoftLabels` per split into ``layout.soft_labels``. Gold labels of
    the transfer set are only used to report each teacher's quality on it (stored under
    ``extra["teacher_metrics"]``), never stored with the soft labels.

    Returns a summary: per split, N and each teacher's metrics on it (when labelled).
    """
    cfg, layout, geometry, device = run.cfg, run.layout, run.geometry, run.device
    transfer = run.transfer_domain()
    refs = run.teachers()
    for ref in refs:
        require_checkpoint(ref)
    manifest = read_manifest(layout.data)

    splits = {}
    for split in cfg.soft_labels.splits:
        examples = load_split(layout.data, transfer.name, split)
        if not examples:
            raise ValueError(f"transfer domain {transfer.name!r}: split {split!r} is empty")
        splits[split] = examples

    def teacher_output(ref: RunModel) -> TeacherOutput:  # one teacher in memory at a time
        model = run.load_model(ref.path, name=f"teacher {ref.name!r}")
        probs = {}
        for split, examples in splits.items():
            log.info("soft labels: teacher %s on %s/%s (%d texts)", ref.name, transfer.name, split, len(examples))
            probs[split] = predict_probs(
                model,
                [e.text for e in examples],
                batch_size=cfg.soft_labels.batch_size,
                device=device,
                desc=f"{ref.name} -> {split}",
            )
        return TeacherOutput(probs, teacher_size(ref, manifest), checkpoint_hash(ref.path))

    summary = assemble_soft_labels(layout.soft_labels, refs, geometry, transfer.name, splits, teacher_output,
                                   manifest=manifest)
    log.info("soft labels written to %s", layout.soft_labels)
    return summary


@dataclass
class TeacherOutput:
    """What one teacher contributes to the soft labels: its probabilities per split
    (``{split: (N, K)}``), its training-set size and its checkpoint hash."""

    probs: Mapping[str, np.ndarray]
    size: int | None
    checkpoint_sha256: str


def assemble_soft_labels(
    directory: str | Path,
    refs: Sequence[RunModel],
    geometry: Any,
    domain: str,
    examples: Mapping[str, Sequence[Any]],
    teacher_output: Callable[[RunModel], TeacherOutput],
    *,
    manifest: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build and save one :class:`SoftLabels` per split from each teacher's output.

    The one writer of soft labels, filled by local models (:func:`produce_soft_labels`) or
    by the clients' replies (:func:`knot.federated.core.write_soft_labels`).

    Parameters
    ----------
    directory : where the ``<split>.json`` / ``<split>.safetensors`` pairs go
    refs : the teachers, in column order (:func:`knot.run.run_teachers`)
    geometry : the task's LabelGeometry (K labels)
    domain : the transfer domain
    examples : ``{split: examples}`` of the transfer domain (texts in row order; gold
        labels, when every example has one, only score the teachers)
    teacher_output : called once per teacher, in order: its :class:`TeacherOutput`
    manifest : the prepared data manifest (the transfer hash is taken from it)
    extra : stored in every split's ``extra`` besides ``teacher_metrics``

    Returns
    -------
    summary: ``{"teachers": [...], "splits": {split: {"n", "teacher_metrics"?}}}``
    """
    outputs = {s: np.empty((len(ex), len(refs), geometry.num_labels), dtype=np.float32)  # (N, T, K)
               for s, ex in examples.items()}
    sizes, hashes = [], []
    for j, ref in enumerate(refs):
        out = teacher_output(ref)
        for s in examples:
            outputs[s][:, j] = out.probs[s]  # (N, K)
        sizes.append(out.size)
        hashes.append(out.checkpoint_sha256)

    summary: dict[str, Any] = {"teachers": [r.name for r in refs], "splits": {}}
    for split, ex in examples.items():
        metrics: dict[str, Any] = {}
        if ex and all(e.label is not None for e in ex):
            y = np.asarray([geometry.index(e.label) for e in ex])
            metrics["teacher_metrics"] = {
                ref.name: _plain_metrics(evaluate_probs(outputs[split][:, j], y, geometry))
                for j, ref in enumerate(refs)
            }
        sl = SoftLabels(
            outputs[split],
            teacher_names=[r.name for r in refs],
            label_names=list(geometry.labels),
            teacher_sizes=sizes,
            teacher_hashes=hashes,
            teacher_roles=[r.role for r in refs],
            transfer_hash=transfer_hash(manifest, domain),
            texts_sha256=texts_hash(e.text for e in ex),
            domain=domain,
            split=split,
            extra={**metrics, **(extra or {})},
        )
        sl.save(directory, split)
        summary["splits"][split] = {"n": len(ex), **metrics}
    return summary


def _plain_metrics(m: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in m.items():
        if isinstance(v, (int, float, np.integer, np.floating)):
            v = v.item() if hasattr(v, "item") else v
            out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return out


def bias_record(cfg: Any, refs: Sequence[RunModel], label_names: Sequence[str]) -> dict[str, Any]:
    """An empty ``bias.json`` record for the teachers ``refs``; fill it with :func:`add_bias`."""
    return {
        "format": BIAS_FORMAT,
        "version": _SCHEMA_VERSION,
        "n_samples": cfg.bias.n_samples,
        "length": cfg.bias.length,
        "seed": cfg.bias.seed,
        "teachers": [r.name for r in refs],
        "teacher_roles": [r.role for r in refs],
        "teacher_hashes": [],
        "label_names": list(label_names),
        "distribution": {},
        "mean_probs": {},
    }


def add_bias(record: dict[str, Any], name: str, result: Mapping[str, Any], checkpoint_sha256: str) -> None:
    """Add one teacher's :func:`predicted_class_distribution` result to a bias record
    (teachers in the record's order)."""
    record["distribution"][name] = [round(float(v), 6) for v in result["distribution"]]
    record["mean_probs"][name] = [round(float(v), 6) for v in result["mean_probs"]]
    record["teacher_hashes"].append(checkpoint_sha256)


def teacher_bias(model: Any, cfg: Any, device: Any, name: str) -> dict[str, Any]:
    """:func:`predicted_class_distribution` of one teacher with the config's ``bias``
    settings (the same random inputs for every teacher, in process or federated)."""
    return predicted_class_distribution(
        model,
        n_samples=cfg.bias.n_samples,
        length=cfg.bias.length,
        seed=cfg.bias.seed,
        batch_size=cfg.soft_labels.batch_size,
        device=device,
        desc=f"bias {name}",
    )


def distribution_bias(run: RunContext) -> dict[str, Any]:
    """Distribution-bias stage: each teacher's predicted-class distribution on random inputs.

    ``cfg.bias.n_samples`` inputs of ``cfg.bias.length`` random vocabulary tokens (seed
    ``cfg.bias.seed``; the same inputs for every teacher). Writes
    ``layout.soft_labels / "bias.json"``, logs the table, and returns the bias dict
    (``distribution`` and ``mean_probs`` per teacher, ``teachers``, ``label_names``).
    """
    cfg, layout, device = run.cfg, run.layout, run.device
    refs = run.teachers()
    for ref in refs:
        require_checkpoint(ref)
    out = bias_record(cfg, refs, run.geometry.labels)
    for ref in refs:
        model = run.load_model(ref.path, name=f"teacher {ref.name!r}")
        add_bias(out, ref.name, teacher_bias(model, cfg, device, ref.name), checkpoint_hash(ref.path))
        del model
    atomic_write_json(layout.bias, out)
    log.info("distribution bias (%d random inputs of %d tokens):\n%s", cfg.bias.n_samples, cfg.bias.length, bias_table(out))
    return out

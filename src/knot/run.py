"""Who is in a run: its teachers, global model and students, and their checkpoints.

Every stage that lists the run's models (soft labels, distribution bias, distillation,
evaluation, the federated server) asks this module, so they agree on the order and on
what counts as present:

* local teachers, one per ``local`` domain in config order (``teacher:<domain>``);
* the global model when the config has a ``global`` domain (``global``);
* students, one per configured distillation method (``student:<method>``), then any
  other student folder with a checkpoint under ``students/``.

The teachers (locals, then the global model) are the soft labels' columns, in that order.

:class:`RunContext` is what every stage function takes: the resolved config, the run
folder's layout, and what the stages used to rebuild each on their own (the task geometry,
the device, the feature cache, the teachers, model loading). :class:`knot.pipeline.Run`
extends it with the stages as methods.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from knot.config import ExperimentConfig, apply_overrides, load_config
from knot.layout import RunLayout
from knot.models import read_checkpoint_config, resolve_checkpoint
from knot.utils import sha256_json

__all__ = [
    "RunContext",
    "as_config",
    "RunModel",
    "run_teachers",
    "run_students",
    "run_models",
    "transfer_domain",
    "transfer_hash",
    "has_checkpoint",
    "checkpoint_meta",
    "teacher_size",
    "require_checkpoint",
]

_ROLES = {"teacher": "local", "global": "global", "student": "student"}


@dataclass
class RunModel:
    """One model of a run.

    Parameters
    ----------
    kind : ``"teacher"`` (a local teacher), ``"global"`` or ``"student"``
    name : the local domain, ``"global"``, or the distillation method
    path : its checkpoint folder
    method : students: the DistillMethod as a dict
    checkpoint_hash : filled in when the checkpoint is read
    best_epoch : the epoch of the checkpoint (0: a student kept its initial weights)
    init : students: what they started from (``global`` or ``scratch``), from the checkpoint

    >>> RunModel("teacher", "books").id, RunModel("teacher", "books").role
    ('teacher:books', 'local')
    >>> RunModel("global", "global").id
    'global'
    """

    kind: str  # "teacher" | "global" | "student"
    name: str
    path: Path | None = None
    method: dict[str, Any] | None = None
    checkpoint_hash: str | None = None
    best_epoch: int | None = None
    init: str | None = None

    @property
    def id(self) -> str:
        return "global" if self.kind == "global" else f"{self.kind}:{self.name}"

    @property
    def role(self) -> str:
        """``local`` / ``global`` for teachers (the soft labels' ``teacher_roles``), else ``student``."""
        return _ROLES[self.kind]

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        path = None
        if self.path is not None:
            try:
                path = str(Path(self.path).relative_to(root)) if root is not None else str(self.path)
            except ValueError:
                path = str(self.path)
        d = {"id": self.id, "kind": self.kind, "name": self.name, "path": path, "checkpoint_hash": self.checkpoint_hash}
        if self.method is not None:
            d["method"] = self.method
        if self.best_epoch is not None:
            d["best_epoch"] = self.best_epoch
        if self.init is not None:
            d["init"] = self.init
        return d


def _teacher_models(cfg: Any, layout: Any) -> list[RunModel]:
    refs = [RunModel("teacher", d.name, layout.teacher(d.name)) for d in cfg.domains("local")]
    if cfg.domains("global"):
        refs.append(RunModel("global", "global", layout.global_model))
    return refs


def run_teachers(cfg: Any, layout: Any) -> list[RunModel]:
    """The run's teachers in soft-label column order: local domains in config order (named
    after their domain), then the global model (named ``global``) when the config has a
    global domain."""
    refs = _teacher_models(cfg, layout)
    if refs and refs[-1].kind == "global":
        if any(r.name == "global" for r in refs[:-1]):
            raise ValueError("data.domains: a local domain may not be named 'global' (the global model's name)")
    if not refs:
        raise ValueError("data.domains: the config has no local or global domain (no teachers)")
    return refs


def run_students(cfg: Any, layout: Any) -> list[RunModel]:
    """The configured students (method order), then any other student folder with a
    checkpoint under ``students/`` (its method read from the checkpoint)."""
    out = [RunModel("student", m.name, layout.student(m.name), method=m.to_dict()) for m in cfg.distill.methods]
    configured = {m.name for m in cfg.distill.methods}
    students_dir = layout.student("x").parent
    if students_dir.is_dir():
        for p in sorted(students_dir.iterdir()):
            if p.is_dir() and p.name not in configured and has_checkpoint(p):
                method = checkpoint_meta(p).get("method")
                out.append(RunModel("student", p.name, p, method=method if isinstance(method, dict) else None))
    return out


def run_models(cfg: Any, layout: Any) -> tuple[list[RunModel], list[RunModel]]:
    """The run's models that have a checkpoint (with ``best_epoch`` read from it), and
    those that do not: local teachers, the global model, then the students."""
    candidates = _teacher_models(cfg, layout) + run_students(cfg, layout)
    present = [m for m in candidates if has_checkpoint(m.path)]
    for m in present:
        meta = checkpoint_meta(m.path)
        m.best_epoch = meta.get("epoch") if isinstance(meta.get("epoch"), int) else None
        if m.kind == "student" and isinstance(meta.get("init"), str):
            m.init = meta["init"]
    missing = [m for m in candidates if not has_checkpoint(m.path)]
    return present, missing


def transfer_domain(cfg: Any) -> Any:
    """The config's transfer domain (exactly one)."""
    doms = cfg.domains("transfer")
    if len(doms) != 1:
        raise ValueError(
            f"data.domains: expected exactly one domain with role 'transfer', found {len(doms)}"
        )
    return doms[0]


def transfer_hash(manifest: dict[str, Any], domain: str) -> str:
    """The hash of a prepared domain's manifest entry: what soft labels record as
    ``transfer_hash`` and a federated request as ``data_hash``."""
    return sha256_json(manifest.get("domains", {}).get(domain))


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """The ``metadata`` a checkpoint was saved with (``{}`` when it has none)."""
    return read_checkpoint_config(path).get("metadata") or {}


def has_checkpoint(path: Path) -> bool:
    """Whether ``path`` (or ``path/best``) holds a knot checkpoint with its weights."""
    try:
        return (resolve_checkpoint(path) / "model.safetensors").is_file()
    except FileNotFoundError:
        return False


def _find_key(obj: Any, key: str) -> Any:
    """First value of ``key`` in a nested dict (top level first)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def teacher_size(ref: RunModel, manifest: dict[str, Any] | None) -> int | None:
    """A teacher's training-set size: ``n_train`` in its checkpoint metadata, else the
    prepared train count of its domain in the manifest."""
    n = _find_key(checkpoint_meta(ref.path), "n_train")
    if isinstance(n, int) and n > 0:
        return n
    try:
        return int(manifest["domains"][ref.name]["counts"]["train"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def require_checkpoint(ref: RunModel) -> None:
    """Raise ``FileNotFoundError`` saying which ``knot train`` command makes the missing
    checkpoint of teacher ``ref``."""
    if not has_checkpoint(ref.path):
        what = f"local teacher {ref.name!r}" if ref.role == "local" else "the global model"
        cmd = f"--role local --domain {ref.name}" if ref.role == "local" else "--role global"
        raise FileNotFoundError(
            f"{ref.path}: no checkpoint for {what}; run `knot train CONFIG {cmd}` first"
        )


def as_config(config: Any, overrides: list[str] | None = None) -> ExperimentConfig:
    """An :class:`~knot.config.ExperimentConfig` from a YAML path, a dict (the YAML's
    content) or a config, with ``--set``-style ``overrides`` applied.

    >>> as_config({"name": "x", "task": {"geometry": "sentiment5"}}, ["seed=7"]).seed
    7
    """
    if isinstance(config, ExperimentConfig):
        if not overrides:
            return config
        config = config.to_dict()
    if isinstance(config, Mapping):
        return ExperimentConfig.from_dict(apply_overrides(dict(config), overrides))
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, overrides)
    raise ValueError(f"config: expected a YAML path, a dict or an ExperimentConfig, got {type(config).__name__}")


class RunContext:
    """One run folder and its config: what every stage reads before it works.

    Parameters
    ----------
    config : a YAML path, a dict (the YAML's content) or an :class:`~knot.config.ExperimentConfig`.
    out : the run folder (a path or a :class:`~knot.layout.RunLayout`); default ``runs/<name>``.
    data_root : the folder the config's data paths are relative to (``--data-root``;
        else ``KNOT_DATA``, then ``data.root``).
    overrides : ``--set`` overrides (``["local.epochs=2", ...]``).

    The geometry, device and feature cache are built once, on first use.
    """

    def __init__(
        self,
        config: Any,
        out: str | os.PathLike | RunLayout | None = None,
        *,
        data_root: str | os.PathLike | None = None,
        overrides: list[str] | None = None,
    ) -> None:
        self.cfg: ExperimentConfig = as_config(config, overrides)
        if isinstance(out, RunLayout):
            self.layout = out
        else:
            self.layout = RunLayout(Path(out) if out is not None else Path("runs") / self.cfg.name)
        self.data_root = data_root

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.name!r}, {str(self.layout.root)!r})"

    @property
    def root(self) -> Path:
        """The run folder."""
        return self.layout.root

    def with_config(self, cfg: ExperimentConfig) -> "RunContext":
        """The same run folder and data root under another config (a federated client's
        view, a seed of a multi-seed run); the geometry and device are rebuilt from it."""
        return type(self)(cfg, self.layout, data_root=self.data_root)

    @cached_property
    def geometry(self) -> Any:
        """The task's :class:`~knot.geometry.LabelGeometry` (``cfg.task``)."""
        from knot.geometry import LabelGeometry

        return LabelGeometry.from_task(self.cfg.task)

    @cached_property
    def device(self) -> Any:
        """The torch device of ``cfg.device`` (``auto``: CUDA, then MPS, then CPU)."""
        from knot.utils import resolve_device

        return resolve_device(self.cfg.device)

    @cached_property
    def feature_cache(self) -> Any:
        """The run's frozen-encoder feature cache (``$KNOT_CACHE`` when set, else ``RUN/features``)."""
        from knot.features import run_feature_cache

        return run_feature_cache(self.layout)

    def teachers(self) -> list[RunModel]:
        """The teachers in soft-label column order (see :func:`run_teachers`)."""
        return run_teachers(self.cfg, self.layout)

    def students(self) -> list[RunModel]:
        """The configured students, then other student checkpoints (see :func:`run_students`)."""
        return run_students(self.cfg, self.layout)

    def models(self) -> tuple[list[RunModel], list[RunModel]]:
        """The models with a checkpoint, and those without (see :func:`run_models`)."""
        return run_models(self.cfg, self.layout)

    def transfer_domain(self) -> Any:
        """The config's transfer domain (exactly one)."""
        return transfer_domain(self.cfg)

    def load_model(self, path: str | os.PathLike, *, name: str | None = None, device: Any = None) -> Any:
        """Load the checkpoint at ``path`` on the run's device with the run's feature cache;
        a model whose labels differ from the task's is a ValueError naming ``name``."""
        from knot.models import load

        model = load(path, device=self.device if device is None else device, feature_cache=self.feature_cache)
        labels, task = list(model.geometry.labels), list(self.geometry.labels)
        if labels != task:
            raise ValueError(f"{path}: {name or 'the model'} has labels {labels}, the task has {task}")
        return model

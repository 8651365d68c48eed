"""Who is in a run: its teachers, global model and students, and their checkpoints.

Every stage that lists the run's models (soft labels, distribution bias, distillation,
evaluation, the federated server) asks this module, so they agree on the order and on
what counts as present:

* local teachers, one per ``local`` domain in config order (``teacher:<domain>``);
* the global model when the config has a ``global`` domain (``global``);
* students, one per configured distillation method (``student:<method>``), then any
  other student folder with a checkpoint under ``students/``.

The teachers (locals, then the global model) are the soft labels' columns, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knot.models import read_checkpoint_config, resolve_checkpoint
from knot.utils import sha256_json

__all__ = [
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

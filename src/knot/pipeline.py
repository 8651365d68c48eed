"""The whole experiment as one :class:`Run` object over one run directory.

``knot.Run(config, out)`` owns the config, the run folder's layout, the task geometry, the
device, the feature cache and the teachers (its base, :class:`knot.run.RunContext`, is what
every stage function takes), and has the stages as methods, each returning a typed result:
:meth:`Run.prepare` -> :meth:`Run.train_teachers` (local, then global) ->
:meth:`Run.soft_labels` -> :meth:`Run.bias` -> :meth:`Run.distill` (one student per
method) -> :meth:`Run.evaluate` -> :meth:`Run.report`. :meth:`Run.run` (``knot run
CONFIG``; :func:`run_pipeline`) runs them all with the resume rules below.

Each stage records, in ``RUN/stages.json``, a hash of its inputs: the config sections it
reads and the fingerprints of the stages it depends on. A stage whose recorded hash equals
the current one (and whose outputs exist) is skipped, so rerunning a finished run does
nothing and a killed run resumes at the first unfinished stage (training stages also
resume from their last completed epoch). Changing a config key reruns exactly the stages
that read it, and everything downstream of them.

With ``seeds: [a, b, ...]`` the pipeline runs once per seed in ``RUN/seed-<s>/`` and the
report aggregates the seeds (mean +- std).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from knot import __version__
from knot.config import ExperimentConfig
from knot.layout import RunLayout
from knot.run import RunContext
from knot.utils import atomic_write_json, atomic_write_text, read_json, sha256_json

log = logging.getLogger(__name__)

__all__ = [
    "STAGE_NAMES", "Stage", "Run", "plan_stages", "run_pipeline", "run_stages", "read_stage_log",
    "config_sections", "prepare_stage", "teacher_stage", "student_stages", "evaluate_stage", "report_stage",
    "PrepareResult", "TeachersResult", "SoftLabelsResult", "BiasResult", "DistillResult",
    "EvaluateResult", "ReportResult", "RunResult",
]

#: Stage groups accepted by ``--stages``, in execution order.
STAGE_NAMES = ["prepare", "local", "global", "soft-labels", "bias", "distill", "evaluate", "report"]


# ---------------------------------------------------------------------------
# typed stage results
# ---------------------------------------------------------------------------


@dataclass
class PrepareResult:
    """The prepared data: ``data`` (``RUN/data``), the manifest, its ``data_hash`` and why
    it was (re)prepared (``changed``; empty when it was up to date)."""

    data: Path
    manifest: dict[str, Any]
    changed: list[str]

    @property
    def data_hash(self) -> str:
        return self.manifest["data_hash"]

    @property
    def summary(self) -> dict[str, Any]:  # what stages.json records
        return self.manifest


@dataclass
class TeachersResult:
    """Trained teachers (``role`` local or global): checkpoint folder, best epoch and best
    validation metrics per model name (``global`` for the global model)."""

    role: str
    checkpoints: dict[str, Path]
    best_epoch: dict[str, int]
    best_metrics: dict[str, dict[str, float]]
    summary: dict[str, Any] = field(repr=False)


@dataclass
class SoftLabelsResult:
    """The soft labels written into ``dir`` (``RUN/soft_labels``): the teachers (columns),
    the texts per split and each teacher's metrics per split (vs gold, when labelled)."""

    dir: Path
    teachers: list[str]
    n: dict[str, int]
    teacher_metrics: dict[str, dict[str, dict[str, float]]]
    summary: dict[str, Any] = field(repr=False)


@dataclass
class BiasResult:
    """Each teacher's predicted-class distribution on random inputs (``path``: bias.json)."""

    path: Path
    distribution: dict[str, list[float]]
    summary: dict[str, Any] = field(repr=False)


@dataclass
class DistillResult:
    """The students: checkpoint folder, best epoch and best validation metrics per method."""

    checkpoints: dict[str, Path]
    best_epoch: dict[str, int]
    best_metrics: dict[str, dict[str, float]]
    summary: dict[str, Any] = field(repr=False)


@dataclass
class EvaluateResult:
    """The evaluation: ``results.json`` / ``results.md`` and its rows (one per model and test set)."""

    path: Path
    markdown: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(repr=False)

    def row(self, model: str, test_set: str = "union") -> dict[str, Any]:
        """The row of ``model`` (``"student:ot"``, ``"global"``, ...) on ``test_set``."""
        for r in self.rows:
            if r["model"] == model and r["test_set"] == test_set:
                return r
        raise KeyError(f"no row for model {model!r} on test set {test_set!r}")


@dataclass
class ReportResult:
    """``report.md`` (with ``plots/`` beside it)."""

    path: Path

    @property
    def summary(self) -> str:
        return str(self.path)


@dataclass
class RunResult:
    """A whole run: its folder, the stage log(s) (``stages.json``; per seed for a multi-seed
    run), and the evaluation rows and report when those stages ran (the first seed's rows
    for a multi-seed run)."""

    root: Path
    log: dict[str, Any]
    rows: list[dict[str, Any]]
    report: Path | None


def _checkpoints(models: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    return (
        {k: Path(v["checkpoint"]) for k, v in models.items()},
        {k: v.get("best_epoch") for k, v in models.items()},
        {k: v.get("best_metrics") or {} for k, v in models.items()},
    )


# ---------------------------------------------------------------------------
# the Run
# ---------------------------------------------------------------------------


class Run(RunContext):
    """One experiment over one run folder, with the pipeline's stages as methods.

    Parameters
    ----------
    config : a YAML path, a dict (the YAML's content) or an :class:`~knot.config.ExperimentConfig`.
    out : the run folder (default ``runs/<name>``).
    data_root : the folder the config's data paths are relative to (else ``KNOT_DATA``,
        then ``data.root``; ``builtin:`` paths need none).
    overrides : ``--set`` overrides, e.g. ``["local.epochs=1"]``.

    Each stage method runs its stage unconditionally and returns a typed result;
    :meth:`run` runs the stages that are not up to date (as ``knot run``).
    """

    # -- stages ------------------------------------------------------------------------

    def prepare(self, *, force: bool = False) -> PrepareResult:
        """Read, label-map, split and write the config's datasets to ``RUN/data`` (a no-op
        when neither the data section nor a source changed)."""
        from knot.data.prepare import run_prepare

        manifest, changed = run_prepare(self.cfg, self.layout, self.data_root, force=force)
        return PrepareResult(self.layout.data, manifest, changed)

    def train_teachers(self, role: str = "local", domain: str | None = None, *, resume: bool = False) -> TeachersResult:
        """Train the local teachers (or only ``domain``'s) or, ``role="global"``, the global
        model (:func:`knot.teachers.train_teacher`); the data is prepared first if missing."""
        from knot.teachers import train_teacher

        summary = train_teacher(self, role=role, domain=domain, resume=resume)
        return TeachersResult(summary["role"], *_checkpoints(summary["models"]), summary=summary)

    def soft_labels(self) -> SoftLabelsResult:
        """Every teacher labels the transfer set (:func:`knot.soft_labels.produce_soft_labels`)."""
        from knot.soft_labels import produce_soft_labels

        summary = produce_soft_labels(self)
        splits = summary["splits"]
        return SoftLabelsResult(
            self.layout.soft_labels, list(summary["teachers"]), {s: info["n"] for s, info in splits.items()},
            {s: dict(info.get("teacher_metrics") or {}) for s, info in splits.items()}, summary=summary,
        )

    def bias(self) -> BiasResult:
        """Each teacher's distribution bias on random inputs (:func:`knot.soft_labels.distribution_bias`)."""
        from knot.soft_labels import distribution_bias

        summary = distribution_bias(self)
        return BiasResult(self.layout.bias, dict(summary["distribution"]), summary=summary)

    def distill(self, method: Any = None, *, loss: str | None = None, resume: bool = False) -> DistillResult:
        """Train one student per selected method (:func:`knot.distill.distill`)."""
        from knot.distill import distill

        summary = distill(self, method, loss=loss, resume=resume)
        return DistillResult(*_checkpoints(summary["students"]), summary=summary)

    def evaluate(self) -> EvaluateResult:
        """Score every model present on every test set (:func:`knot.evaluation.evaluate_run`)."""
        from knot.evaluation import evaluate_run

        results = evaluate_run(self)
        return EvaluateResult(self.layout.results_json, self.layout.results_md, list(results["rows"]), summary=results)

    def report(self) -> ReportResult:
        """Write ``report.md`` and ``plots/`` from ``results.json`` (:func:`knot.reporting.write_report`)."""
        from knot.reporting import write_report

        return ReportResult(write_report([self.layout], self.layout.root, title=self.cfg.name))

    # -- the pipeline --------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        """The stages of this run (one seed), in order, with their inputs and dependencies."""
        return plan_stages(self)

    def run(self, stages: list[str] | None = None, *, force: bool = False, wait: bool = False) -> RunResult:
        """Run (or resume) the whole experiment, as ``knot run``: a stage whose inputs and
        dependencies did not change since it last finished is skipped.

        Parameters
        ----------
        stages : stage groups to run (see :data:`STAGE_NAMES`); others are only checked.
        force : rerun the selected stages even when up to date.
        wait : if another process holds the run folder's lock, wait for it (else
            :class:`knot.locking.RunLockedError`).
        """
        from knot.locking import run_lock

        groups = list(STAGE_NAMES) if not stages else list(stages)
        unknown = [g for g in groups if g not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"--stages: unknown stage(s) {unknown}; expected some of {STAGE_NAMES}")
        with run_lock(self.root, wait=wait):  # re-entrant: the CLI already holds it
            if not self.cfg.seeds:
                logs = _run_one_seed(self, groups, force)
                first = self.layout
            else:
                logs, first = self._run_seeds(groups, force)
        rows = read_json(first.results_json)["rows"] if first.results_json.is_file() else []
        report = self.layout.report if self.layout.report.is_file() else None
        return RunResult(self.root, logs, rows, report)

    def _run_seeds(self, groups: list[str], force: bool) -> tuple[dict[str, Any], RunLayout]:
        from knot.reporting import write_report

        cfg = self.cfg
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.layout.config, cfg.to_yaml())
        logs, layouts = {}, []
        for seed in cfg.seeds:
            # frozen mode: the seeds read the same texts, so they share one feature cache
            seed_run = Run(dataclasses.replace(cfg, seed=seed, seeds=None), self.layout.seed_run(seed),
                           data_root=self.data_root)
            log.info("=== seed %d -> %s", seed, seed_run.root)
            logs[f"seed-{seed}"] = _run_one_seed(seed_run, groups, force)
            layouts.append(seed_run.layout)
        if "report" in groups:
            write_report(layouts, self.root, title=f"{cfg.name} ({len(cfg.seeds)} seeds)")
        return logs, layouts[0]


@dataclass
class Stage:
    """One unit of work: a name, the group ``--stages`` selects it by, and its inputs."""

    name: str  # unique, e.g. "local:toy" or "distill:ot"
    group: str  # one of STAGE_NAMES
    inputs: dict[str, Any]  # config sections read (plain data)
    depends: list[str]  # names of stages whose fingerprints feed this one
    run: Callable[[], Any]  # returns the stage's typed result (its ``summary`` goes to stages.json)
    outputs: Callable[[], bool]  # whether the stage's outputs exist
    #: run every time (the stage is its own no-op check) and fingerprint its result
    fingerprint: Callable[[], str] | None = None


def config_sections(cfg: ExperimentConfig, *names: str) -> dict[str, Any]:
    """The config sections ``names`` as plain data: what a stage's hash reads."""
    d = cfg.to_dict()
    return {n: d[n] for n in names}


def _common(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"seed": cfg.seed, "device": cfg.device}


def prepare_stage(run: Run) -> Stage:
    """Prepare the data; always run when selected (a no-op when nothing changed), its
    fingerprint is the prepared files' hash."""
    from knot.data import read_manifest

    return Stage(
        "prepare",
        "prepare",
        config_sections(run.cfg, "data", "task"),
        [],
        lambda: run.prepare(),
        run.layout.manifest.is_file,
        fingerprint=lambda: read_manifest(run.layout.data)["data_hash"],
    )


def teacher_stage(run: Run, role: str, domain: str | None = None) -> Stage:
    """Train one local teacher (``role="local"``, its ``domain``) or the global model;
    a teacher prepares the data itself when it is missing (--stages without prepare)."""
    from knot.run import has_checkpoint

    cfg, layout = run.cfg, run.layout
    if role == "local":
        return Stage(
            f"local:{domain}",
            "local",
            {**config_sections(cfg, "model", "local", "task"), **_common(cfg), "domain": domain},
            ["prepare"],
            lambda: run.train_teachers("local", domain, resume=True),
            lambda: has_checkpoint(layout.teacher(domain)),
        )
    return Stage(
        "global",
        "global",
        {**config_sections(cfg, "model", "global_model", "task"), **_common(cfg)},
        ["prepare"],
        lambda: run.train_teachers("global", resume=True),
        lambda: has_checkpoint(layout.global_model),
    )


def student_stages(run: Run, depends: list[str], target: Callable[[], Run] | None = None) -> list[Stage]:
    """One distillation stage per configured method, run on ``target()`` (default ``run``)."""
    from knot.run import has_checkpoint

    cfg, layout = run.cfg, run.layout
    target = target or (lambda: run)
    distill_common = {k: v for k, v in cfg.to_dict()["distill"].items() if k != "methods"}
    return [
        Stage(
            f"distill:{method.name}",
            "distill",
            {"distill": distill_common, "method": method.to_dict(), **config_sections(cfg, "model", "task"),
             **_common(cfg)},
            list(depends),
            (lambda m=method.name: target().distill(m)),
            (lambda m=method.name: has_checkpoint(layout.student(m))),
        )
        for method in cfg.distill.methods
    ]


def evaluate_stage(run: Run, depends: list[str], target: Callable[[], Run] | None = None) -> Stage:
    """Evaluate every model of the run, on ``target()`` (default ``run``)."""
    target = target or (lambda: run)
    return Stage("evaluate", "evaluate", config_sections(run.cfg, "evaluate", "task"), list(depends),
                 lambda: target().evaluate(), run.layout.results_json.is_file)


def report_stage(run: Run) -> Stage:
    """Write report.md and plots/ from results.json."""
    return Stage("report", "report", {}, ["evaluate"], lambda: run.report(), run.layout.report.is_file)


def plan_stages(run: Run) -> list[Stage]:
    """The stages of one run (one seed), in order, with their inputs and dependencies."""
    cfg, layout = run.cfg, run.layout
    locals_ = [d.name for d in cfg.domains("local")]
    if not locals_:
        raise ValueError("data.domains: the config has no domain with role 'local'")
    if not cfg.domains("transfer"):
        raise ValueError("data.domains: the config has no domain with role 'transfer'")
    has_global = bool(cfg.domains("global"))

    teachers = [teacher_stage(run, "local", name) for name in locals_]
    if has_global:
        teachers.append(teacher_stage(run, "global"))
    names = [t.name for t in teachers]
    soft = Stage(
        "soft-labels",
        "soft-labels",
        config_sections(cfg, "soft_labels"),
        ["prepare", *names],
        lambda: run.soft_labels(),
        lambda: all((layout.soft_labels / f"{s}.json").is_file() for s in cfg.soft_labels.splits),
    )
    bias = Stage("bias", "bias", config_sections(cfg, "bias"), names, lambda: run.bias(), layout.bias.is_file)
    deps = ["soft-labels", "bias"] + (["global"] if has_global and cfg.distill.init == "global" else [])
    students = student_stages(run, deps)
    return [
        prepare_stage(run),
        *teachers,
        soft,
        bias,
        *students,
        evaluate_stage(run, ["prepare", *names, *(s.name for s in students)]),
        report_stage(run),
    ]


def read_stage_log(layout: RunLayout) -> dict[str, Any]:
    """``RUN/stages.json`` as a dict (empty when the run has not started)."""
    if not layout.stages.is_file():
        return {}
    try:
        return read_json(layout.stages)
    except ValueError as exc:
        raise ValueError(f"corrupt stage log ({exc}); delete it to rerun all stages") from None


def _run_one_seed(run: Run, groups: list[str], force: bool) -> dict[str, Any]:
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.layout.config, run.cfg.to_yaml())
    return run_stages(run, run.stages(), groups, force)


def run_stages(
    run: RunContext,
    stages: list[Stage],
    groups: list[str] | None = None,
    force: bool = False,
    fingerprints: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``stages`` in order over ``run``'s folder with the resume rules of ``knot run``:
    a stage whose hash (its inputs and its dependencies' fingerprints) is the one recorded
    in ``stages.json`` and whose outputs exist is skipped; the others selected by
    ``groups`` (default: all) run and are recorded. ``fingerprints`` (filled in) carries the
    stages' fingerprints across calls. Returns the stage log."""
    layout = run.layout
    groups = list(STAGE_NAMES) if groups is None else groups
    record = read_stage_log(layout)
    fingerprints = {} if fingerprints is None else fingerprints
    for stage in stages:
        key = sha256_json(
            {
                "stage": stage.name,
                "inputs": stage.inputs,
                "depends": {d: fingerprints.get(d) for d in stage.depends},
            }
        )
        fingerprints[stage.name] = key
        selected = stage.group in groups
        done = (
            record.get(stage.name, {}).get("hash") == key
            and stage.outputs()
        )
        if stage.fingerprint is not None and selected:
            start = time.time()
            summary = _run_stage(run.cfg, stage)
            fingerprints[stage.name] = key = sha256_json([key, stage.fingerprint()])
            record[stage.name] = _record(key, start, summary)
            atomic_write_json(layout.stages, record)
            continue
        if stage.fingerprint is not None:
            fingerprints[stage.name] = record.get(stage.name, {}).get("hash", key)
            continue
        if done and not (force and selected):
            log.info("[%s] up to date, skipped", stage.name)
            continue
        if not selected:
            if not done:
                log.info("[%s] not selected (--stages) and not up to date", stage.name)
            continue
        log.info("[%s] running", stage.name)
        start = time.time()
        summary = _run_stage(run.cfg, stage)
        record[stage.name] = _record(key, start, summary)
        # written after every stage, so a killed run keeps what finished
        atomic_write_json(layout.stages, record)
    return record


def _run_stage(cfg: ExperimentConfig, stage: Stage) -> Any:
    """Run one stage and return its summary (what stages.json records); in frozen-encoder
    mode the summary gains ``encoding``: the texts it encoded (cache misses), the seconds
    spent and the throughput (texts/s)."""
    if not cfg.model.frozen:
        return _summary(stage.run())
    from knot.features import encoding_delta, encoding_stats

    before = encoding_stats()
    summary = _summary(stage.run())
    enc = encoding_delta(before)
    if enc["texts_encoded"]:
        log.info(
            "[%s] encoded %d texts in %.1f s (%s texts/s); %d cached text sets reused",
            stage.name, enc["texts_encoded"], enc["seconds"], enc["texts_per_s"], enc["cache_hits"],
        )
    if isinstance(summary, dict):
        summary = {**summary, "encoding": enc}
    return summary


def _summary(result: Any) -> Any:
    """What stages.json records of a stage's result: its ``summary`` (typed results), or the
    result itself (a plain dict)."""
    return getattr(result, "summary", result)


def _record(key: str, start: float, summary: Any) -> dict[str, Any]:
    return {
        "hash": key,
        "seconds": round(time.time() - start, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "knot_version": __version__,
        "summary": _jsonable(summary),
    }


def _jsonable(obj: Any) -> Any:
    import json

    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return str(obj)


def run_pipeline(
    cfg: ExperimentConfig,
    out: Path,
    *,
    data_root: Path | None = None,
    stages: list[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``out``; returns the stage log(s):
    ``Run(cfg, out, data_root=data_root).run(stages, force=force).log`` (see :meth:`Run.run`).
    """
    return Run(cfg, out, data_root=data_root).run(stages, force=force).log

"""The whole experiment as a sequence of stages over one run directory.

``knot run CONFIG`` calls :func:`run_pipeline`: prepare -> local teachers -> global model
-> soft labels -> bias -> distillation (one student per method) -> evaluation -> report.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from knot import __version__
from knot.config import ExperimentConfig
from knot.layout import RunLayout
from knot.utils import atomic_write_json, atomic_write_text, read_json, sha256_json

log = logging.getLogger(__name__)

__all__ = ["STAGE_NAMES", "Stage", "plan_stages", "run_pipeline", "read_stage_log"]

#: Stage groups accepted by ``--stages``, in execution order.
STAGE_NAMES = ["prepare", "local", "global", "soft-labels", "bias", "distill", "evaluate", "report"]


@dataclass
class Stage:
    """One unit of work: a name, the group ``--stages`` selects it by, and its inputs."""

    name: str  # unique, e.g. "local:toy" or "distill:ot"
    group: str  # one of STAGE_NAMES
    inputs: dict[str, Any]  # config sections read (plain data)
    depends: list[str]  # names of stages whose fingerprints feed this one
    run: Callable[[], Any]
    outputs: Callable[[], bool]  # whether the stage's outputs exist
    #: run every time (the stage is its own no-op check) and fingerprint its result
    fingerprint: Callable[[], str] | None = None


def _sections(cfg: ExperimentConfig, *names: str) -> dict[str, Any]:
    d = cfg.to_dict()
    return {n: d[n] for n in names}


def plan_stages(cfg: ExperimentConfig, layout: RunLayout, data_root: Path | None = None) -> list[Stage]:
    """The stages of one run (one seed), in order, with their inputs and dependencies."""
    # Stage modules are imported here, not at module import, so `import knot.pipeline` stays light.
    from knot.data import prepare_data, read_manifest
    from knot.distill import distill
    from knot.evaluation import evaluate_run
    from knot.reporting import write_report
    from knot.run import has_checkpoint
    from knot.soft_labels import distribution_bias, produce_soft_labels
    from knot.teachers import train_teacher

    locals_ = [d.name for d in cfg.domains("local")]
    if not locals_:
        raise ValueError("data.domains: the config has no domain with role 'local'")
    if not cfg.domains("transfer"):
        raise ValueError("data.domains: the config has no domain with role 'transfer'")
    has_global = bool(cfg.domains("global"))

    def unprepared() -> Path | None:
        # A teacher prepares the data itself when it is missing (--stages without prepare),
        # from the data root passed here; once prepared (the prepare stage runs first when
        # selected), None: no second check of the sources per teacher.
        return None if layout.manifest.is_file() else data_root

    common = {"seed": cfg.seed, "device": cfg.device}
    stages: list[Stage] = [
        Stage(
            "prepare",
            "prepare",
            _sections(cfg, "data", "task"),
            [],
            lambda: prepare_data(cfg, layout, data_root),
            layout.manifest.is_file,
            # prepare_data detects changed sources itself and is a no-op otherwise; the
            # hash of the prepared files tells downstream stages whether their data changed
            fingerprint=lambda: read_manifest(layout.data)["data_hash"],
        )
    ]
    teacher_stages = []
    for name in locals_:
        stages.append(
            Stage(
                f"local:{name}",
                "local",
                {**_sections(cfg, "model", "local", "task"), **common, "domain": name},
                ["prepare"],
                (lambda n=name: train_teacher(cfg, layout, role="local", domain=n, resume=True,
                                              data_root=unprepared())),
                (lambda n=name: has_checkpoint(layout.teacher(n))),
            )
        )
        teacher_stages.append(f"local:{name}")
    if has_global:
        stages.append(
            Stage(
                "global",
                "global",
                {**_sections(cfg, "model", "global_model", "task"), **common},
                ["prepare"],
                lambda: train_teacher(cfg, layout, role="global", resume=True, data_root=unprepared()),
                lambda: has_checkpoint(layout.global_model),
            )
        )
        teacher_stages.append("global")
    stages.append(
        Stage(
            "soft-labels",
            "soft-labels",
            _sections(cfg, "soft_labels"),
            ["prepare", *teacher_stages],
            lambda: produce_soft_labels(cfg, layout),
            lambda: all((layout.soft_labels / f"{s}.json").is_file() for s in cfg.soft_labels.splits),
        )
    )
    stages.append(
        Stage(
            "bias",
            "bias",
            _sections(cfg, "bias"),
            teacher_stages,
            lambda: distribution_bias(cfg, layout),
            layout.bias.is_file,
        )
    )
    distill_common = {
        k: v for k, v in cfg.to_dict()["distill"].items() if k != "methods"
    }
    student_stages = []
    for method in cfg.distill.methods:
        deps = ["soft-labels", "bias"] + (["global"] if has_global and cfg.distill.init == "global" else [])
        stages.append(
            Stage(
                f"distill:{method.name}",
                "distill",
                {
                    "distill": distill_common,
                    "method": method.to_dict(),
                    **_sections(cfg, "model", "task"),
                    **common,
                },
                deps,
                (lambda m=method.name: distill(cfg, layout, method=m)),
                (lambda m=method.name: has_checkpoint(layout.student(m))),
            )
        )
        student_stages.append(f"distill:{method.name}")
    stages.append(
        Stage(
            "evaluate",
            "evaluate",
            _sections(cfg, "evaluate", "task"),
            ["prepare", *teacher_stages, *student_stages],
            lambda: evaluate_run(cfg, layout),
            layout.results_json.is_file,
        )
    )
    stages.append(
        Stage(
            "report",
            "report",
            {},
            ["evaluate"],
            lambda: write_report([layout], layout.root, title=cfg.name),
            layout.report.is_file,
        )
    )
    return stages


def read_stage_log(layout: RunLayout) -> dict[str, Any]:
    """``RUN/stages.json`` as a dict (empty when the run has not started)."""
    if not layout.stages.is_file():
        return {}
    try:
        return read_json(layout.stages)
    except ValueError as exc:
        raise ValueError(f"corrupt stage log ({exc}); delete it to rerun all stages") from None


def _run_one_seed(
    cfg: ExperimentConfig,
    layout: RunLayout,
    data_root: Path | None,
    groups: list[str],
    force: bool,
) -> dict[str, Any]:
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.config, cfg.to_yaml())
    stages = plan_stages(cfg, layout, data_root)
    record = read_stage_log(layout)
    fingerprints: dict[str, str] = {}
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
            summary = _run_stage(cfg, stage)
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
        summary = _run_stage(cfg, stage)
        record[stage.name] = _record(key, start, summary)
        # written after every stage, so a killed run keeps what finished
        atomic_write_json(layout.stages, record)
    return record


def _run_stage(cfg: ExperimentConfig, stage: Stage) -> Any:
    """Run one stage; in frozen-encoder mode its summary gains ``encoding``: the texts it
    encoded (cache misses), the seconds spent and the throughput (texts/s)."""
    if not cfg.model.frozen:
        return stage.run()
    from knot.features import encoding_delta, encoding_stats

    before = encoding_stats()
    summary = stage.run()
    enc = encoding_delta(before)
    if enc["texts_encoded"]:
        log.info(
            "[%s] encoded %d texts in %.1f s (%s texts/s); %d cached text sets reused",
            stage.name, enc["texts_encoded"], enc["seconds"], enc["texts_per_s"], enc["cache_hits"],
        )
    if isinstance(summary, dict):
        summary = {**summary, "encoding": enc}
    return summary


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
    """Run (or resume) the whole experiment into ``out``; returns the stage log(s).

    Parameters
    ----------
    cfg : the resolved experiment config.
    out : run directory.
    data_root : folder the config's data paths are relative to (else ``KNOT_DATA`` /
        ``data.root``).
    stages : stage groups to run (see :data:`STAGE_NAMES`); others are only checked.
    force : rerun the selected stages even when up to date.
    """
    groups = list(STAGE_NAMES) if not stages else list(stages)
    unknown = [g for g in groups if g not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"--stages: unknown stage(s) {unknown}; expected some of {STAGE_NAMES}")
    out = Path(out)
    if not cfg.seeds:
        return _run_one_seed(cfg, RunLayout(out), data_root, groups, force)
    from knot.reporting import write_report

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    logs, layouts = {}, []
    top = RunLayout(out)
    for seed in cfg.seeds:
        seed_cfg = dataclasses.replace(cfg, seed=seed, seeds=None)
        # frozen mode: the seeds read the same texts, so they share one feature cache
        layout = top.seed_run(seed)
        log.info("=== seed %d -> %s", seed, layout.root)
        logs[f"seed-{seed}"] = _run_one_seed(seed_cfg, layout, data_root, groups, force)
        layouts.append(layout)
    if "report" in groups:
        write_report(layouts, out, title=f"{cfg.name} ({len(cfg.seeds)} seeds)")
    return logs

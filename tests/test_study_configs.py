"""The study configs (configs/study/): each task's sensitivity run must match its comparison
run in everything but the students and seeds, so its `ot` is the comparison's `ot`, and each
of its variants must change exactly one knob of `ot`."""

from __future__ import annotations

from pathlib import Path

import pytest

from knot.config import load_config
from knot.pipeline import Run

STUDY = Path(__file__).resolve().parents[1] / "configs" / "study"
TASKS = ["sentiment", "erc", "goemotions", "vader"]


@pytest.mark.parametrize("task", TASKS)
def test_sensitivity_run_matches_its_comparison_run(task):
    comp = load_config(STUDY / f"{task}.yaml").to_dict()
    sens = load_config(STUDY / f"{task}-sensitivity.yaml").to_dict()
    for key in ("task", "data", "model", "local", "global_model", "soft_labels", "bias", "evaluate"):
        assert comp[key] == sens[key], key
    assert {k: v for k, v in comp["distill"].items() if k != "methods"} == {
        k: v for k, v in sens["distill"].items() if k != "methods"}
    assert set(sens["seeds"]) <= set(comp["seeds"]) and len(comp["seeds"]) >= 10
    ot = next(m for m in comp["distill"]["methods"] if m["name"] == "ot")
    assert next(m for m in sens["distill"]["methods"] if m["name"] == "ot") == ot
    assert comp["evaluate"]["val"] is True
    for m in sens["distill"]["methods"]:
        if m["name"] == "ot":
            continue
        changed = {k for k in set(m) | set(ot) if k != "name" and m.get(k) != ot.get(k)}
        assert len(changed) == 1, (m["name"], changed)


@pytest.mark.parametrize("task", TASKS)
def test_study_runs_are_frozen_full_size_with_the_reference_epochs(task):
    cfg = load_config(STUDY / f"{task}.yaml")
    assert cfg.model.encoder_mode == "frozen" and cfg.model.encoder_layers is None
    assert cfg.local.epochs == cfg.global_model.epochs == 10 and cfg.distill.train.epochs == 20
    assert all(d.max_train is None and d.max_val is None and d.max_test is None for d in cfg.data.domains)


CONTROLS = {"ot-permuted": {"permuted": 2020}, "ot-uniform": {"uniform": {"scale": "task_mean"}}}


@pytest.mark.parametrize("task", TASKS)
def test_every_task_has_the_geometry_controls_equal_to_ot_but_for_the_geometry(task):
    methods = {m["name"]: m for m in load_config(STUDY / f"{task}.yaml").to_dict()["distill"]["methods"]}
    ot = methods["ot"]
    for name, geometry in CONTROLS.items():
        assert methods[name] == {**ot, "name": name, "geometry": geometry}
    # the comparisons of the last study are all still there
    assert {"ot", "entropy", "kl", "feddf", "ot-mixture", "ot-derived"} <= set(methods)


def test_every_study_config_declares_the_same_analysis_and_fresh_confirmation_seeds():
    cfgs = [load_config(STUDY / f"{t}{kind}.yaml") for t in TASKS for kind in ("", "-sensitivity")]
    hashes = {c.study.sha256() for c in cfgs}
    assert len(hashes) == 1
    study = cfgs[0].study
    assert study.primary.tasks == [f"study-{t}" for t in TASKS]
    assert (study.primary.metric, study.primary.a, study.primary.b) == ("semantic_distance", "student:ot", "student:entropy")
    assert study.sensitivity_rule.name == "sd_better_acc_f1_w1_not_worse"
    used = {s for c in cfgs for s in c.seeds}
    assert len(study.confirmation.seeds) >= 10 and not used & set(study.confirmation.seeds)
    controls = next(f for f in study.families if f.name == "geometry controls")
    assert controls.comparisons == [["student:ot", f"student:{n}"] for n in CONTROLS]


def test_the_study_section_changes_no_stage_hash():
    from knot.layout import RunLayout
    from knot.pipeline import plan_stages

    cfg = load_config(STUDY / "vader.yaml")
    bare = load_config(STUDY / "vader.yaml")
    bare.study = None
    assert "study" not in bare.to_dict()
    a = {s.name: s.inputs for s in plan_stages(Run(cfg, RunLayout(Path("/nonexistent"))))}
    b = {s.name: s.inputs for s in plan_stages(Run(bare, RunLayout(Path("/nonexistent"))))}
    assert a == b

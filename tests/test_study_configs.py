"""The study configs (configs/study/): full-size frozen runs with the reference's epochs, the
geometry controls and the newer students in every task, and one analysis declared in all of
them whose families, candidates and confirmation seeds name what the runs train."""

from __future__ import annotations

from pathlib import Path

import pytest

from knot.config import load_config
from knot.pipeline import Run

from helpers import load_bench

_mr = load_bench("make_results")

STUDY = Path(__file__).resolve().parents[1] / "configs" / "study"
TASKS = ["sentiment", "erc", "goemotions", "vader"]


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
    # the comparisons of the last study are all still there, and the newer students (issue 21)
    assert {"ot", "entropy", "kl", "feddf", "ot-mixture", "ot-derived"} <= set(methods)
    assert methods["wkl"]["schedule"] == {"kind": "cosine", "start": 1.0, "end": 0.0}
    assert methods["ot-kl"]["options"] == {"lam": 0.5} and methods["dsfl"]["sharpen"] == 0.5
    assert methods["sord"]["options"] == {"tau": 1.0} and methods["uld"]["loss"] == "uld"
    assert methods["ot-learned"]["geometry"] == {"learned": "soft_labels", "scale": "task"}
    assert methods["ot-head"]["geometry"] == {"learned": "head", "kappa": 4, "scale": "task"}


def test_every_study_config_declares_the_same_analysis_and_fresh_confirmation_seeds():
    cfgs = [load_config(STUDY / f"{t}.yaml") for t in TASKS]
    assert sorted(p.name for p in STUDY.glob("*.yaml")) == sorted(f"{t}.yaml" for t in TASKS)
    hashes = {c.study.sha256() for c in cfgs}
    assert len(hashes) == 1
    study = cfgs[0].study
    assert study.primary.tasks == [f"study-{t}" for t in TASKS] == [c.name for c in cfgs]
    assert (study.primary.metric, study.primary.a, study.primary.b) == ("semantic_distance", "student:ot", "student:entropy")
    assert study.sensitivity_rule.name == "sd_better_acc_f1_w1_not_worse"
    used = {s for c in cfgs for s in c.seeds}
    assert len(study.confirmation.seeds) >= 10 and not used & set(study.confirmation.seeds)
    assert all(c.evaluate.val for c in cfgs)  # the confirmed setting is chosen on val rows
    # what is confirmed: every OT-family student but ot is a candidate, the KL family its own list
    conf = study.confirmation
    assert conf.candidates == _mr.FAMILIES["OT"][1:] and conf.kl_candidates == _mr.FAMILIES["KL"]
    assert {"ot", "entropy", "ot-permuted", "ot-uniform"} <= set(conf.students)
    fams = {f.name: f for f in study.families}
    assert fams["goal"].tasks == [f"study-{t}-confirm" for t in TASKS]
    assert all(f.tasks == study.primary.tasks for n, f in fams.items() if n != "goal")
    # the goal family holds every candidate against the best KL-family student and its controls
    for n in _mr.FAMILIES["OT"]:
        own = n in _mr.OWN_CONTROLS
        assert [f"student:{n}", _mr.BEST_KL] in fams["goal"].comparisons
        for k in ("permuted", "uniform"):
            assert [f"student:{n}", f"student:{n if own else 'ot'}-{k}"] in fams["goal"].comparisons
    controls = next(f for f in study.families if f.name == "geometry controls")
    assert controls.comparisons == [["student:ot", f"student:{n}"] for n in CONTROLS]
    # issue 21: every newer student is in the families the goal check reads, under the
    # names make_results uses, and every compared student is trained in every task
    fams = {f.name: f for f in study.families}
    assert {a for a, _ in fams["new methods vs ot"].comparisons} == {
        f"student:{n}" for n in _mr.NEW_STUDENTS}
    assert {b for _, b in fams["new methods vs best KL-family"].comparisons} == {_mr.BEST_KL}
    assert {a for a, _ in fams["new OT students vs geometry controls"].comparisons} == {
        f"student:{n}" for n in _mr.FAMILIES["OT"] if n != "ot"}
    for task in TASKS:
        trained = {f"student:{m.name}" for m in load_config(STUDY / f"{task}.yaml").distill.methods}
        named = {x for f in study.families if f.name != "goal" for pair in f.comparisons for x in pair
                 if x.startswith("student:")}
        assert named <= trained, (task, named - trained)


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

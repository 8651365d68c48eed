"""The study configs (configs/study/): each task's sensitivity run must match its comparison
run in everything but the students and seeds, so its bases (`ot`, `ot-kl`) are the
comparison's, and each of its variants must change exactly one knob of its base (the
student whose name it extends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from knot.config import load_config
from knot.pipeline import Run

from helpers import load_bench

_mr = load_bench("make_results")
base_of, sensitivity_bases = _mr.base_of, _mr.sensitivity_bases

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
    comp_methods = {m["name"]: m for m in comp["distill"]["methods"]}
    sens_methods = {m["name"]: m for m in sens["distill"]["methods"]}
    assert sens_methods["ot"] == comp_methods["ot"]
    assert comp["evaluate"]["val"] is True
    bases = {n for n, m in sens_methods.items() if comp_methods.get(n) == m}
    assert sensitivity_bases(sens_methods, comp_methods) == bases
    for name, m in sens_methods.items():
        if name in bases:
            continue
        base = sens_methods[base_of(name, bases)]
        changed = {k for k in set(m) | set(base) if k != "name" and m.get(k) != base.get(k)}
        assert len(changed) == 1, (name, changed)


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
        named = {x for f in study.families for pair in f.comparisons for x in pair if x.startswith("student:")}
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

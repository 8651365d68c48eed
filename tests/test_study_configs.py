"""The study configs (configs/study/): each task's sensitivity run must match its comparison
run in everything but the students and seeds, so its `ot` is the comparison's `ot`, and each
of its variants must change exactly one knob of `ot`."""

from __future__ import annotations

from pathlib import Path

import pytest

from knot.config import load_config

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

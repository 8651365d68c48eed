"""Tests for knot.run: who is in a run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from knot.layout import RunLayout
from knot.run import RunModel, run_models, run_teachers, transfer_domain


def _cfg(domains, methods=()):
    ds = [SimpleNamespace(name=n, role=r) for n, r in domains]
    ms = [SimpleNamespace(name=m, to_dict=lambda m=m: {"name": m}) for m in methods]
    return SimpleNamespace(domains=lambda role: [d for d in ds if d.role == role],
                           distill=SimpleNamespace(methods=ms))


def test_teachers_are_locals_in_config_order_then_global(tmp_path):
    cfg = _cfg([("b", "local"), ("g", "global"), ("a", "local"), ("t", "transfer")])

    refs = run_teachers(cfg, RunLayout(tmp_path))

    assert [(r.id, r.role) for r in refs] == [("teacher:b", "local"), ("teacher:a", "local"), ("global", "global")]
    assert refs[-1].path == tmp_path / "global"
    assert transfer_domain(cfg).name == "t"


def test_a_local_domain_may_not_be_named_global(tmp_path):
    with pytest.raises(ValueError, match="may not be named 'global'"):
        run_teachers(_cfg([("global", "local"), ("g", "global")]), RunLayout(tmp_path))


def test_run_models_lists_teachers_global_students_without_checkpoints_as_missing(tmp_path):
    cfg = _cfg([("a", "local"), ("g", "global")], methods=["ot"])

    present, missing = run_models(cfg, RunLayout(tmp_path))

    assert present == []
    assert [m.id for m in missing] == ["teacher:a", "global", "student:ot"]
    assert missing[-1].method == {"name": "ot"} and missing[-1].role == "student"


def test_run_model_to_dict_paths_relative_to_the_run():
    m = RunModel("student", "ot", Path("/r/students/ot"), best_epoch=0)

    assert m.to_dict(Path("/r")) == {
        "id": "student:ot", "kind": "student", "name": "ot", "path": "students/ot",
        "checkpoint_hash": None, "best_epoch": 0,
    }

"""Evaluation table: metrics on a hand-built prediction set, baselines, Markdown."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from knot.evaluation import (
    TestSet,
    build_results,
    load_results,
    pick_baselines,
    render_markdown,
    score_models,
)
from knot.geometry import LabelGeometry
from knot.metrics import evaluate_probs
from knot.run import RunContext, RunModel
from knot.utils import atomic_write_json

from helpers import LABELS3, synthetic_rows

# three labels on a line: cost |i - j|
GEOMETRY = LabelGeometry(labels=["a", "b", "c"], coords=[[0.0], [1.0], [2.0]])

# model A: imperfect; model B: one-hot on the gold label
LABELS = {"d1": np.array([0, 1, 2]), "d2": np.array([2, 0, 1])}
PROBS_A = {
    "d1": np.array([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6], [0.0, 0.0, 1.0]]),
    "d2": np.array([[0.1, 0.0, 0.9], [0.2, 0.8, 0.0], [0.0, 1.0, 0.0]]),
}
PROBS_B = {d: np.eye(3)[y] for d, y in LABELS.items()}
TEST_SETS = [TestSet("d1", "local", ["d1"]), TestSet("d2", "local", ["d2"]), TestSet("union", "union", ["d1", "d2"])]

# Worked out by hand (see the comments):
EXPECTED_A = {
    # preds [0, 2, 2]: F1 per class 1, 0, 2/3; distances to the gold coordinate 0.3, 0.6, 0;
    # expected costs 0.3, 0.6, 0 (one example per class, so per-class means = overall means)
    "d1": {"n": 3, "accuracy": 2 / 3, "macro_f1": 5 / 9, "semantic_distance": 0.3, "expected_cost": 0.3},
    # preds [2, 1, 1]: F1 per class 0, 2/3, 1; distances 0.2, 0.8, 0; costs 0.2, 0.8, 0
    "d2": {"n": 3, "accuracy": 2 / 3, "macro_f1": 5 / 9, "semantic_distance": 1 / 3, "expected_cost": 1 / 3},
    # union: F1 per class 2/3, 1/2, 4/5; per-class mean distance 0.55, 0.3, 0.1
    "union": {"n": 6, "accuracy": 2 / 3, "macro_f1": 59 / 90, "semantic_distance": 0.95 / 3,
              "expected_cost": 0.95 / 3},
}


@pytest.fixture
def rows():
    probs = {"teacher:a": PROBS_A, "teacher:b": PROBS_B, "global": PROBS_A, "student:feddf": PROBS_B}
    return score_models(probs, LABELS, TEST_SETS, functools.partial(evaluate_probs, geometry=GEOMETRY))


MODELS = [
    RunModel("teacher", "a"),
    RunModel("teacher", "b"),
    RunModel("global", "global"),
    RunModel("student", "feddf", method={"loss": "kl", "aggregate": "mixture", "weights": "size"}, best_epoch=0),
]


def test_metrics_match_hand_computed_values(rows):
    assert len(rows) == 4 * 3
    for test_set, expected in EXPECTED_A.items():
        for model in ("teacher:a", "global"):
            row = next(r for r in rows if r["model"] == model and r["test_set"] == test_set)
            for key, value in expected.items():
                assert row[key] == pytest.approx(value, abs=1e-9), (model, test_set, key)
    for r in rows:
        if r["model"] in ("teacher:b", "student:feddf"):
            assert (r["accuracy"], r["macro_f1"]) == (1.0, 1.0)
            assert r["semantic_distance"] == pytest.approx(0.0, abs=1e-12)
            assert r["expected_cost"] == pytest.approx(0.0, abs=1e-12)


def test_rows_are_ordered_by_test_set_then_model(rows):
    assert [r["test_set"] for r in rows[::4]] == ["d1", "d2", "union"]
    assert [r["model"] for r in rows[:4]] == ["teacher:a", "teacher:b", "global", "student:feddf"]


def test_baselines(rows):
    assert pick_baselines(MODELS, rows, "union") == {
        "global_alone": "global",
        "best_single_teacher": "teacher:b",
        "feddf": "student:feddf",
    }
    no_feddf = [m for m in MODELS if m.kind != "student"] + [
        RunModel("student", "ot", method={"loss": "ot", "aggregate": "per_teacher"})
    ]
    assert pick_baselines(no_feddf, rows, "union")["feddf"] is None


def test_results_json_and_markdown(rows, tmp_path):
    results = build_results(
        name="demo", geometry=GEOMETRY.to_dict(), label_names=GEOMETRY.labels, models=MODELS,
        test_sets=TEST_SETS, rows=rows, missing=[{"id": "student:ot", "path": "students/ot"}],
    )
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    back = load_results(path)
    assert back["test_sets"][2] == {"name": "union", "kind": "union", "domains": ["d1", "d2"], "n": 6}
    assert [m["id"] for m in back["models"]] == ["teacher:a", "teacher:b", "global", "student:feddf"]
    assert back["baselines"]["best_single_teacher"] == "teacher:b"

    md = render_markdown(back)
    lines = md.splitlines()
    # overview: one row per model, test sets as columns
    assert "| model | d1 | d2 | union | notes |" in lines
    assert "| `teacher:a` | 0.5556 | 0.5556 | 0.6556 | local teacher |" in lines
    assert any(line.startswith("| `global` |") and "baseline: global model alone" in line for line in lines)
    assert any(line.startswith("| `student:feddf` |") and "baseline: FedDF" in line
               and "initial weights kept" in line for line in lines)
    # per-domain and union rows with every metric
    assert "| union | `teacher:a` | 6 | 0.6667 | 0.6556 | 0.3167 | 0.3167 |" in lines
    assert "| d2 | `teacher:b` | 3 | 1.0000 | 1.0000 | 0.0000 | 0.0000 |" in lines
    assert "Not evaluated (no checkpoint): `student:ot`." in lines


def test_the_environment_is_recorded_and_printed(rows, tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from knot import evaluation

    env = evaluation.run_environment()
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["torch"].split("+")[0] == torch.__version__.split("+")[0] and env["numpy"] == np.__version__
    assert env["knot"] == evaluation.__version__ and set(env) >= {"scipy", "transformers"}
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert evaluation.run_environment()["torch_threads"] == 1
    finally:
        torch.set_num_threads(saved)
    src = evaluation.__file__
    try:
        head = subprocess.run(["git", "-C", str(Path(src).parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except OSError:
        head = None
    assert env["knot_commit"] == head  # None outside a git checkout

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    evaluation._knot_commit.cache_clear()
    monkeypatch.setattr(evaluation.subprocess, "run", no_git)
    try:
        assert evaluation.run_environment()["knot_commit"] is None  # no git: null, no failure
    finally:
        evaluation._knot_commit.cache_clear()

    results = build_results(name="demo", geometry=None, label_names=GEOMETRY.labels, models=MODELS,
                            test_sets=TEST_SETS, rows=rows, environment=env)
    path = tmp_path / "results.json"
    atomic_write_json(path, results)
    back = load_results(path)
    assert back["version"] == 1 and back["environment"] == env
    assert f"Environment: knot {env['knot']}" in render_markdown(back)
    assert f"torch {env['torch']}" in render_markdown(back)
    assert "Environment: not recorded." in render_markdown({k: v for k, v in back.items() if k != "environment"})


def test_load_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `knot evaluate"):
        load_results(tmp_path / "results.json")
    (tmp_path / "results.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a knot results file"):
        load_results(tmp_path / "results.json")


# --- end to end: teachers -> soft labels -> bias -> students -> evaluation ---------------------


@pytest.mark.slow
def test_stages_end_to_end(tmp_path):
    import torch

    from knot.config import ExperimentConfig
    from knot.data import load_split, prepare_data
    from knot.distill import distill
    from knot.evaluation import evaluate_run
    from knot.layout import RunLayout
    from knot.soft_labels import SoftLabels, distribution_bias, produce_soft_labels
    from knot.teachers import train_teacher

    data = tmp_path / "data"
    data.mkdir()
    domains = {"l1": "local", "l2": "local", "g": "global", "tr": "transfer"}
    for i, name in enumerate(domains):
        rows = synthetic_rows(30, i)
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ExperimentConfig.from_dict({
        "name": "e2e", "seed": 3, "device": "cpu",
        "task": {"geometry": {"neg": [-1.0], "neu": [0.0], "pos": [1.0]}},
        "data": {"seed": 3, "domains": [
            {"name": n, "role": r, "split": "random",
             "sources": [{"reader": "jsonl", "path": f"{n}.jsonl", "text": "text", "label": "label"}]}
            for n, r in domains.items()]},
        "model": {"encoder": "tiny", "max_length": 16, "dropout": 0.0},
        "local": {"epochs": 1, "batch_size": 16, "lr": 2e-3},
        "global_model": {"epochs": 1, "batch_size": 16, "lr": 2e-3},
        "bias": {"n_samples": 24, "length": 6},
        "distill": {"init": "global", "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3},
                    "methods": [{"name": "ot", "loss": "ot", "weights": "bias", "bias_base": "size"},
                                {"name": "feddf", "loss": "kl", "aggregate": "mixture"}]},
    })
    layout = RunLayout(tmp_path / "run")
    prepare_data(cfg, layout, data)
    train_teacher(RunContext(cfg, layout), role="local")
    train_teacher(RunContext(cfg, layout), role="global")

    summary = produce_soft_labels(RunContext(cfg, layout))
    sl = SoftLabels.load(layout.soft_labels, "train")
    assert sl.teacher_names == ["l1", "l2", "global"] and sl.label_names == LABELS3
    assert sl.num_examples == summary["splits"]["train"]["n"]
    counts = {d: json.loads(layout.manifest.read_text())["domains"][d]["counts"]["train"] for d in ("l1", "l2", "g")}
    assert sl.teacher_sizes == [counts["l1"], counts["l2"], counts["g"]]
    assert set(summary["splits"]["train"]["teacher_metrics"]) == {"l1", "l2", "global"}

    bias = distribution_bias(RunContext(cfg, layout))
    assert bias["teachers"] == ["l1", "l2", "global"]
    for name in bias["teachers"]:
        assert sum(bias["distribution"][name]) == pytest.approx(1.0)

    students = distill(RunContext(cfg, layout))["students"]
    assert set(students) == {"ot", "feddf"}
    from knot.models import checkpoint_hash

    for name, s in students.items():
        assert s["init"] == "global"
        if s["best_epoch"] == 0:  # no epoch beat the global model on val: its weights are kept
            assert checkpoint_hash(layout.student(name)) == checkpoint_hash(layout.global_model)
        else:
            assert s["best_metrics"]["loss"] < s["initial_val"]["loss"]

    results = evaluate_run(RunContext(cfg, layout))
    ids = [m["id"] for m in results["models"]]
    from knot.evaluation import load_predictions

    for mid in ids:  # every evaluated model's per-item predictions, one file each
        pred = load_predictions(layout.predictions(mid))
        assert pred["model"] == mid and set(pred["test"]) == {"l1", "l2", "g"}
        assert len(pred["test"]["l1"]["ids"]) == len(load_split(layout.data, "l1", "test"))
    assert [m.get("best_epoch") for m in results["models"]][3:] == [students["ot"]["best_epoch"],
                                                                     students["feddf"]["best_epoch"]]
    assert ids == ["teacher:l1", "teacher:l2", "global", "student:ot", "student:feddf"]
    assert [m.get("init") for m in results["models"]][3:] == ["global", "global"]
    assert results["environment"]["torch_threads"] == torch.get_num_threads()
    md = layout.results_md.read_text()
    assert "Environment: knot " in md
    for name, s in students.items():  # a kept start is said in words, not only by equal scores
        note = f"student:{name} kept its starting weights (global model): no trained epoch beat it on validation"
        assert (note in md) is (s["best_epoch"] == 0)
    assert [t["name"] for t in results["test_sets"]] == ["l1", "l2", "g", "union"]
    assert len(results["rows"]) == 5 * 4
    union = [t for t in results["test_sets"] if t["name"] == "union"][0]
    assert union["n"] == sum(t["n"] for t in results["test_sets"] if t["kind"] == "local")
    assert results["baselines"]["global_alone"] == "global"
    assert results["baselines"]["feddf"] == "student:feddf"
    assert results["baselines"]["best_single_teacher"] in ("teacher:l1", "teacher:l2")
    assert load_results(layout.results_json)["rows"] == results["rows"]
    md = layout.results_md.read_text()
    assert sum(line.startswith("| union | `") for line in md.splitlines()) == 5
    assert "validation" not in results
    assert set(results["confusion"]) == set(ids)
    for per_set in results["confusion"].values():
        assert {t: sum(map(sum, m)) for t, m in per_set.items()} == {t["name"]: t["n"] for t in results["test_sets"]}

    # evaluate.val: the same models and sets scored on the val splits, kept out of the tables
    import dataclasses

    cfg_val = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, val=True))
    with_val = evaluate_run(RunContext(cfg_val, layout))
    assert with_val["rows"] == results["rows"] and layout.results_md.read_text() == md
    val_rows = with_val["validation"]["rows"]
    assert [(r["model"], r["test_set"]) for r in val_rows] == [(r["model"], r["test_set"]) for r in results["rows"]]
    n_val = {d: len(load_split(layout.data, d, "val")) for d in ("l1", "l2", "g")}
    assert {r["test_set"]: r["n"] for r in val_rows} == {**n_val, "union": n_val["l1"] + n_val["l2"]}
    assert cfg_val.evaluate.to_dict()["val"] is True and "val" not in cfg.evaluate.to_dict()


def test_a_student_that_kept_its_start_is_named_in_words(rows, tmp_path):
    # Arrange: feddf's selected checkpoint is epoch 0, started from the global model
    models = [m if m.kind != "student" else RunModel(m.kind, m.name, method=m.method, best_epoch=0, init="global")
              for m in MODELS]
    results = build_results(name="demo", geometry=GEOMETRY.to_dict(), label_names=GEOMETRY.labels,
                            models=models, test_sets=TEST_SETS, rows=rows)

    # Act
    md = render_markdown(results)
    path = tmp_path / "run" / "results.json"
    atomic_write_json(path, results)
    from knot.layout import RunLayout
    from knot.reporting import write_report

    report = write_report([RunLayout(path.parent)], tmp_path / "out").read_text()

    # Assert
    note = ("Note: student:feddf kept its starting weights (global model): "
            "no trained epoch beat it on validation.")
    assert note in md.splitlines()
    assert note in report.splitlines()


def test_gold_columns_only_where_the_test_set_has_gold_distributions():
    from knot.evaluation import gold_baselines
    from knot.metrics import evaluate_gold

    # d1 has human distributions: example 0 split between a and b, 1 all b, 2 all c
    gold = {"d1": {"dist": np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
                   "score": np.array([-1.0, 0.0, 3.0])}}
    gold_fn = functools.partial(evaluate_gold, geometry=GEOMETRY)
    rows = score_models({"teacher:a": PROBS_A}, LABELS, TEST_SETS,
                        functools.partial(evaluate_probs, geometry=GEOMETRY), gold, gold_fn)
    d1, d2, union = rows
    # W1 on the line: |CDF_p - CDF_h| summed; rows 0.2, 0.6, 0 -> mean 0.8/3
    assert d1["w1_gold"] == pytest.approx(0.8 / 3)
    # TV: 0.2, 0.6, 0 -> 0.8/3 (on 3 points with mass moved one step, W1 = TV here)
    assert d1["tv_gold"] == pytest.approx(0.8 / 3)
    # expected coordinates 0.3, 1.6, 2.0 rank like the scores -1, 0, 3
    assert d1["spearman_gold"] == pytest.approx(1.0)
    assert 0 < d1["js_gold"] < 1
    assert "w1_gold" not in d2 and "w1_gold" not in union  # d2 has no gold: neither has the union
    base = gold_baselines(gold, TEST_SETS, gold_fn)
    assert base == {"d1": {"w1_gold": pytest.approx(0.5 / 3), "tv_gold": pytest.approx(0.5 / 3)}}
    results = build_results(name="g", geometry=None, label_names=GEOMETRY.labels, models=MODELS[:1],
                            test_sets=TEST_SETS, rows=rows, gold_baseline=base)
    md = render_markdown(results).splitlines()
    assert any(line.startswith("| test set | model | n |") and "W1 to gold" in line for line in md)
    assert any(line.startswith("| d1 | `teacher:a` | 3 | 0.6667 | 0.5556 | 0.3000 | 0.3000 | 0.2667 | 0.2667 |")
               for line in md)
    assert any(line.startswith("| d2 | `teacher:a` | 3 |") and line.endswith("| – | – | – | – |") for line in md)
    # without any gold, the table keeps its old columns
    plain = render_markdown(build_results(name="p", geometry=None, label_names=GEOMETRY.labels,
                                          models=MODELS[:1], test_sets=TEST_SETS, rows=score_models(
                                              {"teacher:a": PROBS_A}, LABELS, TEST_SETS,
                                              functools.partial(evaluate_probs, geometry=GEOMETRY))))
    assert "W1 to gold" not in plain


def test_predictions_are_saved_with_ids_and_labels_and_reload(tmp_path):
    import os

    from knot.evaluation import load_predictions, save_predictions
    from knot.layout import RunLayout

    path = RunLayout(tmp_path).predictions("student:ot")
    assert path == tmp_path / "predictions" / "student-ot.npz"
    old = os.umask(0o027)
    try:
        save_predictions(path, "student:ot", GEOMETRY.labels, {"test": PROBS_A, "val": {"d1": PROBS_B["d1"]}},
                         {"test": LABELS, "val": {"d1": LABELS["d1"]}})
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o640  # as an ordinary write under that umask
    assert [p.name for p in path.parent.iterdir()] == ["student-ot.npz"]  # no temporary left behind
    got = load_predictions(path)
    assert got["model"] == "student:ot" and got["label_names"] == ["a", "b", "c"]
    np.testing.assert_allclose(got["test"]["d2"]["probs"], PROBS_A["d2"], atol=1e-7)
    assert got["test"]["d2"]["labels"].tolist() == [2, 0, 1]
    assert got["test"]["d2"]["ids"].tolist() == ["d2:test:0", "d2:test:1", "d2:test:2"]
    assert set(got["val"]) == {"d1"}
    # the per-item SD recomputed from the file gives the row's class-balanced SD
    from knot.metrics import semantic_distance_per_item
    from knot.stats import class_balanced_mean

    y = np.concatenate([got["test"][d]["labels"] for d in ("d1", "d2")])
    p = np.concatenate([got["test"][d]["probs"] for d in ("d1", "d2")]).astype(np.float64)
    sd = class_balanced_mean(semantic_distance_per_item(p, y, GEOMETRY), y)
    assert sd == pytest.approx(EXPECTED_A["union"]["semantic_distance"], abs=1e-6)
    with pytest.raises(FileNotFoundError, match="no predictions"):
        load_predictions(tmp_path / "nope.npz")


def test_rows_carry_the_mean_entropy(rows):
    row = next(r for r in rows if r["model"] == "teacher:b" and r["test_set"] == "union")
    assert row["mean_entropy"] == 0.0  # one-hot predictions
    a = next(r for r in rows if r["model"] == "teacher:a" and r["test_set"] == "d1")
    h = -(0.7 * np.log(0.7) + 0.3 * np.log(0.3) + 0.4 * np.log(0.4) + 0.6 * np.log(0.6)) / 3
    assert a["mean_entropy"] == pytest.approx(h)

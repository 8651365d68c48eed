"""bench/make_results.py: the study page is computed from the run directories.

The runs here are hand-built ``results.json`` files for two seeds, so every figure the page
should show can be worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from knot.config import ExperimentConfig
from helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mr():
    return load_bench("make_results")


TEACHERS = ["a", "b"]


def _results(seed_shift: float, ot_sd: float, ent_sd: float) -> dict:
    models = [{"id": f"teacher:{t}", "kind": "teacher", "name": t, "path": f"teachers/{t}", "best_epoch": 2}
              for t in TEACHERS]
    models += [
        {"id": "global", "kind": "global", "name": "global", "path": "global", "best_epoch": 2},
        {"id": "student:ot", "kind": "student", "name": "ot", "path": "students/ot", "best_epoch": 0,
         "method": {"loss": "ot", "aggregate": "per_teacher"}},
        {"id": "student:entropy", "kind": "student", "name": "entropy", "path": "students/entropy",
         "best_epoch": 1, "method": {"loss": "entropy", "aggregate": "per_teacher"}},
    ]
    # teacher a: 0.6 on a, 0.4 on b; teacher b: 0.5 on a, 0.45 on b -> a is best on a (and
    # a's best set), b is best on b but b's best set is a
    f1 = {("teacher:a", "a"): 0.6, ("teacher:a", "b"): 0.4, ("teacher:b", "a"): 0.5, ("teacher:b", "b"): 0.45}
    rows = []
    for m in models:
        for ts in ("a", "b", "union"):
            sd = {"student:ot": ot_sd, "student:entropy": ent_sd}.get(m["id"], 0.9)
            rows.append({
                "model": m["id"], "test_set": ts, "n": 10,
                "accuracy": 0.5 + seed_shift, "macro_f1": f1.get((m["id"], ts), 0.4) + seed_shift,
                "semantic_distance": sd, "expected_cost": 1.0,
            })
    return {
        "format": "knot.results", "version": 1, "name": "toy-study", "label_names": ["1", "2", "3"],
        "test_sets": [
            {"name": "a", "kind": "local", "domains": ["a"], "n": 10},
            {"name": "b", "kind": "local", "domains": ["b"], "n": 10},
            {"name": "union", "kind": "union", "domains": ["a", "b"], "n": 20},
        ],
        "models": models,
        "baselines": {"global_alone": "global", "best_single_teacher": "teacher:b", "feddf": None},
        "rows": rows, "confusion": {}, "missing": [],
    }


def test_paired_differences_and_reading(mr):
    r1, r2 = _results(0.0, 0.70, 0.80), _results(0.01, 0.75, 0.72)
    p = mr.paired([r1, r2], "student:ot", "student:entropy", "union")
    sd = p["semantic_distance"]
    assert sd["mean"] == pytest.approx(((0.70 - 0.80) + (0.75 - 0.72)) / 2)
    assert (sd["better"], sd["worse"], sd["n"]) == (1, 1, 2)
    assert "SD no difference shown (1 better, 1 worse of 2;" in mr.verdict(p)
    assert sd["ci_low"] < 0 < sd["ci_high"]
    # lower on both seeds, but two seeds give a t interval with 1 degree of freedom: not shown
    p_all = mr.paired([r1, _results(0.0, 0.6, 0.9)], "student:ot", "student:entropy", "union")
    assert "SD no difference shown (2 better, 0 worse of 2; t-test p = 0.3; Wilcoxon p = 0.5)" in mr.verdict(p_all)
    assert p_all["semantic_distance"]["ci_low"] < 0 < p_all["semantic_distance"]["ci_high"]
    p3 = mr.paired([r1, _results(0.0, 0.6, 0.71), _results(0.0, 0.5, 0.61)], "student:ot", "student:entropy", "union")
    assert "SD better (3 better, 0 worse of 3;" in mr.verdict(p3)
    assert mr.paired([r1], "student:ot", "student:nope", "union") is None
    # accuracy is the same for both students on every seed
    assert "accuracy equal on all 2 seeds" in mr.verdict(p)


def test_own_domain_check(mr):
    lines, counts = mr.own_domain_check([_results(0.0, 0.7, 0.8), _results(0.0, 0.7, 0.8)])
    # a best teacher on a (2 seeds), b best teacher on b (0.45 > 0.4, 2 seeds)
    assert counts == {"best_teacher": 4, "best_set": 2, "total": 4}
    assert any(line.startswith("| `teacher:a` | 0.600 | 0.400 | 2/2 seeds | 2/2 seeds |") for line in lines)
    assert any(line.startswith("| `teacher:b` | 0.500 | 0.450 | 2/2 seeds | 0/2 seeds |") for line in lines)


def _toy_run(tmp_path, study=None, name="toy-study", sds=((0.0, 0.70, 0.80), (0.02, 0.66, 0.72)), seeds=(1, 2)):
    """A two-seed task run folder with hand-built results (and, with ``study``, its declaration)."""
    run = tmp_path / "runs" / name
    cfg = ExperimentConfig.from_dict({**({"study": study} if study else {}),
        "name": name, "seeds": list(seeds), "task": {"geometry": "uniform", "labels": ["1", "2", "3"]},
        "data": {"domains": [
            {"name": "a", "role": "local", "sources": [{"reader": "csv", "path": "a.csv", "text": "text", "label": "label"}]},
            {"name": "b", "role": "local", "sources": [{"reader": "csv", "path": "b.csv", "text": "text", "label": "label"}]},
            {"name": "t", "role": "transfer", "sources": [{"reader": "csv", "path": "t.csv", "text": "text", "label": "label"}]},
        ]},
        "distill": {"methods": [{"name": "ot", "loss": "ot"}, {"name": "entropy", "loss": "entropy"}]},
    })
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    for seed, (shift, ot_sd, ent_sd) in zip(seeds, sds):
        d = run / f"seed-{seed}"
        (d / "data").mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_results(shift, ot_sd, ent_sd)))
        (d / "stages.json").write_text(json.dumps({
            "local:a": {"seconds": 60.0, "finished": f"2026-01-0{seed % 9 + 1}T10:01:00"},
            "distill:ot": {"seconds": 120.0, "finished": f"2026-01-0{seed % 9 + 1}T10:03:00", "summary": {"students": {
                "ot": {"initial_val": {"loss": 0.5}, "best_metrics": {"loss": 0.4 + 0.2 * (seed % 2 == 0)}}}}},
        }))
        (d / "data" / "manifest.json").write_text(json.dumps({"domains": {
            n: {"role": r, "counts": {"train": 7, "val": 1, "test": 2}, "label_counts": {"train": {"1": 7}}}
            for n, r in (("a", "local"), ("b", "local"), ("t", "transfer"))
        }}))
    return run


def test_page_from_run_dirs(mr, tmp_path):
    run = _toy_run(tmp_path)
    out = tmp_path / "docs" / "results.md"
    assert mr.main([str(run), "--out", str(out)]) == 0
    page = out.read_text()
    # OT - entropy SD: (-0.10 + -0.06) / 2 = -0.080, s = 0.0283, se = 0.02, t_{1, 0.975} = 12.706:
    # [-0.334, +0.174]; t = -4 on 1 df: p = 0.156; Wilcoxon n = 2: p = 2 / 2**2
    assert "SD -0.080 [-0.334, +0.174] (OT lower on 2/2 seeds; t-test p = 0.16; Wilcoxon p = 0.5)" in page
    assert "No SD difference is shown" in page
    # no study declared: said so, and the software versions come from this interpreter
    assert "These runs declare no `study:` section" in page
    assert "Software (the runs recorded none; read from the interpreter that wrote this page)" in page
    assert "](results/paired_toy-study.png)" in page and (tmp_path / "docs" / "results" / "paired_toy-study.png").is_file()
    # union macro-F1: teachers 0.41 (a) / 0.41 (b) -> weakest is the first; students 0.41 too: not above
    assert "above the weakest teacher's (`teacher:a`): 0 of 2." in page
    assert "compute time 6.0 min summed over seeds and stages (local 2.0, distill 4.0 min)" in page
    assert "| a | local | 7 | 1 | 2 | 1: 7 |" in page
    assert "| `student:ot` | 0, 0 |" in page
    # val loss 0.5 -> 0.4 (seed 1) and 0.5 -> 0.6 (seed 2)
    assert "| `student:ot` | 0.500 ± 0.000 | 0.500 ± 0.141 | 1/2 seeds |" in page
    # each results.json names teacher:b, but both score 0.4 on the union: the page takes the
    # best mean, the first on a tie
    assert "| `teacher:a` (best single teacher) |" in page
    assert (tmp_path / "docs" / "results" / "toy-study" / "plots" / "macro_f1.png").is_file()
    assert "](results/toy-study/plots/macro_f1.png)" in page


def test_config_file_finds_the_shipped_study_config_and_its_header(mr):
    path, comment = mr.config_file("study-goemotions")
    assert path.as_posix() == "configs/study/goemotions.yaml"
    assert comment.startswith("Study (issue 14), GoEmotions") and "ekman_mapping.json" in comment
    assert mr.config_file("no-such-config-name") is None


def test_missing_results_is_a_clear_error(mr, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no results.json"):
        mr.main([str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")])


def _sens_results(seed: int, sd: dict[str, float], f1: dict[str, float]) -> dict:
    """Test rows fixed; val rows with the given union SD and macro-F1 per student."""
    students = list(sd)
    models = [{"id": f"student:{s}", "kind": "student", "name": s, "path": f"students/{s}", "best_epoch": 3,
               "method": {"loss": "ot"}} for s in students]
    sets = [{"name": "a", "kind": "local", "domains": ["a"], "n": 10},
            {"name": "b", "kind": "local", "domains": ["b"], "n": 10},
            {"name": "union", "kind": "union", "domains": ["a", "b"], "n": 20}]

    def rows(val: bool) -> list[dict]:
        return [{"model": f"student:{s}", "test_set": t["name"], "n": t["n"], "accuracy": 0.5,
                 "macro_f1": (f1[s] if val else 0.4) + 0.001 * seed, "semantic_distance": (sd[s] if val else 0.8) + 0.01 * seed,
                 "expected_cost": 1.0} for s in students for t in sets]

    return {"format": "knot.results", "version": 1, "name": "toy-sens", "label_names": ["1", "2", "3"],
            "test_sets": sets, "models": models, "baselines": {}, "rows": rows(False),
            "validation": {"split": "val", "rows": rows(True)}, "confusion": {}, "missing": []}


def test_sensitivity_section_chooses_on_validation_only(mr, tmp_path):
    run = tmp_path / "runs" / "toy-sens"
    cfg = ExperimentConfig.from_dict({
        "name": "toy-sens", "seeds": [1, 2, 3], "task": {"geometry": "uniform", "labels": ["1", "2", "3"]},
        "data": {"domains": [
            {"name": n, "role": r, "sources": [{"reader": "csv", "path": f"{n}.csv", "text": "text", "label": "label"}]}
            for n, r in (("a", "local"), ("b", "local"), ("t", "transfer"))]},
        "evaluate": {"val": True},
        "distill": {"methods": [{"name": "ot", "loss": "ot"}, {"name": "ot-lr", "loss": "ot", "lr": 3e-3},
                                {"name": "ot-t2", "loss": "ot", "temperature": 2.0},
                                {"name": "ot-p2", "loss": "ot", "cost_power": 2}]},
    })
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    for seed in (1, 2, 3):
        d = run / f"seed-{seed}"
        d.mkdir()
        # val: ot-lr lowers SD on every seed with equal F1 -> chosen; ot-t2 lowers SD more but
        # loses macro-F1 on every seed -> not chosen; ot-p2 mixed
        sd = {"ot": 0.80, "ot-lr": 0.75, "ot-t2": 0.70, "ot-p2": 0.80 + (0.02 if seed == 2 else -0.02)}
        f1 = {"ot": 0.40, "ot-lr": 0.40, "ot-t2": 0.30, "ot-p2": 0.40}
        (d / "results.json").write_text(json.dumps(_sens_results(seed, sd, f1)))
        (d / "stages.json").write_text(json.dumps({f"distill:{s}": {
            "seconds": 30.0, "finished": "2026-01-01T10:00:00", "summary": {"students": {s: {
                "initial_val": {"loss": 0.5}, "best_metrics": {"loss": 0.4 if s != "ot" or seed == 1 else 0.6}}}}}
            for s in sd}))
    lines, summary = mr.sensitivity_section(run)
    text = "\n".join(lines)
    assert summary["chosen"] == "ot-lr"
    assert "| `ot-lr` | lr: 0.003 | +0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] | -0.050 [-0.050, -0.050] | 3/3 seeds |" in text
    assert "| `ot` | – | – | – | – | 1/3 seeds |" in text
    assert "temperature: 2.0" in text and "cost_power: 2" in text
    # the test figures of the chosen setting, once: equal test rows -> 0 difference
    assert "Chosen on validation: `ot-lr` (lr: 0.003). Its test figures, reported once:" in text
    assert summary["test"]["semantic_distance"]["mean"] == 0.0
    tally = "\n".join(mr._knob_tally([summary]))
    assert "| `ot-t2` | 1 / 0 of 1 tasks | 0 / 1 of 1 tasks | 0 / 0 of 1 tasks | 3/3 (task, seed) runs |" in tally
    assert tally.endswith("Chosen on validation, per task: toy-sens: `ot-lr` (lr: 0.003).")

    # a run without val rows is refused with a clear message
    for seed in (1, 2, 3):
        p = run / f"seed-{seed}" / "results.json"
        res = json.loads(p.read_text())
        res.pop("validation")
        p.write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="evaluate.val: true"):
        mr.sensitivity_section(run)


def test_gold_metrics_are_compared_where_every_union_row_has_them(mr):
    r1, r2 = _results(0.0, 0.7, 0.8), _results(0.0, 0.6, 0.8)
    assert [k for k, _, _ in mr.metrics_of([r1, r2])] == ["accuracy", "macro_f1", "semantic_distance", "expected_cost"]
    for r, w in ((r1, 0.30), (r2, 0.20)):
        for row in r["rows"]:
            row["w1_gold"] = w if row["model"] == "student:ot" else 0.35
    assert "w1_gold" in [k for k, _, _ in mr.metrics_of([r1, r2])]
    p = mr.paired([r1, r2], "student:ot", "student:entropy", "union", metrics=mr.metrics_of([r1, r2]))
    assert p["w1_gold"]["mean"] == pytest.approx(-0.10) and p["w1_gold"]["better"] == 2
    assert "W1 to humans no difference shown (2 better, 0 worse of 2;" in mr.verdict(p)  # 2 seeds: t on 1 df


def test_a_metric_missing_on_one_seed_drops_that_metric_not_the_comparison(mr):
    r1, r2 = _results(0.0, 0.7, 0.8), _results(0.0, 0.6, 0.8)
    for r in (r1, r2):
        for row in r["rows"]:
            row["w1_gold"], row["spearman_gold"] = 0.3, 0.5
    next(row for row in r2["rows"] if row["model"] == "student:ot" and row["test_set"] == "union")["spearman_gold"] = None
    p = mr.paired([r1, r2], "student:ot", "student:entropy", "union", metrics=mr.metrics_of([r1, r2]))
    assert "w1_gold" in p and "spearman_gold" not in p and "semantic_distance" in p
    lines, found = mr._paired_table([r1, r2], "union", best="teacher:a")
    assert ("student:ot", "student:entropy") in found and ("student:ot", mr.BEST) in found
    assert any("`student:ot` − `teacher:a`" in line for line in lines)


STUDY = {"primary": {"metric": "semantic_distance", "a": "student:ot", "b": "student:entropy", "tasks": ["toy-study"]},
         "families": [{"name": "geometry controls", "comparisons": [["student:ot", "student:ot-permuted"]],
                       "metrics": ["semantic_distance"]}],
         "sensitivity_rule": {"name": "sd_better_f1_not_worse"},
         "confirmation": {"seeds": [11, 12, 13], "students": ["ot", "entropy"]}}


def test_declared_rule_is_applied_and_both_rules_shown(mr):
    same = {"mean": 0.0, "reading": "no difference shown"}
    comps = {"x": {"semantic_distance": {"mean": -0.02, "reading": "better"}, "macro_f1": same, "accuracy": same},
             "v": {"semantic_distance": {"mean": -0.04, "reading": "better"}, "macro_f1": same,
                   "accuracy": {"mean": -0.02, "reading": "worse"}}}
    # the last study's case: the earlier rule takes the accuracy-worse variant, the published one does not
    assert mr.apply_rule("sd_better_f1_not_worse", comps) == "v"
    assert mr.apply_rule("sd_better_acc_f1_w1_not_worse", comps) == "x"
    with pytest.raises(SystemExit, match="expected one of"):
        mr.apply_rule("best_on_test", comps)


def test_study_declaration_hash_families_predictions_and_confirmation(mr, tmp_path):
    from knot.evaluation import save_predictions
    from knot.layout import RunLayout

    run = _toy_run(tmp_path, study=STUDY, seeds=(1, 2, 3), sds=((0.0, 0.70, 0.80), (0.0, 0.66, 0.72), (0.0, 0.6, 0.71)))
    from knot.config import load_config

    cfg = load_config(run / "config.yaml")
    sha = cfg.study.sha256()
    np_random = np.random.default_rng(0)
    for seed in (1, 2, 3):
        lay = RunLayout(run / f"seed-{seed}")
        res = json.loads(lay.results_json.read_text())
        res["study_sha256"] = sha
        res["environment"] = {"knot": "0.1", "knot_commit": "abc1234", "python": "3.11", "torch": "2.13",
                              "numpy": "2.4", "scipy": "1.17", "transformers": "5.25", "torch_threads": 1}
        lay.results_json.write_text(json.dumps(res))
        y = {"a": [0, 1, 2, 0, 1, 2, 0, 1, 2, 0], "b": [2, 1, 0, 2, 1, 0, 2, 1, 0, 1]}
        for mid in ("student:ot", "student:entropy"):
            probs = {d: np_random.dirichlet([1, 1, 1], size=10) for d in y}
            save_predictions(lay.predictions(mid), mid, ["1", "2", "3"], {"test": probs}, {"test": y})
    out = tmp_path / "docs" / "results.md"
    assert mr.main([str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert f"sha256 `{sha}`" in page and "name: sd_better_f1_not_worse" in page
    assert "Families (Holm within each" in page and "primary (1 comparisons)" in page
    assert "Rule change in the last study" in page and "`ot-bias` on ERC and VADER" in page
    assert "Software (recorded by the runs in results.json `environment`, first seed): knot 0.1 (commit abc1234)" in page
    primary = next(line for line in page.splitlines() if line.startswith("| toy-study |"))
    assert "no per-item predictions" not in primary and primary.count("[") == 2  # t interval and two-level
    # a changed declaration after the run is refused
    res = json.loads((run / "seed-1" / "results.json").read_text())
    res["study_sha256"] = "0" * 64
    (run / "seed-1" / "results.json").write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="the declaration changed after the run"):
        mr.main([str(run), "--out", str(out)])


def _val_task(sd: dict[str, float], f1: dict[str, float], name: str = "study-vader", seeds=(1, 2, 3)) -> dict:
    """A comparison task (three seeds) whose val rows have the given union SD and macro-F1."""
    from knot.config import load_config

    cfg = load_config(ROOT / "configs" / "study" / "vader.yaml")
    cfg.name = name
    return {"cfg": cfg, "run": Path("runs") / name, "union": "union",
            "results": [_sens_results(seed, sd, f1) for seed in seeds]}


def test_the_confirmed_setting_is_chosen_on_validation_with_its_controls(mr, tmp_path):
    study = _val_task({}, {})["cfg"].study
    sd = {"ot": 0.80, "wkl": 0.80, "ot-kl": 0.75, "ot-learned": 0.70, "ot-head": 0.81,
          "kl": 0.78, "entropy": 0.77, "feddf": 0.78, "dsfl": 0.76}
    f1 = {n: 0.40 for n in sd} | {"ot-learned": 0.30}  # the lowest val SD, but a worse val macro-F1
    lines, choice = mr.validation_choice(_val_task(sd, f1), study)
    assert choice["chosen"] == "ot-kl" and choice["best_kl"] == "dsfl"
    assert choice["choices"] == {"sd_better_acc_f1_w1_not_worse": "ot-kl", "sd_better_f1_not_worse": "ot-kl"}
    text = "\n".join(lines)
    assert "| `ot-learned` | +0.000 [+0.000, +0.000] equal, Holm p 1 | -0.100 [-0.100, -0.100] worse, Holm p " in text
    assert "the lowest, `dsfl`, is confirmed." in text
    d = mr.confirm_config_dicts([choice], study)["study-vader-confirm"]
    assert d["seeds"] == study.confirmation.seeds and d["seed"] == study.confirmation.seeds[0]
    methods = {m["name"]: m for m in d["distill"]["methods"]}
    assert list(methods) == ["ot", "entropy", "ot-permuted", "ot-uniform", "ot-kl", "ot-kl-permuted",
                             "ot-kl-uniform", "dsfl"]
    # the OT+KL student's own controls: its loss and options under the controls' geometries
    assert methods["ot-kl-permuted"] == {**methods["ot-kl"], "name": "ot-kl-permuted",
                                         "geometry": methods["ot-permuted"]["geometry"]}
    paths = mr.write_confirm_configs([choice], study, tmp_path / "confirm")
    from knot.config import load_config

    assert load_config(paths[0]).study.sha256() == study.sha256()  # the same declaration
    # a learned-cost student shares ot's loss, so ot-permuted and ot-uniform are its controls;
    # entropy as the best KL-family student adds nothing
    lines, choice = mr.validation_choice(_val_task(sd | {"entropy": 0.70}, f1 | {"ot-learned": 0.40}), study)
    assert choice["chosen"] == "ot-learned" and choice["best_kl"] == "entropy"
    assert [m["name"] for m in mr.confirm_config_dicts([choice], study)["study-vader-confirm"]["distill"]["methods"]] \
        == ["ot", "entropy", "ot-permuted", "ot-uniform", "ot-learned"]
    # no candidate better than ot on val: ot alone
    lines, choice = mr.validation_choice(_val_task(sd | {"ot-kl": 0.80, "ot-learned": 0.80}, f1), study)
    assert choice["chosen"] is None and "`ot` alone" in "\n".join(lines)
    # a declaration without candidates confirms its students alone (no val rows needed)
    bare = type(study).from_dict({**study.to_dict(), "confirmation": {"seeds": [7, 8], "students": ["ot", "entropy"]}})
    task = _val_task(sd, f1)
    for r in task["results"]:
        r.pop("validation")
    lines, choice = mr.validation_choice(task, bare)
    assert lines == [] and [m["name"] for m in mr.confirm_config_dicts([choice], bare)["study-vader-confirm"]
                            ["distill"]["methods"]] == ["ot", "entropy"]
    # a comparison config without the controls: a clear error, not a KeyError
    with pytest.raises(SystemExit, match="need the students"):
        mr.controls_of("ot-kl", {"ot": {"loss": "ot"}, "ot-kl": {"loss": "ot_kl"}})
    # val rows are required
    task = _val_task(sd, f1)
    for r in task["results"]:
        r.pop("validation")
    with pytest.raises(SystemExit, match="evaluate.val: true"):
        mr.validation_choice(task, study)


def test_confirmation_table_reads_the_primary_and_the_goal_family_of_the_confirmation_runs(mr, tmp_path):
    study = {**STUDY, "families": [{"name": "goal", "tasks": ["toy-study-confirm"],
                                    "comparisons": [["student:ot", "student:entropy"]], "metrics": ["macro_f1"]},
                                   {"name": "other", "tasks": ["toy-study"],
                                    "comparisons": [["student:ot", "student:entropy"]], "metrics": ["accuracy"]}]}
    run = _toy_run(tmp_path, study=study, name="toy-study-confirm", seeds=(11, 12, 13),
                   sds=((0.0, 0.70, 0.80), (0.0, 0.66, 0.75), (0.0, 0.6, 0.71)))
    task = mr.load_task(run)
    fams = dict(mr.apply_families([task], task["cfg"].study))
    # the primary is read in a confirmation run of a primary task; "other" covers another run only
    assert fams["primary"] == 1 and fams["goal"] == 1 and "other" not in fams
    lines = "\n".join(mr.confirmation_lines([task], task["cfg"].study))
    assert "## Confirmation on fresh seeds" in lines
    row = next(x for x in lines.splitlines() if x.startswith("| toy-study-confirm | `student:ot` − `student:entropy` | SD |"))
    assert "| -0.1000 [" in row and "(primary, 1)" in row and row.endswith("| better |")
    assert "no per-item" not in row and "| macro-F1 |" in lines and "(goal, 1)" in lines


def test_goal_check_reads_a_students_own_controls_where_the_run_trained_them(mr):
    res = [_results(0.0, sd, 0.80) for sd in (0.70, 0.71, 0.69)]
    _with_students(res, {"ot-permuted": [0.50, 0.51, 0.49], "ot-uniform": [0.50, 0.51, 0.49],
                         "ot-kl": [0.60, 0.61, 0.62], "ot-kl-permuted": [0.75, 0.761, 0.772],
                         "ot-kl-uniform": [0.74, 0.7505, 0.761]})
    below = lambda task, a, b: {"ci_low": -0.2, "ci_high": -0.01}  # noqa: E731
    ok, why = mr.goal_check(_task(mr, res), two_level=below)
    # ot-kl is above ot-permuted and ot-uniform, but below its own controls: met against those
    assert ok and "met by `student:ot-kl`" in why and "`ot-kl-permuted` and `ot-kl-uniform`" in why


def test_geometry_controls_are_compared(mr):
    r = [_results(0.0, 0.7, 0.8) for _ in range(3)]
    for i, res in enumerate(r):
        res["models"].append({"id": "student:ot-permuted", "kind": "student", "name": "ot-permuted",
                              "path": "students/ot-permuted", "best_epoch": 1})
        res["rows"] += [{**row, "model": "student:ot-permuted", "semantic_distance": 0.75 + 0.001 * i,
                         "mean_entropy": 0.9}
                        for row in res["rows"] if row["model"] == "student:ot"]
        for row in res["rows"]:
            row.setdefault("mean_entropy", 0.8)
    found = mr.compare_all(r, "union")
    p = found[("student:ot", "student:ot-permuted")]
    assert p["semantic_distance"]["mean"] == pytest.approx(-0.051) and p["semantic_distance"]["reading"] == "better"
    assert p["mean_entropy"]["mean"] == pytest.approx(-0.1)
    lines, _ = mr._paired_table(r, "union", found=found)
    assert any("geometry control" in line and "Δ" not in line for line in lines)
    assert "mean entropy" in lines[0]


def _with_students(results: list[dict], sds: dict[str, list[float]], f1: dict[str, float] | None = None) -> list[dict]:
    """Add students (union SD per seed from ``sds``; other rows copied from ot) to each seed's results."""
    for i, res in enumerate(results):
        ot_rows = [row for row in res["rows"] if row["model"] == "student:ot"]
        for name, per_seed in sds.items():
            mid = f"student:{name}"
            res["rows"] = [row for row in res["rows"] if row["model"] != mid]
            if mid not in {m["id"] for m in res["models"]}:
                res["models"].append({"id": mid, "kind": "student", "name": name, "path": f"students/{name}", "best_epoch": 1})
            res["rows"] += [{**row, "model": mid, "semantic_distance": per_seed[i],
                             "macro_f1": row["macro_f1"] + (f1 or {}).get(name, 0.0)} for row in ot_rows]
    return results


def _task(mr, results):
    found = mr.compare_all(results, "union")
    mr.apply_families([{"cfg": type("C", (), {"name": "toy"})(), "found": found}], None)
    return {"cfg": type("C", (), {"name": "toy"})(), "results": results, "union": "union", "found": found,
            "best_kl": mr.best_of(results, "union", mr.FAMILIES["KL"])}


def test_family_winner_table_names_the_best_of_each_family_and_the_margin(mr):
    # ot 0.70/0.71/0.69 (from _results, per seed below); wkl lower; dsfl the best KL member
    res = [_results(0.0, sd, 0.80) for sd in (0.70, 0.71, 0.69)]
    _with_students(res, {"wkl": [0.60, 0.62, 0.61], "dsfl": [0.75, 0.76, 0.74], "kl": [0.79, 0.80, 0.78],
                         "uld": [0.90, 0.90, 0.90], "sord": [0.65, 0.66, 0.70]})
    task = _task(mr, res)
    assert task["best_kl"] == "student:dsfl"
    w = mr.family_winner(task)
    assert w["bests"] == {"OT": "student:wkl", "KL": "student:dsfl", "label-order-free": "student:uld",
                          "SORD": "student:sord"}
    assert (w["winner"], w["runner_up"]) == ("OT", "SORD")
    # wkl - sord per seed: -0.05, -0.04, -0.09 -> mean -0.06; runner-up mean SD 0.67: -9.0 %
    line = next(l for l in mr.family_lines([task]) if l.startswith("| toy |"))
    assert "| `student:wkl` (0.6100) | `student:dsfl` (0.7500) |" in line
    assert "| OT | -0.0600 [" in line and "| -9.0 % |" in line


def test_goal_check_met_and_not_met_with_the_reason(mr, tmp_path):
    res = [_results(0.0, sd, 0.80) for sd in (0.70, 0.71, 0.69)]
    # ot-kl: below the best KL-family student (entropy, 0.80) and both controls by an almost constant
    # margin on every seed, so that each reading survives Holm over the page's comparisons
    _with_students(res, {"kl": [0.80, 0.811, 0.822], "ot-permuted": [0.75, 0.761, 0.772],
                         "ot-uniform": [0.74, 0.7505, 0.761], "ot-kl": [0.60, 0.61, 0.62]})
    below = lambda task, a, b: {"ci_low": -0.2, "ci_high": -0.01}  # noqa: E731
    ok, why = mr.goal_check(_task(mr, res), two_level=below)
    assert ok and "met by `student:ot-kl`" in why
    # a two-level interval that includes 0 fails it, and the reason says so
    ok, why = mr.goal_check(_task(mr, res), two_level=lambda task, a, b: {"ci_low": -0.1, "ci_high": 0.01})
    assert not ok and "two-level interval [-0.1000, +0.0100] includes 0" in why
    # a run folder without per-item predictions: the default two-level bootstrap cannot run
    run = _toy_run(tmp_path, seeds=(1, 2, 3), sds=((0.0, 0.7, 0.8),) * 3)
    for seed, r in zip((1, 2, 3), res):
        (run / f"seed-{seed}" / "results.json").write_text(json.dumps(r))
    task = mr.load_task(run)
    mr.apply_families([task], None)
    ok, why = mr.goal_check(task)
    assert not ok and "no per-item predictions" in why
    # a worse macro-F1 than the best KL-family student fails it too
    _with_students(res, {"ot-kl": [0.60, 0.61, 0.62]}, f1={"ot-kl": -0.05})
    ok, why = mr.goal_check(_task(mr, res), two_level=below)
    assert not ok and "macro-F1 lower than `student:entropy`" in why
    # without the controls: not met, and which comparison is missing is named
    bare = [_results(0.0, sd, 0.80) for sd in (0.70, 0.71, 0.69)]
    ok, why = mr.goal_check(_task(mr, _with_students(bare, {"kl": [0.80, 0.811, 0.822]})), two_level=below)
    assert not ok and "no student:ot-permuted in this run" in why
    lines = mr.goal_lines([_task(mr, res)], "toy", two_level=below)
    assert "- **toy**: not met:" in "\n".join(lines) and lines[-2] == "Met on 0 of 1 tasks: the goal is not met."


def test_sensitivity_variants_of_another_base_are_read_against_it(mr):
    methods = {"ot": {"loss": "ot"}, "ot-kl": {"loss": "ot_kl", "options": {"lam": 0.5}},
               "ot-kl-lam0.25": {"loss": "ot_kl", "options": {"lam": 0.25}}, "ot-t2": {"loss": "ot", "temperature": 2}}
    bases = mr.sensitivity_bases(methods, {"ot": {"loss": "ot"}, "ot-kl": {"loss": "ot_kl", "options": {"lam": 0.5}}})
    assert bases == {"ot", "ot-kl"}
    assert mr.base_of("ot-kl-lam0.25", bases) == "ot-kl" and mr.base_of("ot-t2", bases) == "ot"
    # a student changed from its comparison-config definition is a variant, not a base
    assert mr.sensitivity_bases(methods, {"ot-kl": {"loss": "ot_kl", "options": {"lam": 0.75}}}) == {"ot"}


def test_geometry_lines_say_whether_the_label_order_helps(mr):
    res = [_results(0.0, sd, 0.80) for sd in (0.70, 0.71, 0.69)]
    # ot (0.70/0.71/0.69) below ot-permuted on every seed, above ot-uniform on every seed
    _with_students(res, {"ot-permuted": [0.75, 0.761, 0.742], "ot-uniform": [0.60, 0.612, 0.589]})
    text = "\n".join(mr.geometry_lines([_task(mr, res)]))
    assert "| toy | SD | -0.051 [" in text
    assert "mixed: lower than `ot-permuted`, higher than `ot-uniform` |" in text
    _with_students(res, {"ot-uniform": [0.75, 0.761, 0.742]})
    assert "lower than both controls: the label geometry helps |" in "\n".join(mr.geometry_lines([_task(mr, res)]))
    _with_students(res, {"ot-permuted": [0.60, 0.612, 0.589], "ot-uniform": [0.60, 0.612, 0.589]})
    assert "higher than both controls: a cost without" in "\n".join(mr.geometry_lines([_task(mr, res)]))
    # without the controls: no section
    assert mr.geometry_lines([_task(mr, [_results(0.0, sd, 0.80) for sd in (0.70, 0.71, 0.69)])]) == []


def test_a_comparison_named_twice_is_read_once_in_its_declared_family(mr):
    res = [_results(0.0, sd, 0.80) for sd in (0.70, 0.71, 0.69)]
    _with_students(res, {"kl": [0.75, 0.761, 0.742]})
    found = mr.compare_all(res, "union")
    cfg = type("C", (), {"name": "toy"})()
    task = {"cfg": cfg, "found": found, "best_kl": mr.best_of(res, "union", mr.FAMILIES["KL"]), "best": None}
    assert task["best_kl"] == "student:kl"
    study = ExperimentConfig.from_dict({
        "name": "toy", "task": {"geometry": "uniform", "labels": ["1", "2", "3"]},
        "data": {"domains": [{"name": n, "role": r, "sources": [{"reader": "csv", "path": f"{n}.csv", "text": "text", "label": "label"}]}
                             for n, r in (("a", "local"), ("t", "transfer"))]},
        "study": {**STUDY, "primary": {**STUDY["primary"], "tasks": ["toy"]},
                  "families": [{"name": "goal", "comparisons": [["student:ot", mr.BEST_KL]], "metrics": ["semantic_distance"]}]},
    }).study
    fams = dict(mr.apply_families([task], study))
    alias = found[("student:ot", "student:kl")]["semantic_distance"]
    assert alias is found[("student:ot", mr.BEST_KL)]["semantic_distance"] and alias["family_name"] == "goal"
    assert fams["goal"] == 1

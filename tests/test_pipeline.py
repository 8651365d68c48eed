"""`knot run`: the whole pipeline on a tiny corpus, skip/resume, overrides, report; CLI errors.

The corpus is written by the tests (generic JSON lines) and the models are the random-init
``tiny`` encoder, so everything runs offline in seconds. One test runs the shipped quick
config on the real data (tiny encoder, a few steps), skipped when the data is absent.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers import write_pipeline_case
from knot.cli import app
from knot.config import load_config
from knot.layout import RunLayout
from knot.pipeline import STAGE_NAMES, read_stage_log, run_pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    return (*write_pipeline_case(base), base)


@pytest.fixture(scope="module")
def finished(tiny):
    cfg_path, root, base = tiny
    out = base / "run"
    run_pipeline(load_config(cfg_path), out, data_root=root)
    return out


def test_run_writes_every_artefact(finished):
    layout = RunLayout(finished)
    log = read_stage_log(layout)
    assert set(log) == {
        "prepare", "local:books", "local:films", "global", "soft-labels", "bias",
        "distill:ot", "distill:entropy", "evaluate", "report",
    }
    assert layout.config.is_file() and "tiny-pipeline" in layout.config.read_text()
    results = json.loads(layout.results_json.read_text())
    models = {m["id"] for m in results["models"]}
    assert models == {"teacher:books", "teacher:films", "global", "student:ot", "student:entropy"}
    sets = {t["name"] for t in results["test_sets"]}
    assert sets == {"books", "films", "mixed", "union"}
    # every model on every test set
    assert {(r["model"], r["test_set"]) for r in results["rows"]} == {(m, s) for m in models for s in sets}
    report = layout.report.read_text()
    for mid in models:
        assert f"`{mid}`" in report
    for png in ("semantic_distance.png", "macro_f1.png", "training_curves.png"):
        assert (layout.plots / png).stat().st_size > 1000
        assert f"plots/{png}" in report


def test_rerun_skips_every_finished_stage(finished, tiny, monkeypatch):
    import knot.teachers

    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(knot.teachers, "train_teacher", boom)
    before = read_stage_log(RunLayout(finished))
    run_pipeline(load_config(tiny[0]), finished, data_root=tiny[1])
    after = read_stage_log(RunLayout(finished))
    assert {k: v["hash"] for k, v in after.items()} == {k: v["hash"] for k, v in before.items()}
    assert all(after[k]["finished"] == before[k]["finished"] for k in before if k != "prepare")


def test_killed_run_resumes_after_the_last_finished_stage(tiny, monkeypatch):
    import knot.teachers

    cfg_path, root, base = tiny
    out = base / "killed"
    real = knot.teachers.train_teacher
    calls = []

    def dies_on_films(run, role="local", domain=None, resume=False):
        calls.append(domain or role)
        if domain == "films":
            raise KeyboardInterrupt  # the run is killed during the second teacher
        return real(run, role=role, domain=domain, resume=resume)

    monkeypatch.setattr(knot.teachers, "train_teacher", dies_on_films)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_config(cfg_path), out, data_root=root)
    assert set(read_stage_log(RunLayout(out))) == {"prepare", "local:books"}

    calls.clear()
    monkeypatch.setattr(knot.teachers, "train_teacher", lambda *a, **k: (calls.append(k.get("domain") or k.get("role")), real(*a, **k))[1])
    run_pipeline(load_config(cfg_path), out, data_root=root, stages=["prepare", "local", "global"])
    assert calls == ["films", "global"]  # books was not trained again
    log = read_stage_log(RunLayout(out))
    assert "soft-labels" not in log  # not selected by --stages


def test_override_reruns_only_what_depends_on_it(finished, tiny):
    cfg = load_config(tiny[0], ["distill.methods.1.temperature=2.0"])
    before = read_stage_log(RunLayout(finished))
    run_pipeline(cfg, finished, data_root=tiny[1])
    after = read_stage_log(RunLayout(finished))
    changed = {k for k in after if after[k]["hash"] != before[k]["hash"]}
    assert changed == {"distill:entropy", "evaluate", "report"}
    rerun = {k for k in after if after[k]["finished"] != before[k]["finished"]} - {"prepare"}
    assert rerun == changed


def test_unknown_stage_is_an_error(tiny):
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline(load_config(tiny[0]), tiny[2] / "x", data_root=tiny[1], stages=["teachers"])


def test_cli_run_prints_the_results_table(tiny):
    cfg_path, root, base = tiny
    out = base / "cli-run"
    res = runner.invoke(app, ["run", str(cfg_path), "--out", str(out), "--data-root", str(root),
                              "--set", "distill.methods=[{name: ot, loss: ot}]"])
    assert res.exit_code == 0, res.output
    assert "student:ot" in res.output and "report:" in res.output
    assert (out / "report.md").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "local.epoch=3"], "local.epoch: unknown key"),
        (["--set", "local.epochs=many"], "local.epochs: expected an integer"),
        (["--set", "data.domains.0.sources.0.path=nowhere.jsonl"], "nowhere.jsonl"),
        (["--stages", "teachers"], "unknown stage"),
    ],
)
def test_cli_bad_input_exits_nonzero_naming_the_problem(tiny, args, message):
    cfg_path, root, base = tiny
    res = runner.invoke(app, ["run", str(cfg_path), "--out", str(base / "bad"), "--data-root", str(root), *args])
    assert res.exit_code != 0
    assert message in res.output


def test_missing_config_file_exits_nonzero(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["report"], ["data", "prepare"], ["data", "show"], ["train"], ["predict"],
     ["soft-labels"], ["bias"], ["distill"], ["evaluate"]],
)
def test_every_subcommand_explains_itself(command):
    res = runner.invoke(app, [*command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_stage_names_are_documented_in_help():
    res = runner.invoke(app, ["run", "--help"])
    for name in STAGE_NAMES:
        assert name in res.output


def test_seeds_aggregate_into_one_report(tiny):
    cfg_path, root, base = tiny
    cfg = load_config(cfg_path, ["seeds=[1, 2]", "distill.methods=[{name: ot, loss: ot}]",
                                 "local.epochs=1"])
    out = base / "seeds"
    run_pipeline(cfg, out, data_root=root)
    report = (out / "report.md").read_text()
    assert "2 run(s)" in report and "±" in report
    for seed in (1, 2):
        assert (out / f"seed-{seed}" / "results.json").is_file()
    # `knot report` on the run folder aggregates the same seeds
    res = runner.invoke(app, ["report", str(out), "--out", str(base / "seeds-report")])
    assert res.exit_code == 0, res.output
    assert "2 run(s)" in (base / "seeds-report" / "report.md").read_text()


@pytest.mark.realdata
@pytest.mark.parametrize("config", ["configs/sentiment-quick.yaml", "configs/erc-quick.yaml"])
def test_quick_config_end_to_end_on_real_data(data_root, tmp_path, config):
    """A shipped quick config on the real files, shrunk to a tiny encoder and a few steps."""
    base = load_config(config)
    n = len(base.data.domains)
    cfg = load_config(
        config,
        [
            "model.encoder=tiny", "model.max_length=32",
            "local.epochs=1", "local.max_steps=2", "global_model.epochs=1", "global_model.max_steps=2",
            "distill.train.epochs=1", "distill.train.max_steps=2", "bias.n_samples=8",
            *[f"data.domains.{i}.max_train=40" for i in range(n)],
            *[f"data.domains.{i}.max_val=20" for i in range(n)],
            *[f"data.domains.{i}.max_test=20" for i in range(n)],
        ],
    )
    out = tmp_path / "quick"
    run_pipeline(cfg, out, data_root=data_root)
    results = json.loads((out / "results.json").read_text())
    locals_ = [d.name for d in cfg.domains("local")]
    models = {m["id"] for m in results["models"]}
    assert models == {f"teacher:{d}" for d in locals_} | {"global"} | {f"student:{m.name}" for m in cfg.distill.methods}
    sets = {t["name"] for t in results["test_sets"]}
    assert sets == set(locals_) | {d.name for d in cfg.domains("global")} | {"union"}
    assert len(results["rows"]) == len(models) * len(sets)
    assert all(r["n"] > 0 and 0.0 <= r["accuracy"] <= 1.0 for r in results["rows"])
    assert (out / "report.md").is_file() and (out / "plots" / "macro_f1.png").is_file()

"""Distillation stage on a tiny synthetic task, plus the stage CLI commands.

The task: three classes (neg, neu, pos on a line) whose texts carry a class keyword among
neutral filler words, so a tiny random-init encoder learns it in a few epochs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from knot.cli import app
from knot.config import DistillMethod, ExperimentConfig
from knot.distill import consensus_eval_fn, make_loss_fn, select_methods, weight_rows
from knot.layout import RunLayout
from knot.run import RunContext
from knot.training import SelectionState
from knot.soft_labels import SoftLabels, texts_hash

from helpers import LABELS3, synthetic_rows, write_jsonl

LABELS = LABELS3


def make_config(data_root, domains: dict[str, str], **distill) -> ExperimentConfig:
    """One domain per (name, role); each source is a JSONL file written by the test."""
    return ExperimentConfig.from_dict(
        {
            "name": "tiny",
            "seed": 7,
            "device": "cpu",
            "task": {"geometry": {"neg": [-1.0], "neu": [0.0], "pos": [1.0]}},
            "data": {
                "root": str(data_root),
                "seed": 7,
                "domains": [
                    {"name": n, "role": r, "split": "random",
                     "sources": [{"reader": "jsonl", "path": f"{n}.jsonl", "text": "text", "label": "label"}]}
                    for n, r in domains.items()
                ],
            },
            "model": {"encoder": "tiny", "max_length": 16, "dropout": 0.0},
            "local": {"epochs": 4, "batch_size": 16, "lr": 2e-3},
            "global_model": {"epochs": 4, "batch_size": 16, "lr": 2e-3},
            "soft_labels": {"batch_size": 64},
            "bias": {"n_samples": 40, "length": 8},
            "distill": {"init": "scratch", "train": {"epochs": 6, "batch_size": 16, "lr": 3e-3}, **distill},
            "evaluate": {"batch_size": 64},
        }
    )


def write_teacher_soft_labels(layout, teachers, split, examples, geometry_labels, sizes) -> SoftLabels:
    """Teachers that are right: each puts 0.85-0.9 on the gold class, the rest spread."""
    n, t = len(examples), len(teachers)
    probs = np.zeros((n, t, 3), dtype=np.float32)
    for i, ex in enumerate(examples):
        y = geometry_labels.index(ex.label)
        for j in range(t):
            conf = 0.85 + 0.05 * j
            probs[i, j] = (1 - conf) / 2
            probs[i, j, y] = conf
    sl = SoftLabels(probs, teachers, geometry_labels, teacher_sizes=sizes, domain="transfer", split=split,
                    texts_sha256=texts_hash(e.text for e in examples))
    sl.save(layout.soft_labels, split)
    return sl


@pytest.fixture
def transfer_run(tmp_path):
    from knot.data import load_split, prepare_data

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "l1.jsonl", synthetic_rows(30, 1))
    write_jsonl(data / "l2.jsonl", synthetic_rows(30, 2))
    write_jsonl(data / "transfer.jsonl", synthetic_rows(60, 3))
    cfg = make_config(data, {"l1": "local", "l2": "local", "transfer": "transfer"})
    layout = RunLayout(tmp_path / "run")
    prepare_data(cfg, layout, data)
    splits = {s: load_split(layout.data, "transfer", s) for s in ("train", "val")}
    for s, examples in splits.items():
        write_teacher_soft_labels(layout, ["l1", "l2"], s, examples, LABELS, [30, 90])
    return cfg, layout, splits


def test_student_learns_from_right_teachers(transfer_run):
    """KL to the teacher mixture (the FedDF method of the default config) from scratch:
    the val loss falls and the student reaches the teachers' accuracy (1.0)."""
    from knot.distill import distill
    from knot.models import load, read_checkpoint_config

    cfg, layout, splits = transfer_run
    out = distill(RunContext(cfg, layout), method="feddf")

    info = out["students"]["feddf"]
    assert info["best_metrics"]["loss"] < 0.5 * info["initial_val"]["loss"]
    model = load(layout.student("feddf"))
    for split in ("train", "val"):
        examples = splits[split]
        probs = model.predict_proba([e.text for e in examples])
        gold = np.array([LABELS.index(e.label) for e in examples])
        assert (probs.argmax(axis=1) == gold).mean() == 1.0, split
    meta = read_checkpoint_config(layout.student("feddf"))["metadata"]
    assert (meta["role"], meta["method"]["loss"], meta["method"]["aggregate"], meta["init"]) == (
        "student", "kl", "mixture", "scratch")
    assert meta["n_train"] == len(splits["train"]) and meta["teachers"] == ["l1", "l2"]


def test_teacher_order_mismatch_stops_distillation(transfer_run):
    from knot.distill import distill

    cfg, layout, splits = transfer_run
    write_teacher_soft_labels(layout, ["l2", "l1"], "train", splits["train"], LABELS, [90, 30])
    with pytest.raises(ValueError, match=r"train.json: teacher order mismatch"):
        distill(RunContext(cfg, layout), method="feddf")


def test_stale_soft_labels_are_detected(transfer_run):
    from knot.distill import distill

    cfg, layout, splits = transfer_run
    write_teacher_soft_labels(layout, ["l1", "l2"], "train", splits["train"][:-1], LABELS, [30, 90])
    with pytest.raises(ValueError, match=r"made for other texts"):
        distill(RunContext(cfg, layout), method="feddf")


def test_loss_fn_reads_the_weights_of_the_batch_rows():
    from knot.geometry import LabelGeometry
    from knot.losses import distillation_loss

    g = LabelGeometry.from_mapping({"neg": [-1.0], "neu": [0.0], "pos": [1.0]})
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(4, 2)).astype(np.float32)
    w = np.array([0.25, 0.75])
    logits = torch.randn(4, 3)
    m = DistillMethod(name="x", loss="ot", aggregate="per_teacher")
    rows = np.array([[0.25, 0.75], [0.5, 0.5], [0.9, 0.1], [0.1, 0.9]])  # per example (bias weights)
    batch = {"target": torch.from_numpy(probs[[2, 0]]), "index": torch.tensor([2, 0])}  # a shuffled batch

    got = make_loss_fn(m, g, w)(logits, {"target": torch.from_numpy(probs), "index": torch.arange(4)})
    per_row = make_loss_fn(m, g, rows)(logits[[2, 0]], batch)

    expected = distillation_loss("ot", logits, torch.from_numpy(probs), torch.tensor(w, dtype=torch.float32), g)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    expected = distillation_loss("ot", logits[[2, 0]], batch["target"], weight_rows(rows, 4)[[2, 0]], g)
    assert float(per_row) == pytest.approx(float(expected), rel=1e-6)


def test_consensus_eval_uses_weighted_teacher_argmax():
    from knot.geometry import LabelGeometry

    g = LabelGeometry.from_mapping({"neg": [-1.0], "neu": [0.0], "pos": [1.0]})
    # two teachers disagree; teacher 1 weighs more -> consensus = its argmax (pos, then neg)
    probs = np.array([[[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]], [[0.0, 0.1, 0.9], [0.8, 0.2, 0.0]]])
    student = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert consensus_eval_fn(np.array([0.3, 0.7]))(student, probs, g)["accuracy"] == 1.0
    assert consensus_eval_fn(np.array([0.7, 0.3]))(student, probs, g)["accuracy"] == 0.0


def test_select_methods():
    cfg = ExperimentConfig()
    assert [m.name for m in select_methods(cfg)] == ["ot", "entropy", "feddf"]
    assert [m.name for m in select_methods(cfg, ["feddf"])] == ["feddf"]
    assert [m.name for m in select_methods(cfg, loss="kl")] == ["feddf"]
    made = select_methods(cfg, loss="ce")
    assert [(m.name, m.loss) for m in made] == [("ce", "ce")]
    with pytest.raises(ValueError, match=r"--method nope: not in distill.methods"):
        select_methods(cfg, "nope")


# --- CLI -------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.mark.parametrize("command", ["soft-labels", "bias", "distill", "evaluate"])
def test_cli_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "CONFIG" in result.output.upper()


def test_cli_reports_missing_teachers(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        "name: t\ndata:\n  domains:\n"
        "    - {name: l1, role: local, sources: [{reader: jsonl, path: l1.jsonl, text: text}]}\n"
        "    - {name: tr, role: transfer, sources: [{reader: jsonl, path: tr.jsonl, text: text}]}\n"
    )
    result = runner.invoke(app, ["soft-labels", str(cfg_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "no checkpoint for local teacher 'l1'" in result.output


def test_cli_rejects_bad_config_and_loss(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("name: t\ndistill:\n  methods:\n    - {name: x, loss: wasserstein}\n")
    result = runner.invoke(app, ["distill", str(cfg_path)])
    assert result.exit_code == 2 and "distill.methods[0].loss" in result.output
    result = runner.invoke(app, ["distill", str(cfg_path), "--loss", "mse"])
    assert result.exit_code == 2
    # the names come from the loss registry, not a list of their own
    assert "--loss: expected one of ce, entropy, kl, ot, ot_kl, sord, uld, got 'mse'" in result.output


@pytest.mark.parametrize("keep_initial", [True, False])
def test_keep_initial_decides_whether_the_start_competes(transfer_run, monkeypatch, keep_initial):
    """When the starting model is better on val (forced here), keep_initial keeps it (epoch 0);
    keep_initial false keeps the best trained epoch."""
    import dataclasses

    import knot.distill as kd

    cfg, layout, _ = transfer_run
    train = dataclasses.replace(cfg.distill.train, epochs=1)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, train=train, keep_initial=keep_initial))
    monkeypatch.setattr(SelectionState, "initial_wins", lambda *a, **k: True)
    info = kd.distill(RunContext(cfg, layout), method="feddf")["students"]["feddf"]
    assert info["best_epoch"] == (0 if keep_initial else 1)
    assert (info["best_metrics"] == info["initial_val"]) is keep_initial


def test_per_student_overrides_reach_training(transfer_run, monkeypatch):
    """A method's lr and cost_power replace the run-wide ones for that student only;
    unset overrides leave the method's dict (hence the stage hash) as before."""
    import dataclasses

    import knot.distill as kd
    from knot.distill import loss_geometry
    from knot.geometry import LabelGeometry

    cfg, layout, _ = transfer_run
    seen = {}
    real_fit = kd.fit

    def spy(model, loss_fn, train_loader, val_loader, train_cfg, **kw):
        seen[kw["metadata"]["name"]] = train_cfg.lr
        return real_fit(model, loss_fn, train_loader, val_loader, dataclasses.replace(train_cfg, epochs=1), **kw)

    monkeypatch.setattr(kd, "fit", spy)
    methods = [DistillMethod(name="a", loss="kl"), DistillMethod(name="b", loss="kl", lr=1e-5)]
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, methods=methods))
    kd.distill(RunContext(cfg, layout))
    assert seen == {"a": cfg.distill.train.lr, "b": 1e-5}

    assert set(DistillMethod().to_dict()) == set(DistillMethod(lr=None, init=None).to_dict())
    assert DistillMethod(lr=1e-3, teachers="local").to_dict()["teachers"] == "local"
    task = LabelGeometry.preset("sentiment5")
    squared = loss_geometry(DistillMethod(cost_power=2), task)
    assert squared.p == 2 and float(squared.cost[0, 4]) == 16.0 and float(task.cost[0, 4]) == 4.0


def test_local_teachers_only_drops_the_global_column():
    from knot.distill import method_weights

    probs = np.full((2, 3, 2), 0.5, dtype=np.float32)
    sl = SoftLabels(probs, ["a", "b", "global"], ["x", "y"], teacher_sizes=[1, 1, 2])
    uniform = method_weights(DistillMethod(weights="uniform", teachers="local"), sl, None, "global")
    assert uniform.tolist() == [0.5, 0.5, 0.0]
    assert method_weights(DistillMethod(weights="uniform", teachers="all"), sl, None, "global").tolist() == [1 / 3] * 3
    with pytest.raises(ValueError, match="no global teacher"):
        method_weights(DistillMethod(name="m", teachers="local"), sl, None, None)


@pytest.mark.parametrize("bad", [{"init": "random"}, {"lr": 0}, {"cost_power": 3}, {"teachers": "global"}])
def test_bad_overrides_are_config_errors(bad):
    from knot.errors import ConfigError

    with pytest.raises(ConfigError):
        DistillMethod(**bad)


def test_local_teachers_only_needs_a_global_domain(tmp_path):
    from knot.errors import ConfigError

    with pytest.raises(ConfigError, match="teachers: local, but data.domains has no global domain"):
        make_config(tmp_path, {"l1": "local", "l2": "local", "transfer": "transfer"},
                    methods=[{"name": "x", "loss": "ot", "teachers": "local"}])


def test_cost_power_applies_before_a_derived_geometry_is_scaled():
    """`scale: task` scales a derived geometry to the largest cost of the loss's own power."""
    from knot.distill import loss_geometry
    from knot.geometry import LabelGeometry

    task = LabelGeometry.preset("sentiment5")  # largest cost 4 (p = 1), 16 (p = 2)
    spec = {"derived": {"texts": {"1": "awful", "2": "bad", "3": "okay", "4": "good", "5": "great"}, "scale": "task"}}
    g1 = loss_geometry(DistillMethod(geometry=spec), task)
    g2 = loss_geometry(DistillMethod(geometry=spec, cost_power=2), task)
    assert (g1.p, g2.p) == (1, 2)
    assert float(g1.cost.max()) == pytest.approx(4.0) and float(g2.cost.max()) == pytest.approx(16.0)


def test_newer_students_train_and_the_schedule_is_applied(transfer_run):
    """ot_kl with a cosine schedule, sord, uld, sharpened mixture and a learned cost each
    train; the lam of every epoch is recorded; the learned cost is stored with the run."""
    import dataclasses

    from knot.distill import GEOMETRY_LOSS_FILE, distill
    from knot.geometry import LabelGeometry
    from knot.models import read_checkpoint_config

    cfg, layout, _ = transfer_run
    methods = [
        DistillMethod(name="wkl", loss="ot_kl", schedule={"kind": "cosine", "start": 1.0, "end": 0.0}),
        DistillMethod(name="sord", loss="sord", aggregate="mixture", options={"tau": 0.5}),
        DistillMethod(name="uld", loss="uld"),
        DistillMethod(name="dsfl", loss="kl", aggregate="mixture", sharpen=0.5),
        DistillMethod(name="learned", loss="ot", geometry={"learned": "soft_labels", "scale": "task"}),
    ]
    train = dataclasses.replace(cfg.distill.train, epochs=3)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, train=train, methods=methods))
    out = distill(RunContext(cfg, layout))["students"]

    for m in methods:
        info = out[m.name]
        assert np.isfinite(info["best_metrics"]["loss"]) and info["epochs_completed"] == 3, m.name

    def history(name):
        return [json.loads(line) for line in (layout.student(name) / "metrics.jsonl").read_text().splitlines()]

    assert [r.get("lam") for r in history("wkl")] == pytest.approx([1.0, 0.5, 0.0])
    assert "lam" not in history("sord")[0]
    stored = json.loads((layout.student("learned") / GEOMETRY_LOSS_FILE).read_text())
    assert stored["origin"]["learned"] == "soft_labels" and stored["source"] == "method"
    geo = LabelGeometry.from_dict(read_checkpoint_config(layout.student("learned"))["metadata"]["loss_geometry"])
    assert geo.cost.tolist() == stored["cost"] and float(geo.cost.max()) == pytest.approx(2.0)  # task's largest


def test_learned_head_geometry_reads_the_start_models_output_layer(transfer_run):
    from knot.distill import learned_inputs, loss_geometry
    from knot.geometry import LabelGeometry, head_cost
    from knot.models import build_model, class_weight_rows

    cfg, _, _ = transfer_run
    task = LabelGeometry.from_task(cfg.task)
    model = build_model(cfg.model, task)
    m = DistillMethod(name="wkd", loss="ot", geometry={"learned": "head", "kappa": 2.0})
    sl = SoftLabels(np.full((2, 2, 3), 1 / 3), ["a", "b"], LABELS)
    inputs = learned_inputs(m, sl, model, None)
    geo = loss_geometry(m, task, inputs)
    assert torch.equal(geo.cost, head_cost(class_weight_rows(model), kappa=2.0))
    assert geo.origin["kappa"] == 2.0 and not geo.has_coords
    assert learned_inputs(DistillMethod(), sl, model, None) == {}


def test_learned_head_geometry_needs_a_global_start(transfer_run):
    import dataclasses

    from knot.distill import distill

    cfg, layout, _ = transfer_run
    methods = [DistillMethod(name="wkd", loss="ot", geometry={"learned": "head"})]
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, methods=methods))
    with pytest.raises(ValueError, match="learned: head reads the global model's output layer"):
        distill(RunContext(cfg, layout))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"loss": "wasserstein"}, "loss: expected one of ce, entropy, kl, ot, ot_kl, sord, uld"),
        ({"loss": "kl", "sharpen": 0.5}, "sharpen: only with aggregate: mixture"),
        ({"loss": "kl", "aggregate": "mixture", "sharpen": 2.0}, "sharpen: expected a temperature"),
        ({"loss": "kl", "schedule": {"kind": "linear"}}, "schedule: loss 'kl' has no lam option"),
        ({"loss": "ot_kl", "schedule": {"kind": "step"}}, "schedule.kind: expected one of"),
        ({"loss": "ot_kl", "schedule": {"start": 1.5}}, "schedule.start: expected a number in"),
        ({"loss": "ot_kl", "schedule": {"every": 2}}, "schedule.every: unknown key"),
        ({"geometry": {"learned": "gold"}}, "geometry.learned: expected soft_labels or head"),
        ({"geometry": {"learned": "soft_labels", "kappa": 2}}, "kappa: only for learned: head"),
    ],
)
def test_newer_method_options_are_checked(bad, match):
    from knot.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        DistillMethod(**bad)


def test_newer_method_options_round_trip():
    m = DistillMethod(name="w", loss="ot_kl", options={"lam": 0.3}, schedule={"kind": "linear"},
                      geometry={"learned": "head", "kappa": 3})
    assert DistillMethod.from_dict(m.to_dict()) == m
    assert {"sharpen", "schedule"}.isdisjoint(DistillMethod().to_dict())  # unset: the stage hash is unchanged


def test_readme_examples_of_the_newer_methods_are_valid_methods():
    import re
    from pathlib import Path

    import yaml

    readme = Path(__file__).resolve().parents[1] / "README.md"
    section = readme.read_text(encoding="utf-8").split("### Newer distillation methods", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    methods = [DistillMethod.from_dict(m) for block in blocks for m in yaml.safe_load(block)]
    assert {m.loss for m in methods} == {"ot", "ot_kl", "kl", "sord", "uld"} and len(methods) == 6

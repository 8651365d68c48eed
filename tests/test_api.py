"""The Python API: ``knot.Run`` (stages as methods, typed results), ``knot.load`` (the
predictor contract), the lazy top-level names and the README's "Python API" example."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import knot
from knot.config import load_config
from knot.layout import RunLayout
from knot.pipeline import (
    BiasResult,
    DistillResult,
    EvaluateResult,
    PrepareResult,
    ReportResult,
    Run,
    SoftLabelsResult,
    TeachersResult,
    read_stage_log,
)
from knot.predictor import Predictor
from knot.utils import read_json

from helpers import write_pipeline_case

REPO = Path(__file__).resolve().parents[1]


def test_import_knot_is_light_and_the_top_level_names_are_lazy():
    code = "import sys, knot; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'knot')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert eval(out) == ["knot"]  # neither torch nor any knot submodule
    from knot.geometry import LabelGeometry
    from knot.losses import distillation_loss
    from knot.metrics import evaluate_probs
    from knot.ot import ot_cost

    assert knot.Run is Run and knot.LabelGeometry is LabelGeometry and knot.ot_cost is ot_cost
    assert knot.distillation_loss is distillation_loss and knot.evaluate_probs is evaluate_probs
    assert knot.load is __import__("knot.api").api.load
    assert {"Run", "load", "LabelGeometry"} <= set(knot.__all__) <= set(dir(knot))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        knot.nope  # noqa: B018


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """The tiny pipeline run stage by stage through the Run's methods."""
    base = tmp_path_factory.mktemp("api")
    cfg_path, root = write_pipeline_case(base)
    run = Run(cfg_path, base / "run", data_root=root)
    results = [
        run.prepare(),
        run.train_teachers("local"),
        run.train_teachers("global"),
        run.soft_labels(),
        run.bias(),
        run.distill(),
        run.evaluate(),
        run.report(),
    ]
    return run, results, cfg_path, root


def test_run_stage_methods_return_typed_results(staged):
    run, (prep, local, glob, soft, bias, students, ev, report), _, _ = staged

    assert isinstance(prep, PrepareResult) and prep.data == run.layout.data and len(prep.data_hash) == 64
    assert isinstance(local, TeachersResult) and local.role == "local"
    assert local.checkpoints == {d: run.layout.teacher(d) / "best" for d in ("books", "films")}
    assert isinstance(glob, TeachersResult) and list(glob.checkpoints) == ["global"]
    assert isinstance(soft, SoftLabelsResult) and soft.teachers == ["books", "films", "global"]
    counts = prep.manifest["domains"]["public"]["counts"]
    assert soft.n == {"train": counts["train"], "val": counts["val"]} and set(soft.teacher_metrics["train"]) == set(soft.teachers)
    assert isinstance(bias, BiasResult) and bias.path.is_file() and set(bias.distribution) == set(soft.teachers)
    assert isinstance(students, DistillResult) and list(students.checkpoints) == ["ot", "entropy"]
    assert all(p.is_dir() for p in students.checkpoints.values())
    assert isinstance(ev, EvaluateResult) and ev.path == run.layout.results_json
    assert 0.0 <= ev.row("student:ot")["macro_f1"] <= 1.0
    with pytest.raises(KeyError, match="no row for model 'student:nope'"):
        ev.row("student:nope")
    assert isinstance(report, ReportResult) and report.path == run.layout.report and report.path.is_file()


def test_run_shares_the_context_the_stages_used_to_rebuild(staged):
    run, *_ = staged

    assert run.geometry is run.geometry and run.geometry.labels == ["neg", "pos"]
    assert str(run.device) == "cpu" and run.feature_cache.root == run.layout.features
    assert [t.id for t in run.teachers()] == ["teacher:books", "teacher:films", "global"]
    model = run.load_model(run.layout.student("ot"))
    assert model.labels == ["neg", "pos"]


def test_run_is_built_from_a_path_a_dict_or_a_config_with_the_same_stage_hashes(staged, tmp_path):
    _, _, cfg_path, _ = staged
    cfg = load_config(cfg_path, ["local.epochs=1"])
    runs = [
        Run(cfg_path, tmp_path, overrides=["local.epochs=1"]),
        Run(cfg.to_dict(), tmp_path),
        Run(cfg, RunLayout(tmp_path)),
    ]

    inputs = [[(s.name, s.inputs, s.depends) for s in r.stages()] for r in runs]
    assert inputs[0] == inputs[1] == inputs[2]
    assert Run(cfg).root == Path("runs") / "tiny-pipeline"
    with pytest.raises(ValueError, match="expected a YAML path, a dict or an ExperimentConfig"):
        Run(42)


def test_run_runs_the_stages_then_skips_them_when_nothing_changed(staged):
    run, *_ = staged

    result = run.run()
    weights = {p: p.stat().st_mtime_ns for p in run.root.rglob("model.safetensors")}
    again = run.run()

    assert result.root == run.root and result.report == run.layout.report
    assert result.rows == read_json(run.layout.results_json)["rows"] == again.rows
    hashes = {name: rec["hash"] for name, rec in result.log.items()}
    assert set(hashes) == {s.name for s in run.stages()}
    assert {name: rec["hash"] for name, rec in again.log.items()} == hashes
    assert {p: p.stat().st_mtime_ns for p in run.root.rglob("model.safetensors")} == weights


# ---- knot.load: the predictor contract ------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(staged):
    run, *_ = staged
    return run.layout.teacher("books")  # a training folder: its best/ is loaded


def test_load_gives_a_predictor_matching_the_model(checkpoint):
    from knot.models import load as load_model

    p = knot.load(checkpoint, device="cpu")
    model = load_model(checkpoint)
    texts = ["great film superb", "awful plot terrible", "lovely music"]

    probs = p.predict_proba(texts, batch_size=2)

    assert isinstance(p, Predictor) and isinstance(p, knot.api.CheckpointPredictor)
    assert p.labels == ["neg", "pos"] and p.max_length == 16 and p.geometry.labels == ["neg", "pos"]
    assert probs.dtype == np.float64 and probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(probs, model.predict_proba(texts, batch_size=2).astype(np.float64))
    assert p.predict(texts) == [p.labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(p.expected_coordinate(texts, batch_size=2), probs @ np.array([[-1.0], [1.0]]))
    assert p.predict_proba([]).shape == (0, 2)


def test_load_refuses_one_string_and_empty_texts(checkpoint):
    p = knot.load(checkpoint, device="cpu")

    with pytest.raises(ValueError, match="got one string"):
        p.predict_proba("great film")
    with pytest.raises(ValueError, match="text 1 is empty"):
        p.predict(["great film", "   "])
    with pytest.raises(FileNotFoundError):
        knot.load(checkpoint.parent / "nowhere")


def test_load_gives_an_exported_folder_to_the_onnx_predictor(tmp_path, monkeypatch):
    (tmp_path / "model.onnx").write_bytes(b"")
    fake = types.ModuleType("knot.export")
    fake.OnnxPredictor = lambda path, **kw: ("onnx", Path(path), kw)
    monkeypatch.setitem(sys.modules, "knot.export", fake)

    assert knot.load(tmp_path) == ("onnx", tmp_path, {})


# ---- the README -------------------------------------------------------------------------


def _readme_block(heading: str, level: int = 2) -> str:
    """The first python code block of the README section ``heading``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n{'#' * level} {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KNOT_CACHE", raising=False)

    exec(compile(_readme_block("Python API"), "README.md (Python API)", "exec"), {})

    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("student:ot") and "macro-F1" in line for line in out)
    assert str(Path("runs/api-demo/report.md")) in out
    assert "['1', '2', '3', '4', '5']" in out
    assert (tmp_path / "runs" / "api-demo" / "results.json").is_file()


def test_readme_adding_a_loss_registers_it_for_the_config_and_the_loss(monkeypatch):
    import torch

    import knot.losses
    from knot.config import DistillMethod

    monkeypatch.setattr(knot.losses, "_REGISTRY", dict(knot.losses._REGISTRY))  # restored afterwards
    with pytest.raises(ValueError, match="loss: expected one of"):
        DistillMethod(name="l1", loss="l1")

    exec(compile(_readme_block("Adding a distillation loss", level=3), "README.md (loss)", "exec"), {})

    method = DistillMethod(name="l1", loss="l1")
    g = knot.LabelGeometry.preset("sentiment5")
    logits = torch.zeros(2, 5)
    teachers = torch.full((2, 3, 5), 0.2)
    assert method.loss in knot.losses.available_losses() and not knot.losses.loss_uses_geometry("l1")
    assert knot.distillation_loss("l1", logits, teachers, torch.ones(3) / 3, g).item() == pytest.approx(0.0, abs=1e-6)

"""knot export: one ONNX graph per checkpoint, equal to knot's torch predictions, served
without torch; bad inputs are one-line errors with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from knot.cli import app
from knot.config import ModelConfig
from knot.geometry import LabelGeometry
from knot.models import build_model, load, save_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from knot.export import (  # noqa: E402
    PARITY_ATOL,
    OnnxPredictor,
    export_checkpoint,
    model_card,
    run_test_sets,
)

GEOMETRY = LabelGeometry.preset("sentiment5")
TEXTS = ["great film", "a dreadful, boring story that never ends " * 3, "ok"]


def _checkpoint(folder: Path, **model: object) -> Path:
    torch.manual_seed(0)
    save_checkpoint(build_model(ModelConfig(**model), GEOMETRY), folder, metadata={"role": "local", "name": "x"})
    return folder


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> tuple[Path, Path]:
    """A fine-tuned ``tiny`` checkpoint (random weights: parity needs no training) and its export."""
    base = tmp_path_factory.mktemp("tiny")
    ckpt = _checkpoint(base / "ckpt", encoder="tiny", max_length=64, dropout=0.0)
    export_checkpoint(ckpt, base / "onnx")
    return ckpt, base / "onnx"


def test_export_folder_is_self_describing(tiny_export):
    _, out = tiny_export
    assert {"model.onnx", "config.json", "README.md", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {str(i): lab for i, lab in enumerate(GEOMETRY.labels)}
    assert cfg["label2id"]["3"] == 2 and cfg["max_length"] == 64 and cfg["cost_power"] == 1
    assert cfg["geometry"]["coords"] == [[-2.0], [-1.0], [0.0], [1.0], [2.0]]
    assert cfg["encoder"]["name"] == "tiny" and cfg["encoder"]["fingerprint"] and cfg["knot_version"]
    assert not list(out.parent.glob(".onnx.*"))  # the temporary folder was renamed, not left behind


@pytest.mark.parametrize("length", [1, 7, 64])
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_equals_torch_at_every_length(tiny_export, length, batch):
    # the SDPA export of the issue matched torch at its example length only
    import onnxruntime as ort

    ckpt, out = tiny_export
    model = load(ckpt)
    gen = torch.Generator().manual_seed(length * 10 + batch)
    ids = torch.randint(1000, 2000, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):  # padded rows: shorter texts in the same batch
        mask[row, max(1, length // (row + 1)):] = 0
    with torch.no_grad():
        ref = torch.softmax(model(ids, mask), -1).numpy()  # (B, K)
    session = ort.InferenceSession(str(out / "model.onnx"))
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}
    got = session.run(None, feed)[0]
    assert np.abs(got - ref).max() < PARITY_ATOL


def test_predictor_contract(tiny_export):
    ckpt, out = tiny_export
    pred = OnnxPredictor(out)
    probs = pred.predict_proba(TEXTS, batch_size=2)
    assert probs.dtype == np.float64 and probs.shape == (3, 5)
    np.testing.assert_allclose(probs, load(ckpt).predict_proba(TEXTS), atol=PARITY_ATOL)
    assert pred.predict(TEXTS) == [pred.labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(pred.expected_coordinate(TEXTS), probs @ GEOMETRY.coords.numpy())
    assert pred.geometry == GEOMETRY
    with pytest.raises(ValueError, match="one string"):
        pred.predict_proba("great film")
    with pytest.raises(ValueError, match="text 1 is empty"):
        pred.predict_proba(["fine", "  "])


def test_serving_imports_no_torch(tiny_export):
    _, out = tiny_export
    code = (
        "import sys\nfrom knot.export import OnnxPredictor\n"
        f"p = OnnxPredictor({str(out)!r}).predict_proba(['great film', 'bad'])\n"
        "assert p.shape == (2, 5), p.shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_missing_onnxruntime_names_the_extra(tiny_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "knot\[onnx\]"'):
        OnnxPredictor(tiny_export[1])


def test_frozen_token_head_exports_with_parity(tmp_path):
    # the pooled head is the quickstart student's; the frozen graph rounds its features to
    # float16, as the feature cache does
    ckpt = _checkpoint(tmp_path / "ckpt", encoder="minilm", encoder_layers=1, encoder_mode="frozen", head="knot",
                       max_length=32)
    res = export_checkpoint(ckpt, tmp_path / "onnx")
    assert res["parity_max_abs"] < PARITY_ATOL
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "onnx").predict_proba(TEXTS), load(ckpt).predict_proba(TEXTS),
                               atol=PARITY_ATOL)


@pytest.mark.slow
def test_quickstart_student_parity_on_every_test_set(quickstart_run, tmp_path):
    run, _ = quickstart_run
    res = CliRunner().invoke(app, ["export", str(run / "students" / "ot"), "--out", str(tmp_path / "ot")])
    assert res.exit_code == 0, res.output
    import knot

    torch_model, pred = knot.load(run / "students" / "ot"), knot.load(tmp_path / "ot")  # one predictor API
    assert isinstance(pred, OnnxPredictor) and not isinstance(torch_model, OnnxPredictor)
    sets = run_test_sets(run, pred.labels)
    assert set(sets) == {"tweets", "amazon", "nyt", "movies", "union"}
    for name, (texts, _) in sets.items():
        gap = np.abs(pred.predict_proba(texts) - torch_model.predict_proba(texts)).max()
        assert gap < PARITY_ATOL, (name, gap)
    card = (tmp_path / "ot" / "README.md").read_text()
    assert "Distilled from 4 teachers: `tweets` (20 training texts)" in card
    assert "| union | 60 |" in card and "W1 to gold" in card  # the run's results, gold columns included
    assert "MIT" in card and "Apache-2.0" in card and "non-commercial" not in card


def test_card_says_marc_is_non_commercial(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "config.yaml").write_text(
        "data:\n  domains:\n    - {name: toy, sources: [{reader: marc, path: toy.json.gz}]}\n")
    config = {"encoder": {"name": "minilm", "mode": "frozen", "layers": None, "fingerprint": "ab"},
              "labels": ["1", "2"], "geometry": {"labels": ["1", "2"], "coords": [[0.0], [1.0]], "p": 1},
              "knot_version": "0", "architecture": "a", "max_length": 8, "cost_power": 1}
    card = model_card(config, {}, tmp_path, 1e-6, None)
    assert "| data (marc) | toy | Amazon MARC licence: non-commercial" in card
    assert "non-commercial research only.**" in card


def test_bad_inputs_are_one_line_errors_and_write_nothing(tiny_export, tmp_path):
    ckpt, out = tiny_export
    runner = CliRunner()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["export", str(ckpt), "--out", str(busy)])
    assert res.exit_code == 2 and "not empty (pass --force" in res.output
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    res = runner.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not a knot checkpoint" in res.output
    assert not (tmp_path / "x").exists()
    res = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "y"), "--format", "tflite"])
    assert res.exit_code == 2 and "--format" in res.output


def test_refuses_remote_code_and_mismatched_weights(tiny_export, tmp_path):
    import shutil

    ckpt, _ = tiny_export
    remote = tmp_path / "remote"
    shutil.copytree(ckpt, remote)
    cfg = json.loads((remote / "tokenizer_config.json").read_text())
    (remote / "tokenizer_config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoTokenizer": "x.Tok"}}))
    with pytest.raises(ValueError, match="auto_map"):
        export_checkpoint(remote, tmp_path / "o1")
    other = _checkpoint(tmp_path / "other", encoder="tiny", encoder_layers=1, max_length=64)
    mixed = tmp_path / "mixed"
    shutil.copytree(ckpt, mixed)
    shutil.copy(other / "model.safetensors", mixed / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        export_checkpoint(mixed, tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()

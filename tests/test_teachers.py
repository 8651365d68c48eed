"""train_teacher and the `knot train` / `knot predict` commands, end to end on a tiny corpus.

The corpus is written by the tests (generic JSON lines), prepared by knot.data, and the
teachers are the random-init ``tiny`` encoder, so everything runs offline in seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from helpers import write_polarity_corpus
from knot.cli import app
from knot.config import ExperimentConfig, TrainConfig, load_config
from knot.geometry import LabelGeometry
from knot.layout import RunLayout
from knot.models import load, read_checkpoint_config
from knot.run import RunContext
from knot.teachers import teacher_loss, train_teacher

runner = CliRunner()


CONFIG = """\
name: tiny-teachers
seed: 1
device: cpu
task:
  geometry: {neg: [-1.0], pos: [1.0]}
data:
  dedup: false  # the counts and accuracies below were set on this corpus with its repeated texts
  domains:
    - {name: books, role: local, sources: [{reader: jsonl, path: books.jsonl, text: text, label: label}]}
    - {name: films, role: local, sources: [{reader: jsonl, path: films.jsonl, text: text, label: label}]}
    - {name: mixed, role: global, sources: [{reader: jsonl, path: mixed.jsonl, text: text, label: label}]}
model: {encoder: tiny, max_length: 16, dropout: 0.0}
local: {epochs: 3, batch_size: 4, lr: 2.0e-3}
global_model: {epochs: 1, batch_size: 8, lr: 2.0e-3, max_steps: 2}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("teachers")
    root = base / "data"
    root.mkdir()
    write_polarity_corpus(root / "books.jsonl", 40, 0)
    write_polarity_corpus(root / "films.jsonl", 30, 1)
    write_polarity_corpus(root / "mixed.jsonl", 40, 2)
    cfg_path = base / "tiny.yaml"
    cfg_path.write_text(CONFIG)
    return cfg_path, root, base


@pytest.fixture(scope="module")
def trained(setup):
    """Both local teachers trained once through the library function."""
    cfg_path, root, base = setup
    cfg = load_config(cfg_path)
    layout = RunLayout(base / "run")
    result = train_teacher(RunContext(cfg, layout, data_root=root), role="local")
    return cfg, layout, result


def test_local_teachers_learn_their_domain(trained):
    cfg, layout, result = trained
    assert result["role"] == "local" and list(result["models"]) == ["books", "films"]
    for name, n_train in (("books", 28), ("films", 21)):
        info = result["models"][name]
        assert info["checkpoint"] == str(layout.teacher(name) / "best")
        assert info["n_train"] == n_train  # 70 % of the domain
        assert info["best_metrics"]["macro_f1"] == 1.0
        meta = read_checkpoint_config(layout.teacher(name))["metadata"]
        assert meta["role"] == "local" and meta["domains"] == [name] and meta["n_train"] == n_train
        assert meta["train"]["epochs"] == 3 and meta["model"]["encoder"] == "tiny"
        lines = (layout.teacher(name) / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 3 and "macro_f1" in json.loads(lines[0])["val"]
    teacher = load(layout.teacher("books"))
    probs = teacher.predict_proba(["great film superb", "awful plot terrible"])
    assert teacher.labels == ["neg", "pos"] and probs.argmax(1).tolist() == [1, 0]


def test_resume_of_finished_teachers_is_quick_and_changes_nothing(trained):
    cfg, layout, result = trained
    before = {n: (layout.teacher(n) / "best" / "model.safetensors").read_bytes() for n in ("books", "films")}
    again = train_teacher(RunContext(cfg, layout), role="local", resume=True)
    for n in ("books", "films"):
        assert again["models"][n]["resumed_from"] == 3
        assert (layout.teacher(n) / "best" / "model.safetensors").read_bytes() == before[n]


def test_global_model_and_one_domain(setup, tmp_path):
    cfg_path, root, _ = setup
    cfg = load_config(cfg_path)
    layout = RunLayout(tmp_path / "run")
    result = train_teacher(RunContext(cfg, layout, data_root=root), role="global")
    info = result["models"]["global"]
    assert info["domains"] == ["mixed"] and info["n_train"] == 28
    assert read_checkpoint_config(layout.global_model)["metadata"]["role"] == "global"
    one = train_teacher(RunContext(cfg, layout), role="local", domain="films")
    assert list(one["models"]) == ["films"] and not layout.teacher("books").exists()


def test_role_and_domain_errors(setup, tmp_path):
    cfg_path, root, _ = setup
    cfg = load_config(cfg_path)
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(ValueError, match="--domain mixed: is not a local domain"):
        train_teacher(RunContext(cfg, layout, data_root=root), role="local", domain="mixed")
    with pytest.raises(ValueError, match="--domain nope: is not a domain of the config"):
        train_teacher(RunContext(cfg, layout, data_root=root), role="local", domain="nope")
    with pytest.raises(ValueError, match="cannot be used with --role global"):
        train_teacher(RunContext(cfg, layout, data_root=root), role="global", domain="books")
    with pytest.raises(ValueError, match="role: expected local or global"):
        train_teacher(RunContext(cfg, layout), role="student")
    no_global = load_config(cfg_path, ["data.domains.2.role=transfer"])
    with pytest.raises(ValueError, match="no domain with role global"):
        train_teacher(RunContext(no_global, layout, data_root=root), role="global")


def test_teacher_losses():
    g = LabelGeometry.preset("sentiment5")
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    batch = {"target": torch.tensor([4, 4])}
    ce = teacher_loss(TrainConfig(loss="ce"), g)(logits, batch)
    torch.testing.assert_close(ce, F.cross_entropy(logits, batch["target"]))
    ot = teacher_loss(TrainConfig(loss="ot+ce", ot_weight=1.0, label_smoothing=0.0), g)(logits, batch)
    assert ot > ce  # the first row puts its mass far from star 5
    with pytest.raises(ValueError, match="loss: expected ce or ot"):
        teacher_loss(type("Cfg", (), {"loss": "kl"})(), g)


def test_ot_ce_teacher_trains(setup, tmp_path):
    cfg_path, root, _ = setup
    cfg = load_config(cfg_path, ["local.loss=ot+ce", "local.epochs=1", "local.max_steps=2"])
    out = train_teacher(RunContext(cfg, RunLayout(tmp_path / "run"), data_root=root), role="local", domain="films")
    assert out["models"]["films"]["epochs_completed"] == 1


# ---- CLI ---------------------------------------------------------------------------


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_and_predict_help():
    for cmd in ("train", "predict"):
        r = invoke(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output
    assert "--role" in invoke("train", "--help").output
    assert "--file" in invoke("predict", "--help").output


def test_train_bad_config_and_role_exit_nonzero(setup, tmp_path):
    cfg_path, root, _ = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("lr: 2.0e-3}", "lr: 2.0e-3, epoch: 3}", 1))
    r = invoke("train", bad, "--role", "local", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "local.epoch: unknown key" in r.output
    r = invoke("train", cfg_path, "--role", "teacher", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "--role: expected local or global" in r.output
    r = invoke("train", cfg_path, "--role", "local", "--domain", "nope", "--out", tmp_path / "run",
               "--data-root", root)
    assert r.exit_code == 2 and "error: --domain nope" in r.output
    r = invoke("train", tmp_path / "missing.yaml", "--role", "local")
    assert r.exit_code == 2 and "config file not found" in r.output


def test_cli_train_then_predict(setup, tmp_path):
    cfg_path, root, _ = setup
    run = tmp_path / "run"
    r = invoke("train", cfg_path, "--role", "local", "--domain", "books", "--out", run, "--data-root", root,
               "--set", "local.epochs=1", "--set", "local.max_steps=2")
    assert r.exit_code == 0, r.output
    assert "books: best epoch 1" in r.output and (run / "config.yaml").is_file()
    assert ExperimentConfig.from_dict(__import__("yaml").safe_load((run / "config.yaml").read_text())).local.epochs == 1

    ckpt = run / "teachers" / "books"
    r = invoke("predict", ckpt, "great film", "awful plot", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = r.output.strip().splitlines()
    assert len(rows) == 2 and rows[0].split("\t")[0] in ("neg", "pos") and "E[coord]=" in rows[0]

    texts = tmp_path / "texts.txt"
    texts.write_text("great film\n\nawful plot\n", encoding="utf-8")
    r = invoke("predict", ckpt, "--file", texts, "--json")
    assert r.exit_code == 0, r.output
    objs = [json.loads(x) for x in r.output.strip().splitlines()]
    assert [o["text"] for o in objs] == ["great film", "awful plot"]
    for o in objs:
        assert set(o["probs"]) == {"neg", "pos"} and abs(sum(o["probs"].values()) - 1) < 1e-4
        expected = -1.0 * o["probs"]["neg"] + 1.0 * o["probs"]["pos"]
        assert abs(o["expected_coord"][0] - expected) < 1e-3


def test_predict_errors(tmp_path):
    r = invoke("predict", tmp_path / "nowhere", "text")
    assert r.exit_code == 2 and "checkpoint folder not found" in r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    r = invoke("predict", bad, "text")
    assert r.exit_code == 2 and "config.json: corrupt checkpoint config" in r.output
    r = invoke("predict", bad)
    assert r.exit_code == 2 and "nothing to predict" in r.output

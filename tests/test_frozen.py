"""Frozen-encoder mode end to end: config, FrozenClassifier checkpoints, the pipeline with
both heads, cache reuse between stages, `knot predict` / `knot cache`, federated equality.

Everything uses the random ``tiny`` encoder (built under a fixed seed in frozen mode) on
the small polarity corpus of ``helpers.py``, so it runs offline in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import pipeline_config, write_pipeline_corpus
from knot.cli import app
from knot.config import ConfigError, ExperimentConfig, ModelConfig, load_config
from knot.features import FeatureCache, encoding_delta, encoding_stats
from knot.geometry import LabelGeometry
from knot.layout import RunLayout
from knot.models import FrozenClassifier, build_model, load, save_checkpoint
from knot.pipeline import Run, read_stage_log, run_pipeline
from knot.run import RunContext

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
GEOMETRY = LabelGeometry.from_mapping({"neg": [-1.0], "pos": [1.0]})
TEXTS = ["great film", "awful plot", "lovely music superb", "boring cast"]


@pytest.fixture(autouse=True)
def _no_shared_cache(monkeypatch):
    """The run's own cache (RUN/features), never a developer's KNOT_CACHE."""
    monkeypatch.delenv("KNOT_CACHE", raising=False)


def frozen_cfg(head: str = "knot", **extra) -> ModelConfig:
    return ModelConfig(encoder="tiny", encoder_mode="frozen", head=head, max_length=16, dropout=0.0, **extra)


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------


def test_frozen_keys_are_left_out_at_their_defaults_so_finetune_hashes_stay():
    assert ModelConfig().to_dict() == {
        "encoder": "minilm", "encoder_layers": None, "max_length": 200, "head_heads": 2, "dropout": 0.1,
    }
    d = ExperimentConfig.from_dict({"model": {"encoder_mode": "frozen", "head": "pooled", "pooled_units": 64}}).to_dict()
    assert (d["model"]["encoder_mode"], d["model"]["head"], d["model"]["pooled_units"]) == ("frozen", "pooled", 64)


#: Stage keys (first 16 hex digits) of shipped fine-tune configs, computed on the commit
#: before frozen mode existed: adding the keys must not rerun any finished fine-tune stage.
PINNED = {
    "configs/sentiment.yaml": {
        "local:apparel": "e1cd077ac7dbbb91", "local:toy": "9d851f0c6c461374", "local:wireless": "e7622e99a8142ba2",
        "global": "99936287e2a90947", "distill:ot": "b4592ae53c04af1a", "distill:entropy": "4d4e79f1a09e506a",
        "distill:feddf": "44e1c6463f11ded1",
    },
    "configs/erc-quick.yaml": {
        "local:meld": "ae274a90a554f92e", "local:emorynlp": "7f7874754ed70659",
        "local:dailydialog-0": "3767ec38cb0a0fb4", "local:dailydialog-1": "c24463d5dbf36c26",
        "global": "2e0420250de610d0", "distill:ot": "246e5ed2c47328c9", "distill:entropy": "7d2e7502cad2db71",
        "distill:feddf": "8e46e248fec7ad28",
    },
}


@pytest.mark.parametrize("path", sorted(PINNED))
def test_stage_hashes_of_finetune_configs_are_unchanged(path, tmp_path):
    from knot.pipeline import plan_stages
    from knot.utils import sha256_json

    stages = plan_stages(Run(load_config(REPO / path), RunLayout(tmp_path)))
    keys = {
        s.name: sha256_json({"stage": s.name, "inputs": s.inputs})[:16]
        for s in stages
        if s.group in ("local", "global", "distill")
    }
    assert keys == PINNED[path]


@pytest.mark.parametrize("name", ["sentiment", "erc"])
def test_full_configs_are_the_base_experiments_frozen_at_full_size(name):
    full = load_config(REPO / "configs" / f"{name}-full.yaml")
    base = load_config(REPO / "configs" / f"{name}.yaml")
    assert full.model.frozen and full.model.head == "pooled" and full.model.encoder == base.model.encoder
    assert [d.to_dict() for d in full.data.domains] == [d.to_dict() for d in base.data.domains]
    assert all(d.max_train is None and d.max_val is None and d.max_test is None for d in full.data.domains)
    assert (full.local.epochs, full.global_model.epochs, full.distill.train.epochs) == (10, 10, 20)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"head": "pooled"}, "model.head: 'pooled' needs encoder_mode: frozen"),
        ({"encoder_mode": "frozn"}, "model.encoder_mode: expected finetune or frozen"),
        ({"encoder_mode": "frozen", "head": "mlp"}, "model.head: expected knot or pooled"),
        ({"encoder_mode": "frozen", "pooled_units": 0}, "model.pooled_units: expected a positive integer"),
    ],
)
def test_bad_frozen_keys_are_named(model, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"model": model})


# ---------------------------------------------------------------------------
# the model and its checkpoints
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["knot", "pooled"])
def test_checkpoint_holds_the_head_only_and_reloads_to_the_same_predictions(tmp_path, head):
    torch.manual_seed(0)
    model = build_model(frozen_cfg(head), GEOMETRY)
    assert isinstance(model, FrozenClassifier)
    assert all(k.startswith("head.") for k in model.state_dict())  # no encoder weights
    before = model.predict_proba(TEXTS)

    path = save_checkpoint(model, tmp_path / "ck")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["encoder"]["mode"] == "frozen" and cfg["encoder"]["source"] == "tiny"
    assert cfg["encoder"]["fingerprint"] == model.fingerprint and "hf_config" not in cfg["encoder"]
    assert cfg["head"]["kind"] == head
    from safetensors.torch import load_file

    stored = load_file(str(path / "model.safetensors"))
    assert set(stored) == set(model.state_dict())
    assert sum(t.numel() for t in stored.values()) == sum(p.numel() for p in model.parameters())

    again = load(path)
    assert isinstance(again, FrozenClassifier) and again.head_kind == head
    np.testing.assert_array_equal(again.predict_proba(TEXTS), before)


def test_a_different_encoder_is_an_error_not_wrong_features(tmp_path):
    model = build_model(frozen_cfg(), GEOMETRY)
    path = save_checkpoint(model, tmp_path / "ck")
    cfg = json.loads((path / "config.json").read_text())
    cfg["encoder"]["fingerprint"] = "0" * 64  # as if trained on other weights
    (path / "config.json").write_text(json.dumps(cfg))

    loaded = load(path)  # lazy: nothing is built yet
    with pytest.raises(ValueError, match="fingerprint .* different encoder"):
        loaded.predict_proba(["great film"])


def test_the_shared_encoder_is_built_once_and_leaves_the_rng_alone():
    from knot.models import frozen_encoder

    torch.manual_seed(5)
    a = build_model(frozen_cfg(), GEOMETRY)
    torch.manual_seed(5)
    b = build_model(frozen_cfg(), GEOMETRY)
    assert frozen_encoder("tiny", None)[0] is frozen_encoder("tiny", None)[0]
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


# ---------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------

def frozen_config(head: str, **sections) -> str:
    """The pipeline tests' config in frozen mode with ``head``, trained longer (a frozen
    random encoder needs more epochs)."""
    return pipeline_config(
        name="tiny-frozen",
        data={"dedup": False},  # the counts and accuracies below were set on this corpus with its repeated texts
        model={"encoder_mode": "frozen", "head": head},
        local={"epochs": 25, "lr": 3.0e-3},
        global_model={"epochs": 25, "lr": 3.0e-3},
        distill={"train": {"epochs": 3, "batch_size": 8, "lr": 1.0e-3}, "methods": [{"name": "ot", "loss": "ot"}]},
        **sections,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("frozen")
    root = base / "data"
    root.mkdir()
    write_pipeline_corpus(root)
    return base, root


@pytest.fixture(scope="module", params=["knot", "pooled"])
def frozen_run(request, corpus):
    import os

    base, root = corpus
    head = request.param
    cfg_path = base / f"{head}.yaml"
    cfg_path.write_text(frozen_config(head))
    out = base / f"run-{head}"
    saved = os.environ.pop("KNOT_CACHE", None)
    try:
        run_pipeline(load_config(cfg_path), out, data_root=root)
    finally:
        if saved is not None:
            os.environ["KNOT_CACHE"] = saved
    return head, cfg_path, out


def test_frozen_pipeline_runs_end_to_end(frozen_run):
    head, _, out = frozen_run
    layout = RunLayout(out)
    results = json.loads(layout.results_json.read_text())
    assert {m["id"] for m in results["models"]} == {"teacher:books", "teacher:films", "global", "student:ot"}
    acc = {(r["model"], r["test_set"]): r["accuracy"] for r in results["rows"]}
    # separable data, but a frozen *random* encoder and 28 examples per teacher: well above
    # chance (0.5), not perfect (unseen adjectives in the test split)
    assert min(acc[("teacher:books", "books")], acc[("teacher:films", "films")]) >= 0.75, acc
    assert acc[("global", "union")] >= 0.75 and acc[("student:ot", "union")] > 0.5, acc
    for d in (layout.teacher("books") / "best", layout.global_model / "best", layout.student("ot") / "best"):
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["encoder"]["mode"] == "frozen" and cfg["head"]["kind"] == head
    assert layout.features.is_dir()


def test_each_text_set_is_encoded_once_and_reused_by_later_stages(frozen_run):
    _, _, out = frozen_run
    log = read_stage_log(RunLayout(out))
    enc = {name: rec["summary"]["encoding"] for name, rec in log.items() if isinstance(rec["summary"], dict)}
    assert enc["local:books"]["texts_encoded"] == 32 and enc["local:books"]["texts_per_s"] > 0  # train + val
    # soft labels encode the transfer splits once, for the first teacher; the others hit the cache
    assert enc["soft-labels"]["texts_encoded"] == 48 and enc["soft-labels"]["cache_hits"] == 4
    # the students read the transfer features the soft-label stage encoded
    assert enc["distill:ot"]["texts_encoded"] == 0 and enc["distill:ot"]["cache_hits"] == 2


def test_a_second_stage_over_the_same_texts_encodes_nothing(frozen_run):
    from knot.evaluation import evaluate_run

    _, cfg_path, out = frozen_run
    before = encoding_stats()
    evaluate_run(RunContext(load_config(cfg_path), RunLayout(out)))
    delta = encoding_delta(before)
    assert delta["texts_encoded"] == 0 and delta["cache_hits"] > 0


def test_the_seeds_of_an_experiment_share_one_encoding(corpus):
    base, root = corpus
    cfg_path = base / "seeds.yaml"
    cfg_path.write_text(frozen_config("pooled", seed=None, seeds=[1, 2]))
    logs = run_pipeline(load_config(cfg_path), base / "seeds", data_root=root, stages=["prepare", "local"])
    encoded = {seed: log["local:books"]["summary"]["encoding"]["texts_encoded"] for seed, log in logs.items()}
    assert encoded == {"seed-1": 32, "seed-2": 0}
    assert (base / "seeds" / "features").is_dir() and not (base / "seeds" / "seed-1" / "features").exists()


def test_a_student_cannot_start_from_a_global_model_of_the_other_mode(frozen_run):
    from knot.distill import distill

    _, cfg_path, out = frozen_run
    cfg = load_config(cfg_path, ["model.encoder_mode=finetune", "model.head=knot"])
    with pytest.raises(ValueError, match="frozen encoder but model.encoder_mode is finetune"):
        distill(RunContext(cfg, RunLayout(out)), method="ot")


def test_knot_predict_reads_a_frozen_checkpoint(frozen_run):
    _, _, out = frozen_run
    res = runner.invoke(app, ["predict", str(RunLayout(out).teacher("books")), "great film", "awful plot", "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert [r["label"] for r in rows] == ["pos", "neg"]


def test_knot_cache_info_and_clear(frozen_run, tmp_path):
    import shutil

    _, _, out = frozen_run
    copy = tmp_path / "features"
    shutil.copytree(RunLayout(out).features, copy)
    n = len([p for p in copy.iterdir() if p.is_dir()])
    res = runner.invoke(app, ["cache", "info", "--dir", str(copy)])
    assert res.exit_code == 0 and f"{n} entries" in res.output and "books-train" in res.output
    res = runner.invoke(app, ["cache", "clear", "--dir", str(copy), "--yes"])
    assert res.exit_code == 0 and f"deleted {n} entries" in res.output
    assert FeatureCache(copy).info() == []
    res = runner.invoke(app, ["cache", "info"])  # no --dir, no KNOT_CACHE
    assert res.exit_code == 2 and "KNOT_CACHE" in res.output


# ---------------------------------------------------------------------------
# federated
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_federated_in_process_equals_knot_run_in_frozen_mode(tmp_path):
    from test_federated_core import compare_runs, knot_cli, tiny_config, write_data

    from knot.federated.core import read_status

    write_data(tmp_path / "data")
    cfg = tiny_config()
    cfg.model.encoder_mode, cfg.model.head = "frozen", "pooled"
    (tmp_path / "tiny.yaml").write_text(cfg.to_yaml())
    ref = knot_cli("run", tmp_path / "tiny.yaml", "--out", tmp_path / "run", "--data-root", tmp_path / "data",
                   "--stages", "prepare,local,global,soft-labels,bias,distill,evaluate")
    assert ref.returncode == 0, ref.stderr[-3000:]
    fed = RunLayout(tmp_path / "fed")
    done = knot_cli("federated", "run", tmp_path / "tiny.yaml", "--in-process", "--out", fed.root,
                    "--data-root", tmp_path / "data")
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_status(fed.root)["status"] == "ok"

    compare_runs(RunLayout(tmp_path / "run"), fed, atol=0.0)
    # each client cached its own texts (and the public ones) in its own folder
    clients = fed.root / "federated" / "clients"
    names = {p.parent.name: {e["name"] for e in FeatureCache(p).info()} for p in clients.glob("*/features")}
    assert set(names) == {"books", "games", "tools"}
    assert all(n.startswith(("books", "bias books", "books ->")) for n in names["books"]), names["books"]
    assert not any("games" in n or "tools" in n for n in names["books"])

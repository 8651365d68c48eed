"""The ekman7 preset, derived label geometries (sentence-encoder embeddings of label texts),
their config specs, and a distillation method with its own loss geometry.

all-MiniLM-L6-v2 (about 90 MB) is loaded once per test process (``knot.geometry`` keeps the
last encoder in memory); the module fixture below computes the geometries most tests share.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_distill import LABELS, transfer_run  # noqa: F401  (fixture)

from knot.config import ConfigError, DistillMethod, ExperimentConfig
from knot.geometry import LabelGeometry, parse_derived_spec
from knot.pipeline import Run
from knot.run import RunContext

WORDS = ["joy", "happiness", "sadness", "anger", "rage", "terrible", "awful", "excellent"]
STAR_TEXTS = {
    "1": "1 star: terrible",
    "2": "2 stars: poor",
    "3": "3 stars: average",
    "4": "4 stars: good",
    "5": "5 stars: excellent",
}


@pytest.fixture(scope="module")
def words():
    """Label names as their own texts, unscaled."""
    return LabelGeometry.derived(WORDS)


def _cost(g: LabelGeometry, a: str, b: str) -> float:
    return float(g.cost[g.index(a), g.index(b)])


# --- ekman7 --------------------------------------------------------------------------------


def test_ekman7_preset_shares_the_emotion5_points():
    g = LabelGeometry.preset("ekman7")
    e5 = LabelGeometry.preset("emotion5")
    assert g.labels == ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
    assert tuple(g.coords.shape) == (7, 2) and g.name == "ekman7"
    for label in e5.labels:
        assert g.coords[g.index(label)].tolist() == e5.coords[e5.index(label)].tolist(), label
    # disgust and fear: negative valence, high arousal (the circumplex's upper-left quadrant)
    for label in ("disgust", "fear"):
        valence, arousal = g.coords[g.index(label)].tolist()
        assert valence < -0.5 and arousal > 0.5, label
    assert LabelGeometry.from_spec("ekman7", labels=list(reversed(g.labels))).labels[0] == "neutral"


# --- derived geometries ----------------------------------------------------------------------


def test_derived_coords_are_unit_norm_and_named(words):
    norms = words.coords.norm(dim=1)
    assert torch.allclose(norms, torch.ones(len(WORDS), dtype=torch.float64), atol=1e-12)
    assert words.name == "derived" and words.labels == WORDS and words.dim == 384


def test_derived_cost_is_a_metric(words):
    c = words.cost
    assert torch.equal(c, c.T)
    assert torch.all(torch.diagonal(c) == 0)
    assert torch.all(c[~torch.eye(len(WORDS), dtype=torch.bool)] > 0)
    for i, j, k in itertools.permutations(range(len(WORDS)), 3):
        assert c[i, k] <= c[i, j] + c[j, k] + 1e-12, (WORDS[i], WORDS[j], WORDS[k])
    # unit vectors: every distance is at most 2
    assert float(c.max()) <= 2.0


def test_synonyms_end_closer_than_antonyms(words):
    assert _cost(words, "joy", "happiness") < _cost(words, "joy", "sadness")
    assert _cost(words, "anger", "rage") < _cost(words, "anger", "joy")
    assert _cost(words, "terrible", "awful") < _cost(words, "terrible", "excellent")


def test_each_text_is_embedded_on_its_own(words):
    """A label's coordinates do not depend on the other labels' texts (no shared padding)."""
    small = LabelGeometry.derived(["rage", "joy"])
    assert torch.allclose(small.coords[0], words.coords[words.index("rage")], atol=1e-6)
    assert torch.allclose(small.coords[1], words.coords[words.index("joy")], atol=1e-6)


@pytest.mark.parametrize("p", [1, 2])
def test_scale_to_matches_the_reference_largest_cost(p):
    reference = LabelGeometry.preset("sentiment5", p=p)
    raw = LabelGeometry.derived(list(STAR_TEXTS), STAR_TEXTS, p=p)
    scaled = LabelGeometry.derived(list(STAR_TEXTS), STAR_TEXTS, scale_to=reference, p=p)
    assert float(scaled.cost.max()) == pytest.approx(float(reference.cost.max()), rel=1e-12)
    # one factor for every pair: the cost matrix is proportional to the unscaled one
    ratio = float(scaled.cost.max() / raw.cost.max())
    assert torch.allclose(scaled.cost, raw.cost * ratio, rtol=1e-10, atol=1e-12)
    assert ratio > 1.0  # sentiment5's largest cost (4 or 16) exceeds the unit sphere's (<= 2 or 4)


def test_texts_follow_the_label_order():
    texts = {"pos": "positive", "neg": "negative"}
    g = LabelGeometry.derived(["neg", "pos"], texts)
    h = LabelGeometry.derived(["pos", "neg"], texts)
    assert g.labels == ["neg", "pos"] and torch.equal(g.coords[0], h.coords[1])


def test_derived_rejects_bad_texts_and_encoders(tmp_path):
    with pytest.raises(ValueError, match=r"one description per label .*missing: \['b'\], unknown: \['c'\]"):
        LabelGeometry.derived(["a", "b"], {"a": "x", "c": "y"})
    with pytest.raises(ValueError, match=r"labels share the text\(s\) \['same'\]"):
        LabelGeometry.derived(["a", "b"], {"a": "same", "b": "same"})
    with pytest.raises(ValueError, match=r"label 'b': expected a non-empty text"):
        LabelGeometry.derived(["a", "b"], {"a": "x", "b": "  "})
    with pytest.raises(ValueError, match=r"encoder 'tiny' has random weights"):
        LabelGeometry.derived(["a", "b"], encoder="tiny")
    with pytest.raises(ValueError, match=r"is not 'minilm' or a local Hugging Face model folder"):
        LabelGeometry.derived(["a", "b"], encoder=str(tmp_path))
    with pytest.raises(ValueError, match=r"scale_to: expected a LabelGeometry"):
        LabelGeometry.derived(["a", "b"], scale_to="sentiment5")


# --- specs -------------------------------------------------------------------------------------


def test_from_spec_derived_forms(words):
    by_name = LabelGeometry.from_spec("derived", labels=WORDS)
    assert by_name == words
    assert LabelGeometry.from_spec({"derived": None}, labels=WORDS) == words
    # texts without labels: the texts' order is the class order; YAML int keys become strings
    g = LabelGeometry.from_spec({"derived": {"texts": {int(k): v for k, v in STAR_TEXTS.items()}}})
    assert g.labels == ["1", "2", "3", "4", "5"]
    reference = LabelGeometry.preset("sentiment5")
    scaled = LabelGeometry.from_spec(
        {"derived": {"texts": STAR_TEXTS, "encoder": "minilm", "scale": "task"}},
        labels=["5", "4", "3", "2", "1"],
        reference=reference,
    )
    assert scaled.labels == ["5", "4", "3", "2", "1"]
    assert float(scaled.cost.max()) == pytest.approx(4.0, rel=1e-12)
    assert _cost(scaled, "1", "2") == pytest.approx(_cost(g, "1", "2") * 4.0 / float(g.cost.max()), rel=1e-9)


def test_from_spec_derived_errors():
    with pytest.raises(ValueError, match=r"'derived': needs the labels \(task.labels\) or texts"):
        LabelGeometry.from_spec("derived")
    with pytest.raises(ValueError, match=r"scale 'task': no task geometry to scale to"):
        LabelGeometry.from_spec({"derived": {"scale": "task"}}, labels=["a", "b"])
    with pytest.raises(ValueError, match=r"geometry\.derived\.scale: expected 'task' or null, got 'max'"):
        LabelGeometry.from_spec({"derived": {"scale": "max"}}, labels=["a", "b"])
    with pytest.raises(ValueError, match=r"geometry\.derived\.text: unknown key \(expected one of: texts, encoder, sca"):
        LabelGeometry.from_spec({"derived": {"text": {"a": "x"}}}, labels=["a", "b"])
    with pytest.raises(ValueError, match=r"geometry\.derived\.texts: expected a mapping \{label: description\}"):
        LabelGeometry.from_spec({"derived": {"texts": ["a", "b"]}})
    with pytest.raises(ValueError, match=r"geometry\.derived\.texts\.b: expected a non-empty description"):
        LabelGeometry.from_spec({"derived": {"texts": {"a": "x", "b": 3}}})
    with pytest.raises(ValueError, match=r"geometry\.derived\.encoder: expected 'minilm' or a local model folder"):
        LabelGeometry.from_spec({"derived": {"encoder": 7}}, labels=["a", "b"])
    with pytest.raises(ValueError, match=r"a mapping \{label: \[coords\]\}, a file path, 'derived' or"):
        LabelGeometry.from_spec(3.5)


def test_a_label_called_derived_stays_a_coordinate_mapping():
    g = LabelGeometry.from_spec({"derived": [0.0], "other": [2.0]})
    assert g.labels == ["derived", "other"] and g.cost[0, 1].item() == 2.0
    assert parse_derived_spec({"derived": [1.0]}) is None
    with pytest.raises(ValueError, match="needs at least 2 labels"):  # not read as a derived spec
        LabelGeometry.from_spec({"derived": [1.0]})
    assert parse_derived_spec("sentiment5") is None and parse_derived_spec({"a": {"b": 1}}) is None


def test_importing_geometry_does_not_import_transformers():
    code = "import sys, knot.geometry; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- config and stage hashes -------------------------------------------------------------------

# sha256_json(method.to_dict()) of the three default methods, computed with the config.py
# that predates DistillMethod.geometry (commit c9ec878): an unset geometry keeps them.
OLD_METHOD_HASHES = {
    "ot": "6eac851f1aaf6ed2b68df7e048875f2b93f19021da92c09c7506e1b03cfd4212",
    "entropy": "814c08e13c2444762a24658044eacb51185e0a4ad7577946f0af1b72937302ca",
    "feddf": "73ff5291a67fcad8b11785d09276b7c00da10c44afb5d58137bbd9123361f429",
}


def test_unset_method_geometry_keeps_to_dict_and_stage_hashes(transfer_run):  # noqa: F811
    from knot.pipeline import plan_stages
    from knot.utils import sha256_json

    cfg, layout, _ = transfer_run
    assert all("geometry" not in m.to_dict() for m in cfg.distill.methods)
    assert {m.name: sha256_json(m.to_dict()) for m in cfg.distill.methods} == OLD_METHOD_HASHES
    stages = {s.name: s for s in plan_stages(Run(cfg, layout))}
    for m in cfg.distill.methods:
        assert stages[f"distill:{m.name}"].inputs["method"] == m.to_dict()
    # a set geometry is part of the method (and of its stage's inputs), and round-trips
    raw = cfg.to_dict()
    raw["distill"]["methods"][0]["geometry"] = {"derived": {"texts": {"neg": "bad", "neu": "so-so", "pos": "good"}}}
    cfg2 = ExperimentConfig.from_dict(raw)
    assert cfg2.distill.methods[0].to_dict()["geometry"] == raw["distill"]["methods"][0]["geometry"]
    assert ExperimentConfig.from_dict(cfg2.to_dict()).to_dict() == cfg2.to_dict()
    stages2 = {s.name: s for s in plan_stages(Run(cfg2, layout))}
    assert sha256_json(stages2["distill:ot"].inputs) != sha256_json(stages["distill:ot"].inputs)
    assert stages2["distill:entropy"].inputs == stages["distill:entropy"].inputs


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        ({"derived": {"scale": "max"}}, r"distill\.methods\[0\]\.geometry\.derived\.scale: expected 'task' or null"),
        ({"derived": {"texts": {"a": ""}}}, r"distill\.methods\[0\]\.geometry\.derived\.texts\.a: expected a non-empty"),
        ({"a": [0.0]}, r"distill\.methods\[0\]\.geometry: a label geometry needs at least 2 labels"),
        ({"a": "x", "b": "y"}, r"distill\.methods\[0\]\.geometry: label 'a': expected a list of numbers"),
        ([1, 2], r"distill\.methods\[0\]\.geometry: expected str or dict"),
    ],
)
def test_config_rejects_bad_method_geometry(geometry, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"distill": {"methods": [{"name": "x", "geometry": geometry}]}})


def test_config_accepts_method_geometry_forms():
    for spec in ("derived", "ekman7", "geom.yaml", {"derived": None}, {"a": [0.0], "b": [1.0]}):
        assert DistillMethod.from_dict({"name": "x", "geometry": spec}).geometry == spec


# --- distillation with a method geometry -------------------------------------------------------


def test_method_geometry_drives_the_loss_only(transfer_run):  # noqa: F811
    """A student whose OT loss uses a derived geometry: geometry_loss.json records it, the
    val loss is computed under it, while the model and its val metrics keep the task's."""
    from knot.data import load_split
    from knot.distill import GEOMETRY_LOSS_FILE, consensus_eval_fn, distill, make_loss_fn
    from knot.models import load, read_checkpoint_config
    from knot.soft_labels import SoftLabels

    cfg, layout, splits = transfer_run
    texts = {"neg": "negative", "neu": "neutral", "pos": "positive"}
    method = DistillMethod.from_dict(
        {"name": "ot-derived", "loss": "ot", "aggregate": "per_teacher", "weights": "size",
         "geometry": {"derived": {"texts": texts, "scale": "task"}}}
    )
    raw = cfg.to_dict()
    raw["distill"]["methods"] = [method.to_dict()]
    raw["distill"]["train"]["epochs"] = 2
    cfg = ExperimentConfig.from_dict(raw)
    task = LabelGeometry.from_task(cfg.task)

    out = distill(RunContext(cfg, layout), method="ot-derived")

    saved = json.loads((layout.student("ot-derived") / GEOMETRY_LOSS_FILE).read_text())
    assert saved["source"] == "method" and saved["name"] == "derived" and saved["labels"] == LABELS
    assert saved["spec"] == method.geometry
    expected = LabelGeometry.derived(LABELS, texts, scale_to=task)
    assert LabelGeometry.from_dict({k: saved[k] for k in ("labels", "coords", "p", "name")}) == expected
    assert np.allclose(saved["cost"], expected.cost.numpy()) and max(map(max, saved["cost"])) == pytest.approx(2.0)

    model = load(layout.student("ot-derived"))
    assert model.geometry == task
    assert LabelGeometry.from_dict(read_checkpoint_config(layout.student("ot-derived"))["geometry"]) == task
    # recompute the best epoch's val loss and metrics from the saved student
    val_sl = SoftLabels.load(layout.soft_labels, "val")
    val_texts = [e.text for e in load_split(layout.data, "transfer", "val")]
    probs = model.predict_proba(val_texts)  # (N, K)
    weights = np.array([0.25, 0.75])  # size weights 30 : 90
    batch = {"target": torch.from_numpy(val_sl.probs).double(), "index": torch.arange(len(val_texts))}
    logits = torch.log(torch.from_numpy(probs).double().clamp_min(1e-12))
    best = out["students"]["ot-derived"]["best_metrics"]
    loss_derived = float(make_loss_fn(method, expected, weights)(logits, batch))
    loss_task = float(make_loss_fn(method, task, weights)(logits, batch))
    assert best["loss"] == pytest.approx(loss_derived, rel=1e-3, abs=1e-5)
    assert abs(loss_derived - loss_task) > 1e-2  # the two geometries give other losses
    metrics = consensus_eval_fn(weights)(probs, val_sl.probs, task)
    assert best["semantic_distance"] == pytest.approx(metrics["semantic_distance"], rel=1e-3, abs=1e-5)

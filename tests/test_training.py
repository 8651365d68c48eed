"""The generic fit loop: learning, selection, early stopping, metrics log, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from knot.batching import TextDataset, make_loader
from knot.config import ModelConfig, TrainConfig
from knot.geometry import LabelGeometry
from knot.models import build_model, load
from knot.training import fit

POS = ["great wonderful film", "excellent lovely story", "superb acting great", "wonderful excellent fun",
       "lovely great music", "brilliant superb plot", "great lovely ending", "excellent brilliant cast"]
NEG = ["awful terrible film", "horrible boring story", "dreadful acting awful", "terrible horrible mess",
       "boring dreadful music", "awful bad plot", "terrible boring ending", "horrible dreadful cast"]
TEXTS = POS + NEG
LABELS = torch.tensor([1] * len(POS) + [0] * len(NEG))


@pytest.fixture(scope="module")
def geometry():
    return LabelGeometry.from_mapping({"neg": [-1.0], "pos": [1.0]})


def _setup(geometry, dropout=0.1, batch_size=4, targets=LABELS, init_seed=0):
    torch.manual_seed(init_seed)
    model = build_model(ModelConfig(encoder="tiny", max_length=16, dropout=dropout), geometry)
    ds = TextDataset(TEXTS, model.tokenizer, 16, targets)
    train = make_loader(ds, batch_size, shuffle=True, group_by_length=True, seed=0)
    val = make_loader(ds, 16, shuffle=False, group_by_length=True)
    return model, train, val


def ce(logits, batch):
    return F.cross_entropy(logits, batch["target"])


def test_tiny_model_learns_separable_text(geometry, tmp_path):
    model, train, val = _setup(geometry)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=2e-3, warmup_ratio=0.1)
    result = fit(model, ce, train, val, cfg, out_dir=tmp_path, select_by="macro_f1", seed=0)
    assert result.best_metrics["accuracy"] == 1.0
    assert result.best_metrics["macro_f1"] == 1.0
    assert {"semantic_distance", "loss", "n"} <= set(result.best_metrics)
    assert result.best_dir == tmp_path / "best"
    # the model holds the best weights, and the saved checkpoint predicts the same
    probs = load(tmp_path).predict_proba(TEXTS)
    assert (probs.argmax(1) == LABELS.numpy()).all()
    np.testing.assert_allclose(model.predict_proba(TEXTS), probs, atol=1e-6)
    meta = json.loads((tmp_path / "best" / "config.json").read_text())["metadata"]
    assert meta["epoch"] == result.best_epoch and meta["train"]["lr"] == 2e-3
    assert meta["metrics"]["accuracy"] == 1.0


def test_metrics_jsonl_one_line_per_epoch(geometry, tmp_path):
    model, train, val = _setup(geometry)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, max_steps=2)
    result = fit(model, ce, train, val, cfg, out_dir=tmp_path, select_by="loss", seed=0)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert all(x["train_steps"] == 2 and x["train_samples"] == 8 for x in lines)  # max_steps
    assert all(x["samples_per_s"] > 0 and "loss" in x["val"] for x in lines)
    assert lines == json.loads(json.dumps(result.history))


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_resume_after_interrupted_epoch_matches_uninterrupted_run(geometry, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-3, warmup_ratio=0.2)

    model, train, val = _setup(geometry)
    full = fit(model, ce, train, val, cfg, out_dir=tmp_path / "full", select_by="loss", seed=3, keep_last_state=True)

    calls = {"n": 0}

    def interrupted(logits, batch):  # 4 train steps per epoch: dies in epoch 2, step 2
        if logits.requires_grad:
            calls["n"] += 1
            if calls["n"] == 6:
                raise KeyboardInterrupt
        return ce(logits, batch)

    model, train, val = _setup(geometry)
    with pytest.raises(KeyboardInterrupt):
        fit(model, interrupted, train, val, cfg, out_dir=tmp_path / "cut", select_by="loss", seed=3)
    assert json.loads((tmp_path / "cut" / "last" / "state.json").read_text())["epoch"] == 1

    model, train, val = _setup(geometry, init_seed=99)  # fresh process: different init, overwritten
    resumed = fit(
        model, ce, train, val, cfg, out_dir=tmp_path / "cut", select_by="loss", seed=3, resume=True, keep_last_state=True
    )
    assert resumed.resumed_from == 1
    for part in ("last", "best"):
        a, b = _weights(tmp_path / "full" / part), _weights(tmp_path / "cut" / part)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
    assert [h["val"]["loss"] for h in full.history] == [h["val"]["loss"] for h in resumed.history]
    assert resumed.best_epoch == full.best_epoch


def test_resume_of_finished_run_trains_nothing(geometry, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, max_steps=1)
    model, train, val = _setup(geometry)
    fit(model, ce, train, val, cfg, out_dir=tmp_path, select_by="loss", seed=0)
    before = (tmp_path / "best" / "model.safetensors").stat().st_mtime_ns
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == ["state.json"]  # pruned when done

    def never(logits, batch):
        if logits.requires_grad:
            raise AssertionError("trained again")
        return ce(logits, batch)

    model, train, val = _setup(geometry)
    result = fit(model, never, train, val, cfg, out_dir=tmp_path, select_by="loss", seed=0, resume=True)
    assert len(result.history) == 1 and result.resumed_from == 1
    assert (tmp_path / "best" / "model.safetensors").stat().st_mtime_ns == before
    np.testing.assert_array_equal(model.predict_proba(TEXTS), load(tmp_path).predict_proba(TEXTS))


def test_extending_a_finished_run(geometry, tmp_path, caplog):
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, max_steps=1)
    model, train, val = _setup(geometry)
    fit(model, ce, train, val, cfg, out_dir=tmp_path / "kept", select_by="loss", keep_last_state=True)
    fit(model, ce, train, val, cfg, out_dir=tmp_path / "pruned", select_by="loss")
    more = TrainConfig(epochs=2, batch_size=4, lr=1e-3, max_steps=1)
    model, train, val = _setup(geometry)
    kept = fit(model, ce, train, val, more, out_dir=tmp_path / "kept", select_by="loss", resume=True)
    assert kept.resumed_from == 1 and len(kept.history) == 2
    model, train, val = _setup(geometry)
    pruned = fit(model, ce, train, val, more, out_dir=tmp_path / "pruned", select_by="loss", resume=True)
    assert pruned.resumed_from == 0 and len(pruned.history) == 2
    assert "kept no optimiser state" in caplog.text


def test_resume_with_other_settings_starts_again(geometry, tmp_path, caplog):
    model, train, val = _setup(geometry)
    fit(model, ce, train, val, TrainConfig(epochs=1, lr=1e-3, max_steps=1), out_dir=tmp_path, select_by="loss")
    model, train, val = _setup(geometry)
    result = fit(
        model, ce, train, val, TrainConfig(epochs=1, lr=2e-3, max_steps=1), out_dir=tmp_path, select_by="loss",
        resume=True,
    )
    assert result.resumed_from == 0 and "starting again from epoch 1" in caplog.text


def test_early_stopping_and_lower_is_better(geometry, tmp_path):
    model, train, val = _setup(geometry)
    cfg = TrainConfig(epochs=6, batch_size=4, lr=1e-3, max_steps=1, early_stopping_patience=2)
    flat = iter([0.5, 0.4, 0.45, 0.6, 0.1, 0.1])  # best (lowest) at epoch 2, then 2 bad epochs

    def metric(probs, targets, geometry):
        return {"semantic_distance": next(flat)}

    result = fit(model, ce, train, val, cfg, out_dir=tmp_path, select_by="semantic_distance", eval_fn=metric)
    assert result.stopped_early and len(result.history) == 4
    assert result.best_epoch == 2 and result.best_metrics["semantic_distance"] == 0.4
    assert [h["best"] for h in result.history] == [True, True, False, False]


@pytest.mark.parametrize("start, kept", [(0.05, True), (0.4, False), (0.2, False)])
def test_keep_initial_lets_the_start_compete_as_epoch_0(geometry, tmp_path, start, kept):
    """The starting model (val value ``start``) is kept only when it beats every epoch
    (0.3, 0.2, 0.25: best epoch 2); a tie goes to the epoch. Selection and patience among
    the epochs are unchanged."""
    model, train, val = _setup(geometry)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    values = iter([start, 0.3, 0.2, 0.25])

    def metric(probs, targets, geometry):
        return {"semantic_distance": next(values)}

    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, max_steps=2)
    result = fit(model, ce, train, val, cfg, out_dir=tmp_path, select_by="semantic_distance", eval_fn=metric,
                 keep_initial=True)

    assert result.initial_metrics["semantic_distance"] == start
    assert [h["best"] for h in result.history] == [True, True, False]
    assert result.best_epoch == (0 if kept else 2) and result.best_metrics["semantic_distance"] == (start if kept else 0.2)
    meta = json.loads((tmp_path / "best" / "config.json").read_text())["metadata"]
    assert meta["epoch"] == result.best_epoch and meta["metrics"] == result.best_metrics
    saved = load_file(str(tmp_path / "best" / "model.safetensors"))
    same = all(torch.equal(saved[k], before[k]) for k in saved if k in before)
    assert same is kept and all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)


def test_soft_targets_with_loss_selection(geometry, tmp_path):
    """The distillation shape: FloatTensor targets, no classification metrics, select by loss."""
    soft = torch.softmax(torch.randn(len(TEXTS), 3, 2, generator=torch.Generator().manual_seed(0)), -1)
    model, train, val = _setup(geometry, targets=soft)

    def kl(logits, batch):  # mean over teachers of KL(teacher || student)
        logp = F.log_softmax(logits, -1).unsqueeze(1)  # (B, 1, K)
        return (batch["target"] * (batch["target"].log() - logp)).sum(-1).mean()

    result = fit(model, kl, train, val, TrainConfig(epochs=2, lr=1e-3, max_steps=2), out_dir=tmp_path, select_by="loss")
    assert set(result.best_metrics) == {"loss", "n"}
    with pytest.raises(ValueError, match="select_by='macro_f1' is not a validation metric"):
        fit(model, kl, train, val, TrainConfig(epochs=1, max_steps=1), out_dir=tmp_path / "x", select_by="macro_f1")


def test_nan_loss_is_reported(geometry, tmp_path):
    model, train, val = _setup(geometry)
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, step 1"):
        fit(model, lambda lg, b: lg.sum() * float("nan"), train, val, TrainConfig(epochs=1), out_dir=tmp_path)


def test_selection_state_round_trips_through_the_saved_state():
    from knot.training import SelectionState

    s = SelectionState()
    s.update(1, 0.3, {"loss": 0.3}, lower=True)
    s.update(2, 0.4, {"loss": 0.4}, lower=True)
    s.history = [{"epoch": 1}, {"epoch": 2}]

    back = SelectionState.from_dict({**s.to_dict(), "seed": 0, "fingerprint": "x"})

    assert back == s
    assert (back.epoch, back.best_epoch, back.best_value, back.bad_epochs) == (2, 1, 0.3, 1)
    assert back.patience_exhausted(1) and not back.patience_exhausted(2) and not back.patience_exhausted(None)

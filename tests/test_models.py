"""KnotClassifier, build_model and safe checkpoints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from knot.config import ModelConfig
from knot.geometry import LabelGeometry
from knot.models import (
    build_model,
    checkpoint_hash,
    load,
    read_checkpoint_config,
    resolve_checkpoint,
    save_checkpoint,
)
from knot.utils import sha256_file

TEXTS = ["a short one", "a much longer text that goes on and on about many things", "mid length text here"]


@pytest.fixture(scope="module")
def geometry():
    return LabelGeometry.preset("sentiment5")


@pytest.fixture(scope="module")
def tiny(geometry):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="tiny", max_length=32), geometry)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(tiny, path, {"n_train": 123, "role": "local", "domain": "toy"})
    return path


def _batch(model, texts):
    enc = model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_tiny_architecture_and_logits_shape(tiny, geometry):
    cfg = tiny.encoder.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (128, 2, 2, 512)
    assert tiny.labels == geometry.labels and tiny.geometry is geometry
    ids, mask = _batch(tiny, TEXTS)
    with torch.no_grad():
        logits = tiny(ids, mask)
    assert logits.shape == (3, 5)
    assert torch.isfinite(logits).all()


def test_padding_does_not_change_logits(tiny):
    ids, mask = _batch(tiny, TEXTS)  # padded to the longest text
    with torch.no_grad():
        together = tiny(ids, mask)
        for i, text in enumerate(TEXTS):
            alone = tiny(*_batch(tiny, [text]))
            torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=1e-5)


def test_predict_proba_rows_are_distributions_in_input_order(tiny):
    texts = TEXTS * 3
    probs = tiny.predict_proba(texts, batch_size=4)  # length-sorted batches internally
    assert probs.shape == (9, 5) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([tiny.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(probs, one_by_one, atol=1e-5)
    assert not tiny.training
    assert tiny.predict_proba([]).shape == (0, 5)


def test_same_seed_same_init(geometry, tiny):
    torch.manual_seed(0)
    again = build_model(ModelConfig(encoder="tiny", max_length=32), geometry)
    for (k, a), (_, b) in zip(tiny.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_checkpoint_roundtrip_identical_logits(tiny, saved, geometry):
    loaded = load(saved)
    assert not loaded.training
    assert loaded.labels == tiny.labels and loaded.geometry == geometry
    assert loaded.max_length == 32
    assert loaded.metadata["n_train"] == 123
    ids, mask = _batch(tiny, TEXTS)
    with torch.no_grad():
        assert torch.equal(tiny(ids, mask), loaded(ids, mask))
    assert loaded.tokenizer(TEXTS)["input_ids"] == tiny.tokenizer(TEXTS)["input_ids"]


def test_checkpoint_is_data_only_and_portable(saved):
    names = sorted(os.listdir(saved))
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert all(n.endswith((".json", ".safetensors", ".txt")) for n in names), names
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["encoder"]["source"] == "tiny" and cfg["encoder"]["layers"] is None
    assert cfg["labels"] == ["1", "2", "3", "4", "5"]
    assert cfg["max_length"] == 32 and cfg["knot_version"]
    assert cfg["weights_sha256"] == sha256_file(saved / "model.safetensors")
    assert os.sep + "site-packages" not in (saved / "config.json").read_text()
    assert read_checkpoint_config(saved)["metadata"]["domain"] == "toy"


def test_checkpoint_hash_and_training_folder_resolution(saved, tmp_path, tiny):
    assert checkpoint_hash(saved) == sha256_file(saved / "model.safetensors")
    training = tmp_path / "teacher"
    save_checkpoint(tiny, training / "best", {})
    assert resolve_checkpoint(training) == training / "best"
    assert checkpoint_hash(training) == checkpoint_hash(training / "best") == checkpoint_hash(saved)
    assert load(training).labels == tiny.labels


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_give_clear_error(saved, tmp_path):
    bad = _copy(saved, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or truncated"):
        load(bad)


def test_changed_weights_fail_the_checksum(saved, tmp_path):
    bad = _copy(saved, tmp_path / "bad")
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF  # same size, one byte of a weight changed
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum does not match"):
        load(bad)


def test_corrupt_config_gives_clear_error(saved, tmp_path):
    bad = _copy(saved, tmp_path / "bad")
    text = (bad / "config.json").read_text()
    (bad / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"config\.json: corrupt checkpoint config \(invalid JSON at line"):
        load(bad)
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load(bad)


def test_missing_files_give_clear_error(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a knot checkpoint"):
        load(tmp_path / "empty")
    bad = _copy(saved, tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights missing"):
        load(bad)


def test_remote_code_config_is_refused(saved, tmp_path):
    bad = _copy(saved, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["encoder"]["hf_config"]["auto_map"] = {"AutoModel": "evil.Model"}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="remote code"):
        load(bad)


def test_interrupted_save_keeps_previous_checkpoint(tiny, saved, tmp_path, monkeypatch):
    target = _copy(saved, tmp_path / "ckpt")
    before = checkpoint_hash(target)
    tiny2 = load(saved)
    with torch.no_grad():
        tiny2.classifier.bias.add_(1.0)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny2.tokenizer, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny2, target, {})
    assert checkpoint_hash(target) == before
    load(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folders left
    monkeypatch.undo()
    save_checkpoint(tiny2, target, {})
    assert checkpoint_hash(target) != before


def test_bad_encoder_and_heads(geometry):
    with pytest.raises(ValueError, match="not 'minilm', 'tiny' or a local Hugging Face model folder"):
        build_model(ModelConfig(encoder="/no/such/folder"), geometry)
    with pytest.raises(ValueError, match="does not divide the hidden size"):
        build_model(ModelConfig(encoder="tiny", head_heads=3), geometry)
    with pytest.raises(ValueError, match="encoder_layers: 5 > the encoder's 2 layers"):
        build_model(ModelConfig(encoder="tiny", encoder_layers=5), geometry)


def test_minilm_truncated_few_batches(geometry, tmp_path):
    """The default encoder, cut to 1 layer, on one batch; checkpoint stores the name."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="minilm", encoder_layers=1, max_length=24), geometry)
    assert model.encoder.config.num_hidden_layers == 1 and len(model.encoder.encoder.layer) == 1
    assert model.encoder.config.hidden_size == 384
    probs = model.predict_proba(TEXTS, batch_size=2)
    assert probs.shape == (3, 5)
    save_checkpoint(model, tmp_path / "m", {})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["encoder"]["source"] == "minilm" and cfg["encoder"]["layers"] == 1
    np.testing.assert_array_equal(load(tmp_path / "m").predict_proba(TEXTS, batch_size=2), probs)


def test_local_folder_encoder(geometry):
    from knot.encoders import minilm_path

    model = build_model(ModelConfig(encoder=str(minilm_path()), encoder_layers=1, max_length=16), geometry)
    assert model.config_dict()["encoder"]["source"] == str(minilm_path().resolve())


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_minilm_prints_no_weight_bar_and_keeps_the_callers_setting(capfd, enabled):
    from transformers.utils import logging as hf_logging

    from knot.models import build_encoder

    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        build_encoder("minilm", layers=1)
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled() is enabled
    finally:
        hf_logging.enable_progress_bar()

"""Tests for knot.encoders: encoder names -> local folders, sentence embeddings."""

from __future__ import annotations

import pytest

from knot.encoders import embed_texts, encoder_folder, minilm_path


def test_tiny_borrows_minilm_folder_for_a_classifier():
    # 'tiny' is a random-weight BERT with MiniLM's tokenizer: its folder is MiniLM's
    assert encoder_folder("tiny") == minilm_path()
    assert encoder_folder("minilm") == minilm_path()


def test_tiny_is_refused_where_pretrained_weights_are_needed():
    with pytest.raises(ValueError, match="derived geometry: encoder 'tiny' has random weights"):
        encoder_folder("tiny", pretrained=True, where="derived geometry")
    with pytest.raises(ValueError, match="encoder 'tiny' has random weights"):
        embed_texts(["a"], encoder="tiny")


def test_a_folder_needs_a_config(tmp_path):
    with pytest.raises(ValueError, match=r"model.encoder: .* is not 'minilm', 'tiny' or a local"):
        encoder_folder(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert encoder_folder(str(tmp_path)) == tmp_path


def test_embed_texts_gives_unit_rows():
    x = embed_texts(["good", "bad"], encoder="minilm")

    assert x.shape == (2, 384)
    assert x.norm(dim=1).sub(1).abs().max() < 1e-9

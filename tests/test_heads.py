"""Heads over frozen features: TokenHead is KnotClassifier's head, PooledHead trains."""

from __future__ import annotations

import pytest
import torch

from knot.config import ModelConfig
from knot.features import FeatureCache, FeatureDataset
from knot.geometry import LabelGeometry
from knot.heads import PooledHead, TokenHead
from knot.models import build_model

TEXTS = ["a short one", "a much longer text that goes on and on", "mid length text here", "x"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(encoder="tiny", max_length=16), LabelGeometry.preset("sentiment5")).eval()


def test_token_head_over_cached_features_equals_the_classifier(model, tmp_path):
    entry = FeatureCache(tmp_path).get_or_build(
        model.encoder, model.tokenizer, TEXTS, source="tiny", max_length=16, kind="tokens", dtype="float32"
    )
    head = TokenHead(128, 5, heads=model.head_heads, dropout=0.1).load_from_classifier(model).eval()
    batch = FeatureDataset(entry).collate(range(len(TEXTS)))
    with torch.no_grad():
        got = head(batch["features"], batch["feature_mask"])  # (N, K)
        enc = model.tokenizer(TEXTS, truncation=True, max_length=16, padding=True, return_tensors="pt")
        want = model(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_token_head_ignores_padding():
    torch.manual_seed(0)
    head = TokenHead(8, 3, heads=2).eval()
    x = torch.randn(1, 3, 8)
    padded = torch.cat([x, 100 * torch.randn(1, 4, 8)], dim=1)  # (1, 7, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(head(padded, mask), head(x), rtol=1e-5, atol=1e-5)


def test_token_head_rejects_bad_heads():
    with pytest.raises(ValueError, match="head_heads"):
        TokenHead(10, 3, heads=3)


@pytest.mark.parametrize("kind", ["pooled", "tokens"])
def test_heads_fit_separable_data(kind):
    torch.manual_seed(0)
    n, h, k = 64, 16, 3
    y = torch.arange(n) % k
    centres = 3 * torch.randn(k, h)
    if kind == "pooled":
        x = centres[y] + 0.1 * torch.randn(n, h)
        head, mask = PooledHead(h, k, units=32, dropout=0.0), None
    else:
        x = torch.randn(n, 5, h)
        x[:, 0] += centres[y]
        head, mask = TokenHead(h, k, heads=2, dropout=0.0), torch.ones(n, 5, dtype=torch.long)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(head(x, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        acc = (head(x, mask).argmax(-1) == y).float().mean().item()
    assert acc == 1.0


@pytest.mark.parametrize("norm_first", [False, True])
def test_first_token_path_equals_the_full_mixer(norm_first):
    torch.manual_seed(0)
    head = TokenHead(16, 3, heads=2)
    head.mixer.norm_first = norm_first
    head.eval()
    h = torch.randn(4, 7, 16)
    pad = torch.zeros(4, 7, dtype=torch.bool)
    pad[1, 3:] = True
    pad[2, 6:] = True
    with torch.no_grad():
        full = head.mixer(h, src_key_padding_mask=pad)[:, 0]  # (B, H)
        torch.testing.assert_close(head.first_token(h, pad), full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head.first_token(h), head.mixer(h)[:, 0], rtol=1e-5, atol=1e-5)


def test_first_token_path_gradients_match_the_full_mixer():
    torch.manual_seed(0)
    head = TokenHead(16, 3, heads=2, dropout=0.0).double()
    h = torch.randn(3, 5, 16, dtype=torch.float64)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 2:] = True
    head.first_token(h, pad).sum().backward()
    fast = [p.grad.clone() for p in head.parameters() if p.grad is not None]
    head.zero_grad()
    head.mixer(h, src_key_padding_mask=pad)[:, 0].sum().backward()
    full = [p.grad.clone() for p in head.parameters() if p.grad is not None]
    assert len(fast) == len(full)
    for a, b in zip(fast, full):
        torch.testing.assert_close(a, b)

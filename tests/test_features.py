"""Feature cache: keys, hits, invalidation, damage, resume, equality with the encoder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from knot.batching import make_loader
from knot.features import (
    CacheError,
    FeatureCache,
    FeatureDataset,
    cache_clear,
    cache_info,
    cache_root,
)
from knot.models import build_encoder

TEXTS = [
    "a short one",
    "a much longer text that goes on and on about many things",
    "mid length text here",
    "x",
    "another sentence of some length",
    "great toy, my kid loves it",
    "broke after two days",
]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    enc, tok, _ = build_encoder("tiny")
    return enc.eval(), tok


@pytest.fixture(scope="module")
def tiny_other():
    torch.manual_seed(1)
    enc, tok, _ = build_encoder("tiny")
    return enc.eval(), tok


class Counting:
    """Counts forward calls of the wrapped encoder (one per batch)."""

    def __init__(self, enc):
        self.calls = 0
        self.enc = enc
        self.handle = enc.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1

    def close(self):
        self.handle.remove()


def build(cache, enc_tok, texts=TEXTS, **kw):
    enc, tok = enc_tok
    opts = dict(source="tiny", max_length=16, kind="tokens", batch_size=2)
    opts.update(kw)
    return cache.get_or_build(enc, tok, texts, **opts)


def test_tokens_equal_direct_forward(tiny, tmp_path):
    enc, tok = tiny
    entry = build(FeatureCache(tmp_path, chunk_size=3), tiny)
    assert len(entry) == len(TEXTS)
    for i, t in enumerate(TEXTS):
        b = tok([t], truncation=True, max_length=16, return_tensors="pt")
        with torch.no_grad():
            out = enc(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        want = (out.hidden_states[-1] + out.hidden_states[0])[0].numpy()  # (L, H)
        got = entry[i]
        assert got.dtype == np.float16 and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_mean_equal_direct_forward(tiny, tmp_path):
    enc, tok = tiny
    entry = build(FeatureCache(tmp_path, chunk_size=4), tiny, kind="mean")
    b = tok(TEXTS, truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = enc(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    want = ((last * m).sum(1) / m.sum(1)).numpy()  # (N, H)
    np.testing.assert_allclose(entry.mean_array(), want, rtol=2e-3, atol=2e-3)


def test_hit_does_not_encode(tiny, tmp_path):
    cache = FeatureCache(tmp_path, chunk_size=3)
    first = build(cache, tiny)
    counter = Counting(tiny[0])
    try:
        again = build(cache, tiny)
    finally:
        counter.close()
    assert counter.calls == 0
    assert again.path == first.path
    np.testing.assert_array_equal(again[1], first[1])


@pytest.mark.parametrize(
    "change",
    [
        {"max_length": 8},
        {"kind": "mean"},
        {"dtype": "float32"},
        {"texts": TEXTS[:-1] + ["broke after three days"]},
        {"texts": list(reversed(TEXTS))},
        {"source": "other"},
    ],
)
def test_key_changes_with_each_field(tiny, tmp_path, change):
    cache = FeatureCache(tmp_path)
    base = build(cache, tiny)
    kw = dict(change)
    texts = kw.pop("texts", TEXTS)
    other = build(cache, tiny, texts=texts, **kw)
    assert other.path != base.path
    assert len(cache.info()) == 2


def test_key_changes_with_weights_and_layers(tiny, tiny_other, tmp_path):
    cache = FeatureCache(tmp_path)
    base = build(cache, tiny)
    other = build(cache, tiny_other)
    assert other.path != base.path
    assert not np.allclose(other[0].astype(np.float32), base[0].astype(np.float32))
    torch.manual_seed(0)
    one_layer, tok, _ = build_encoder("tiny", layers=1)
    shallow = build(cache, (one_layer.eval(), tok))
    assert shallow.path not in (base.path, other.path)


def test_a_text_changed_under_the_same_position_is_reencoded(tiny, tmp_path):
    cache = FeatureCache(tmp_path, chunk_size=3)
    build(cache, tiny)
    changed = list(TEXTS)
    changed[4] = "a completely different review"
    entry = build(cache, tiny, texts=changed)
    fresh = build(FeatureCache(tmp_path / "fresh", chunk_size=3), tiny, texts=changed)
    np.testing.assert_array_equal(entry[4], fresh[4])


def test_truncated_data_file_is_rebuilt(tiny, tmp_path, caplog):
    cache = FeatureCache(tmp_path, chunk_size=3)
    entry = build(cache, tiny)
    want = np.array(entry[5])
    part = entry.path / "rows-000000003-000000006.npy"
    del entry
    data = part.read_bytes()
    part.write_bytes(data[: len(data) - 100])
    counter = Counting(tiny[0])
    try:
        with caplog.at_level("WARNING", logger="knot.features"):
            again = build(cache, tiny)
    finally:
        counter.close()
    assert "truncated" in caplog.text
    assert counter.calls > 0
    np.testing.assert_array_equal(again[5], want)


def test_altered_bytes_same_size_are_caught(tiny, tmp_path, caplog):
    import knot.features as features

    cache = FeatureCache(tmp_path, chunk_size=3)
    entry = build(cache, tiny)
    want = np.array(entry[0])
    part = entry.path / "rows-000000000-000000003.npy"
    del entry
    data = bytearray(part.read_bytes())
    data[-10:] = b"\x7b" * 10
    part.write_bytes(bytes(data))
    features._VERIFIED.clear()  # a new process
    with caplog.at_level("WARNING", logger="knot.features"):
        again = build(cache, tiny)
    assert "sha256" in caplog.text
    np.testing.assert_array_equal(again[0], want)


def test_corrupt_manifest_is_rebuilt(tiny, tmp_path, caplog):
    cache = FeatureCache(tmp_path, chunk_size=3)
    entry = build(cache, tiny)
    (entry.path / "manifest.json").write_text('{"key": "', encoding="utf-8")
    with caplog.at_level("WARNING", logger="knot.features"):
        again = build(cache, tiny)
    assert "corrupt manifest" in caplog.text
    assert json.loads((again.path / "manifest.json").read_text())["n"] == len(TEXTS)


def test_entry_without_manifest_is_never_read(tiny, tmp_path):
    cache = FeatureCache(tmp_path, chunk_size=3)
    entry = build(cache, tiny)
    key = entry.path.name
    (entry.path / "manifest.json").unlink()
    assert cache.open(key) is None
    assert [r["complete"] for r in cache_info(tmp_path)] == [False]


def test_resume_after_kill_encodes_only_missing_chunks(tiny, tmp_path):
    cache = FeatureCache(tmp_path, chunk_size=2)  # 7 texts: 4 chunks

    class Killed(Exception):
        pass

    seen = []

    def kill_after_two(chunk):
        seen.append(chunk.index)
        if len(seen) == 2:
            raise Killed

    with pytest.raises(Killed):
        build(cache, tiny, on_chunk=kill_after_two)
    (info,) = cache_info(tmp_path)
    assert not info["complete"]
    counter = Counting(tiny[0])
    written = []
    try:
        entry = build(cache, tiny, on_chunk=lambda c: written.append(c.index))
    finally:
        counter.close()
    assert written == [2, 3]
    assert counter.calls == 2  # batch_size 2: one batch per remaining chunk
    fresh = build(FeatureCache(tmp_path / "fresh", chunk_size=2), tiny)
    for i in range(len(TEXTS)):
        np.testing.assert_array_equal(entry[i], fresh[i])


def test_read_only_folder_is_a_clear_error(tiny, tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CacheError, match="not writable.*KNOT_CACHE"):
            build(FeatureCache(ro / "cache"), tiny)
    finally:
        ro.chmod(0o700)


def test_complete_entry_is_readable_from_a_read_only_folder(tiny, tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    cache = FeatureCache(tmp_path / "c")
    build(cache, tiny)
    (tmp_path / "c").chmod(0o500)
    try:
        assert len(build(cache, tiny)) == len(TEXTS)
    finally:
        (tmp_path / "c").chmod(0o700)


def test_token_id_inputs(tiny, tmp_path):
    enc, tok = tiny
    ids = [[101, 2000, 2001, 102], [101, 2002, 102]]
    entry = build(FeatureCache(tmp_path), tiny, texts=ids)
    with torch.no_grad():
        out = enc(input_ids=torch.tensor([ids[1]]), output_hidden_states=True)
    want = (out.hidden_states[-1] + out.hidden_states[0])[0].numpy()
    np.testing.assert_allclose(entry[1].astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_info_and_clear(tiny, tmp_path):
    cache = FeatureCache(tmp_path)
    build(cache, tiny, name="toy-train")
    build(cache, tiny, kind="mean")
    info = cache.info()
    assert sorted(r["kind"] for r in info) == ["mean", "tokens"]
    assert all(r["complete"] and r["bytes"] > 0 for r in info)
    assert cache_clear(tmp_path, [info[0]["key"]]) == 1
    assert len(cache.info()) == 1
    assert cache.clear() == 1
    assert cache.info() == []


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.delenv("KNOT_CACHE", raising=False)
    assert cache_root(tmp_path / "run") == tmp_path / "run"
    monkeypatch.setenv("KNOT_CACHE", str(tmp_path / "shared"))
    assert cache_root(tmp_path / "run") == tmp_path / "shared"


def test_dataset_batches(tiny, tmp_path):
    cache = FeatureCache(tmp_path, chunk_size=3)
    entry = build(cache, tiny)
    targets = torch.arange(len(TEXTS))
    ds = FeatureDataset(entry, targets)
    loader = make_loader(ds, 3, shuffle=True, group_by_length=True, seed=0)
    seen = []
    for batch in loader:
        feats, mask = batch["features"], batch["feature_mask"]
        assert feats.dtype == torch.float32 and feats.shape[:2] == mask.shape
        assert torch.equal(batch["target"], batch["index"])
        for row, i in enumerate(batch["index"].tolist()):
            n = int(entry.lengths[i])
            assert int(mask[row].sum()) == n
            np.testing.assert_array_equal(feats[row, :n].numpy(), entry[i].astype(np.float32))
            assert not feats[row, n:].any()
            seen.append(i)
    assert sorted(seen) == list(range(len(TEXTS)))
    mean = FeatureDataset(build(cache, tiny, kind="mean"))
    batch = mean.collate([2, 0])
    assert batch["features"].shape == (2, 128) and "feature_mask" not in batch
    with pytest.raises(ValueError, match="targets"):
        FeatureDataset(entry, torch.arange(3))


def test_unusable_folder_is_a_clear_error_even_as_root(tiny, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="not writable"):
        build(FeatureCache(blocker / "cache"), tiny)

    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(CacheError, match=r"not writable \(Permission denied\); set KNOT_CACHE"):
        build(FeatureCache(tmp_path / "cache"), tiny)


def test_resume_with_another_chunk_size_reencodes_mismatched_parts(tiny, tmp_path):
    class Killed(Exception):
        pass

    def kill(chunk):
        raise Killed

    with pytest.raises(Killed):  # chunk size 2: rows 0:2 written, then killed
        build(FeatureCache(tmp_path, chunk_size=2), tiny, on_chunk=kill)
    entry = build(FeatureCache(tmp_path, chunk_size=3), tiny)
    fresh = build(FeatureCache(tmp_path / "fresh", chunk_size=3), tiny)
    for i in range(len(TEXTS)):
        np.testing.assert_array_equal(entry[i], fresh[i])


def test_fingerprint_follows_in_place_weight_changes(tmp_path):
    from knot.features import encoder_fingerprint

    torch.manual_seed(0)
    enc, _, _ = build_encoder("tiny")
    before = encoder_fingerprint(enc, "tiny")
    assert encoder_fingerprint(enc, "tiny") == before
    with torch.no_grad():
        enc.embeddings.word_embeddings.weight[0, 0] += 1.0
    assert encoder_fingerprint(enc, "tiny") != before
    assert encoder_fingerprint(enc, "minilm") != encoder_fingerprint(enc, "tiny")


def test_concurrent_builders_encode_once(tiny, tmp_path):
    import threading

    counter = Counting(tiny[0])
    results, errors = [], []

    def worker():
        try:
            results.append(build(FeatureCache(tmp_path, chunk_size=3), tiny, batch_size=64))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        counter.close()
    assert not errors
    assert counter.calls == 3  # 7 texts, chunks of 3: one batch per chunk, encoded once
    assert results[0].path == results[1].path

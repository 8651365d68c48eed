"""Tokenisation cache, dynamic padding and length-grouped batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knot import batching
from knot.batching import (
    LengthGroupedBatchSampler,
    TextDataset,
    Tokenized,
    make_loader,
    pad_batch,
    tokenize,
    tokenizer_fingerprint,
)

# Texts of clearly different lengths (1 to 40 words).
TEXTS = [" ".join(["word"] * n) for n in [1, 40, 3, 7, 2, 25, 12, 5, 9, 30, 4, 18]]


@pytest.fixture(scope="module")
def tokenizer():
    from knot.encoders import minilm_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    batching._MEMORY_CACHE.clear()
    yield
    batching._MEMORY_CACHE.clear()


def test_pad_batch_pads_to_longest_in_batch():
    batch = pad_batch([[5, 6], [7, 8, 9, 10], [11]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 0, 0], [7, 8, 9, 10], [11, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch["input_ids"].dtype == torch.int64


def test_tokenize_truncates_and_adds_special_tokens(tokenizer):
    tok = tokenize(TEXTS, tokenizer, max_length=16)
    # "word" is one token; [CLS] and [SEP] are added; truncation keeps 16 in all.
    assert tok.lengths.tolist() == [min(n + 2, 16) for n in [1, 40, 3, 7, 2, 25, 12, 5, 9, 30, 4, 18]]
    first = tok[0].tolist()
    assert first[0] == tokenizer.cls_token_id and first[-1] == tokenizer.sep_token_id


def test_batches_are_padded_to_their_own_longest_item(tokenizer):
    ds = TextDataset(TEXTS, tokenizer, 64, torch.arange(len(TEXTS)))
    loader = make_loader(ds, batch_size=4, shuffle=True, group_by_length=False, seed=0)
    widths = []
    for batch in loader:
        lengths = ds.lengths[batch["index"].numpy()]
        assert batch["input_ids"].shape[1] == lengths.max()
        assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
        assert batch["target"].tolist() == batch["index"].tolist()
        widths.append(batch["input_ids"].shape[1])
    assert min(widths) < ds.lengths.max()  # never the dataset maximum for every batch


def test_every_item_once_and_order_depends_only_on_seed_and_epoch(tokenizer):
    ds = TextDataset(TEXTS, tokenizer, 64)
    for group in (True, False):
        loader = make_loader(ds, batch_size=3, shuffle=True, group_by_length=group, seed=7)
        orders = []
        for epoch in (0, 1, 0):
            loader.batch_sampler.set_epoch(epoch)
            order = [i for b in loader for i in b["index"].tolist()]
            assert sorted(order) == list(range(len(TEXTS)))
            orders.append(order)
        assert orders[0] == orders[2]
        assert orders[0] != orders[1]
        other = make_loader(ds, batch_size=3, shuffle=True, group_by_length=group, seed=8)
        assert [i for b in other for i in b["index"].tolist()] != orders[0]


def test_length_grouping_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=2000)

    def padded_tokens(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    grouped = LengthGroupedBatchSampler(lengths, 32, shuffle=True, seed=0).batches()
    plain = [rng.permutation(2000)[i : i + 32] for i in range(0, 2000, 32)]
    assert sorted(i for b in grouped for i in b) == list(range(2000))
    assert padded_tokens(grouped) < 0.7 * padded_tokens(plain)
    assert padded_tokens(grouped) < 0.6 * len(lengths) * lengths.max()  # vs padding to the maximum


def test_unshuffled_grouped_loader_is_longest_first_and_index_restores_order(tokenizer):
    ds = TextDataset(TEXTS, tokenizer, 64)
    loader = make_loader(ds, batch_size=5, shuffle=False, group_by_length=True)
    widths = [b["input_ids"].shape[1] for b in loader]
    assert widths == sorted(widths, reverse=True)
    index = np.concatenate([b["index"].numpy() for b in loader])
    assert sorted(index.tolist()) == list(range(len(TEXTS)))


def test_drop_last_len_matches_batches():
    s = LengthGroupedBatchSampler(np.arange(10), 4, shuffle=True, drop_last=True)
    assert len(s) == len(s.batches()) == 2
    assert all(len(b) == 4 for b in s.batches())


def test_memory_cache_reuses_result(tokenizer):
    a = tokenize(TEXTS, tokenizer, 32)
    b = tokenize(list(TEXTS), tokenizer, 32)
    c = tokenize(TEXTS, tokenizer, 16)
    assert a is b
    assert c is not a


def test_disk_cache_roundtrip_and_keys(tokenizer, tmp_path):
    a = tokenize(TEXTS, tokenizer, 32, cache_dir=tmp_path, name="toy-train")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("toy-train-L32-") and files[0].endswith(".npz")
    batching._MEMORY_CACHE.clear()
    b = tokenize(TEXTS, tokenizer, 32, cache_dir=tmp_path, name="toy-train")
    assert a is not b
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
    tokenize(TEXTS, tokenizer, 16, cache_dir=tmp_path, name="toy-train")  # other max_length
    tokenize(TEXTS[:3], tokenizer, 32, cache_dir=tmp_path, name="toy-train")  # other texts
    assert len(list(tmp_path.iterdir())) == 3


def test_corrupt_disk_cache_is_rebuilt(tokenizer, tmp_path, caplog):
    a = tokenize(TEXTS, tokenizer, 32, cache_dir=tmp_path, name="x")
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a zip file")
    batching._MEMORY_CACHE.clear()
    b = tokenize(TEXTS, tokenizer, 32, cache_dir=tmp_path, name="x")
    assert np.array_equal(a.ids, b.ids)
    assert "unreadable token cache" in caplog.text
    with np.load(path, allow_pickle=False) as z:  # rewritten
        assert np.array_equal(z["ids"], a.ids)


def test_fingerprint_is_stable_and_memoised(tokenizer):
    fp = tokenizer_fingerprint(tokenizer)
    assert fp == tokenizer_fingerprint(tokenizer) and len(fp) == 16


def test_dataset_rejects_bad_input(tokenizer):
    with pytest.raises(ValueError, match="3 texts but 2 targets"):
        TextDataset(["a", "b", "c"], tokenizer, 16, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="text 1 is NoneType"):
        TextDataset(["a", None], tokenizer, 16)


def test_tokenized_validates_offsets():
    with pytest.raises(ValueError, match="offsets"):
        Tokenized(np.arange(5), np.array([0, 2, 9]))


def test_soft_targets_are_carried(tokenizer):
    soft = torch.rand(len(TEXTS), 3, 5)
    ds = TextDataset(TEXTS, tokenizer, 32, soft)
    batch = next(iter(make_loader(ds, 4, shuffle=False, group_by_length=True)))
    assert batch["target"].shape == (4, 3, 5)
    assert torch.equal(batch["target"], soft[batch["index"]])


def test_fingerprint_ignores_what_the_tokenizer_was_called_with():
    """A tokenizer that already truncated or padded a batch has the same fingerprint as a fresh
    one: frozen-mode feature caches keyed by it were missed across runs otherwise."""
    from transformers import AutoTokenizer

    from knot.encoders import minilm_path

    fresh = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    used = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    used(["a longer sentence than seven tokens, surely", "b"], truncation=True, max_length=7, padding=True)
    assert '"truncation":null' not in used.backend_tokenizer.to_str().replace(" ", "")  # state was stored
    assert tokenizer_fingerprint(used) == tokenizer_fingerprint(fresh)

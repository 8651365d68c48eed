"""Tokenisation cache, dynamic-padding collate and a length-grouped batch sampler.

Texts are tokenised once with the encoder's fast tokenizer, truncated to
``max_length`` and stored unpadded (a flat ``int32`` array plus offsets). Each batch
is padded to the longest item *in that batch*, never to the dataset maximum; with
``group_by_length`` the batches hold texts of similar length, so there is little
padding left to pay for.

Tokenised splits are cached in memory, keyed by (tokenizer fingerprint, max_length,
texts), and optionally on disk (``cache_dir``) as ``.npz`` files holding plain integer
arrays (loaded with ``allow_pickle=False``).

>>> from knot.batching import pad_batch
>>> batch = pad_batch([[101, 7, 102], [101, 102]], pad_id=0)
>>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
([[101, 7, 102], [101, 102, 0]], [[1, 1, 1], [1, 1, 0]])
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from knot.utils import atomic_path

__all__ = [
    "Tokenized",
    "tokenize",
    "tokenizer_fingerprint",
    "TextDataset",
    "pad_batch",
    "pad_rows",
    "LengthGroupedBatchSampler",
    "SequentialBatchSampler",
    "make_loader",
]

log = logging.getLogger(__name__)

_MEMORY_CACHE: "OrderedDict[str, Tokenized]" = OrderedDict()
_MEMORY_CACHE_SIZE = 16


class Tokenized:
    """Unpadded token ids of ``n`` texts: ``ids[offsets[i]:offsets[i + 1]]`` is text ``i``.

    Parameters
    ----------
    ids : np.ndarray, shape (total_tokens,), int32
    offsets : np.ndarray, shape (n + 1,), int64
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0:
            raise ValueError("Tokenized: offsets must be 1-D and start at 0")
        if self.offsets[-1] != self.ids.size or np.any(np.diff(self.offsets) < 0):
            raise ValueError("Tokenized: offsets do not match the ids array")

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each text, shape (n,)."""
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash that changes when the tokenizer's vocabulary or rules change.

    Fast tokenizers are hashed from their full serialisation; the result is memoised on
    the tokenizer object.
    """
    cached = getattr(tokenizer, "_knot_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Calling the tokenizer with truncation/padding stores those settings in its
        # serialisation; they are per-call state, not vocabulary or rules, so they are left
        # out (else one tokenizer's fingerprint depends on what it tokenised before).
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    else:  # slow tokenizer: vocabulary and class are the best we have
        h.update(type(tokenizer).__name__.encode())
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    fp = h.hexdigest()[:16]
    try:
        tokenizer._knot_fingerprint = fp
    except AttributeError:  # pragma: no cover - objects without __dict__
        pass
    return fp


def _texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _tokenize_now(texts: Sequence[str], tokenizer: Any, max_length: int, chunk: int = 4096) -> Tokenized:
    pieces: list[np.ndarray] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        enc = tokenizer(
            part,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        for j, ids in enumerate(enc):
            lengths[start + j] = len(ids)
            pieces.append(np.asarray(ids, dtype=np.int32))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return Tokenized(ids, offsets)


def tokenize(
    texts: Sequence[str],
    tokenizer: Any,
    max_length: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> Tokenized:
    """Tokenise ``texts`` (truncated to ``max_length``), reusing a cached result.

    Parameters
    ----------
    texts : sequence of str, length N
    tokenizer : a Hugging Face tokenizer (fast tokenizers are much quicker)
    max_length : int
        Truncation length in tokens, special tokens included.
    cache_dir : path, optional
        Folder for the on-disk cache; without it only the in-memory cache is used.
    name : str, optional
        A readable prefix for the cache file (e.g. ``"apparel-train"``).

    Returns
    -------
    Tokenized
        N unpadded id sequences.
    """
    if max_length < 2:
        raise ValueError(f"max_length: expected >= 2, got {max_length}")
    key = hashlib.sha256(
        f"{tokenizer_fingerprint(tokenizer)}|{max_length}|{_texts_hash(texts)}".encode()
    ).hexdigest()[:24]
    hit = _MEMORY_CACHE.get(key)
    if hit is not None:
        _MEMORY_CACHE.move_to_end(key)
        return hit
    path = None
    if cache_dir is not None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or "texts"))
        path = Path(cache_dir) / f"{safe}-L{max_length}-{key}.npz"
    tok = None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                tok = Tokenized(z["ids"], z["offsets"])
            if len(tok) != len(texts):
                raise ValueError("length mismatch")
            log.debug("token cache hit: %s", path)
        except Exception as exc:  # a damaged cache file is rebuilt, never trusted
            log.warning("%s: unreadable token cache (%s); tokenising again", path, exc)
            tok = None
    if tok is None:
        tok = _tokenize_now(texts, tokenizer, max_length)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, ids=tok.ids, offsets=tok.offsets)
    _MEMORY_CACHE[key] = tok
    while len(_MEMORY_CACHE) > _MEMORY_CACHE_SIZE:
        _MEMORY_CACHE.popitem(last=False)
    return tok


class TextDataset(Dataset):
    """Tokenised texts with optional targets, ready for :func:`make_loader`.

    Parameters
    ----------
    texts : sequence of str, length N
    tokenizer : Hugging Face tokenizer
    max_length : int
        Truncation length in tokens.
    targets : torch.Tensor, optional
        ``LongTensor (N,)`` class indices or ``FloatTensor (N, ...)`` soft targets;
        batches carry them under ``"target"``.
    cache_dir, name : optional
        On-disk token cache (see :func:`tokenize`).
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Any,
        max_length: int,
        targets: torch.Tensor | Sequence | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        name: str | None = None,
    ) -> None:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"TextDataset: text {i} is {type(t).__name__}, expected str")
        if targets is not None:
            targets = torch.as_tensor(targets)
            if targets.shape[0] != len(texts):
                raise ValueError(
                    f"TextDataset: {len(texts)} texts but {targets.shape[0]} targets"
                )
        self.tokens = tokenize(texts, tokenizer, max_length, cache_dir=cache_dir, name=name)
        self.targets = targets
        self.max_length = max_length
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each item, shape (N,)."""
        return self.tokens.lengths

    def __getitem__(self, i: int) -> int:
        # Items are assembled by the collate function from indices: cheap and picklable.
        return int(i)

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Build one batch: ids and mask padded to the longest item, plus target and index."""
        batch = pad_batch([self.tokens[i] for i in indices], self.pad_id)
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        batch["index"] = idx
        if self.targets is not None:
            batch["target"] = self.targets[idx]
        return batch


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad id sequences to the longest one.

    Returns
    -------
    dict
        ``input_ids`` LongTensor (B, L) and ``attention_mask`` LongTensor (B, L), where L
        is the longest sequence of the batch.
    """
    ids, mask = pad_rows(seqs, pad_id, np.int64)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def pad_rows(rows: Sequence[Any], fill: float, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Stack rows of different lengths (each (n_i,) or (n_i, H)) padded with ``fill`` to the
    longest: ``(padded (B, L[, H]) of dtype, mask int64 (B, L))``.

    >>> padded, mask = pad_rows([np.ones((2, 3)), np.ones((1, 3))], 0.0, np.float32)
    >>> padded.shape, mask.tolist()
    ((2, 2, 3), [[1, 1], [1, 0]])
    """
    lengths = [len(r) for r in rows]
    width = max(lengths) if lengths else 0
    trailing = np.shape(rows[0])[1:] if rows else ()
    padded = np.full((len(rows), width, *trailing), fill, dtype=dtype)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for b, (r, n) in enumerate(zip(rows, lengths)):
        padded[b, :n] = r
        mask[b, :n] = 1
    return padded, mask


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length in a seeded random order.

    Each epoch the indices are shuffled (with ``seed + epoch``), cut into mega-batches of
    ``batch_size * mega`` items, each mega-batch is sorted by length and cut into
    batches, and the batch order is shuffled. The order depends only on
    ``(seed, epoch)``, so an interrupted run resumes with the same batches.

    Parameters
    ----------
    lengths : array (N,) of token counts
    batch_size : int
    shuffle : bool
        Without shuffling, batches are formed from the items sorted by length
        (longest first), which is the fastest order for evaluation.
    seed : int
    mega : int
        Mega-batch size in batches; larger groups lengths better but shuffles less.
    drop_last : bool
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        mega: int = 50,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size: expected >= 1")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.mega = mega
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        bs = self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            out = [order[i : i + bs].tolist() for i in range(0, n, bs)]
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(n)
            step = bs * self.mega
            out = []
            for s in range(0, n, step):
                chunk = perm[s : s + step]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                out.extend(chunk[i : i + bs].tolist() for i in range(0, len(chunk), bs))
            # Shuffle batch order; any short remainder batch stays in the list.
            out = [out[i] for i in rng.permutation(len(out))]
        if self.drop_last:
            out = [b for b in out if len(b) == bs]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.drop_last and self.shuffle:
            return len(self.batches())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


class SequentialBatchSampler(Sampler[list[int]]):
    """Batches in dataset order, or in a seeded random order per epoch (no length grouping)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError("batch_size: expected >= 1")
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        for i in range(0, self.n, self.batch_size):
            yield order[i : i + self.batch_size].tolist()

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def make_loader(
    ds: TextDataset,
    batch_size: int,
    shuffle: bool,
    group_by_length: bool = True,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader of dynamically padded batches.

    Batches are dicts with ``input_ids`` (B, L), ``attention_mask`` (B, L), ``index`` (B,)
    and, when the dataset has targets, ``target`` (B, ...). The batch sampler has
    ``set_epoch(e)``: the order of epoch ``e`` depends only on ``(seed, e)``.

    With ``group_by_length`` and no shuffling, batches come longest first (evaluation);
    use each batch's ``index`` to put outputs back in dataset order.
    """
    if group_by_length:
        sampler: Sampler = LengthGroupedBatchSampler(ds.lengths, batch_size, shuffle=shuffle, seed=seed)
    else:
        sampler = SequentialBatchSampler(len(ds), batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate, num_workers=0)

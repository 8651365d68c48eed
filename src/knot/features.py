"""Frozen-encoder features: encode every text once, cache on disk, train only a head.

A :class:`FeatureCache` holds content-addressed *entries*. An entry's key is the SHA-256
of everything its features depend on: the encoder's identity (a hash of its weights,
its source name and layer count), the tokenizer, ``max_length``, the ``kind`` of
feature, the dtype and the inputs themselves (order-sensitive). Any change to one of
them is a different entry, so a stale feature is never returned for changed inputs.

Kinds:

- ``"mean"``: the attention-masked mean of the last hidden state, ``(N, H)`` (the
  sentence embedding of all-MiniLM-L6-v2, before its L2 normalisation);
- ``"tokens"``: for every real token (no padding), the last hidden state plus the
  embedding-layer output, i.e. exactly what :class:`knot.heads.TokenHead` (KNOT's head)
  feeds to its LayerNorm; ragged, ``(total_tokens, H)`` with ``lengths (N,)``.

On disk an entry is a folder ``ROOT/<key[:32]>/``::

    rows-000000000-000001024.npy          inputs 0:1024: (1024, H) for "mean",
                                          (tokens, H) for "tokens"
    rows-000000000-000001024.lengths.npy  "tokens" only: int64 (1024,) tokens per input
    rows-000001024-000002048.npy ...
    manifest.json                         written last: key fields, shapes, byte sizes,
                                          sha256 of every data file

Part files are named by the rows they hold, so a build resumed with another chunk size
never mistakes a part for one it is not.

Writing is streamed: inputs are encoded ``chunk_size`` at a time and each finished
chunk is written as its own files (temporary name, then rename), so memory stays flat
in the number of texts and a killed encoding resumes from its finished chunks. The
manifest is written last, atomically: an entry without one is incomplete and is never
read. On open, every data file's size is checked against the manifest (cheap, every
time) and its SHA-256 once per process (a truncated or altered file is caught before
its bytes are used); a mismatch logs a warning, deletes the entry and rebuilds it.

The cache root is ``$KNOT_CACHE`` when set, else a default chosen by the caller (see
:func:`cache_root`), so several runs can share one cache. Builds of one entry are
serialised by an exclusive ``flock`` on ``ROOT/.<key>.lock`` (POSIX), so two runs
sharing a cache encode a text set once. A folder that is not writable is an error
(:class:`CacheError`, one line naming the folder and ``KNOT_CACHE``) rather than a
silent fall-back to a temporary folder, which would re-encode on every run and hide
the misconfiguration; complete entries in a read-only folder are still read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from knot.batching import pad_batch, pad_rows
from knot.locking import file_lock
from knot.progress import progress as progress_bar
from knot.utils import atomic_path, atomic_write_json, sha256_file, sha256_json

__all__ = [
    "CACHE_ENV",
    "FEATURE_FORMAT",
    "KINDS",
    "CacheError",
    "FeatureChunk",
    "FeatureEntry",
    "FeatureCache",
    "FeatureDataset",
    "cache_root",
    "run_feature_cache",
    "encoder_fingerprint",
    "inputs_hash",
    "encode_texts",
    "cache_info",
    "cache_clear",
    "encoding_stats",
    "encoding_delta",
]

log = logging.getLogger(__name__)

CACHE_ENV = "KNOT_CACHE"
FEATURE_FORMAT = 1
KINDS = ("tokens", "mean")
DTYPES = ("float16", "float32")
MANIFEST = "manifest.json"
_VERIFIED: set[tuple] = set()  # (path, size, mtime_ns, sha256) checked in this process
# Encoding work done in this process (stage summaries report the difference).
_STATS = {"texts_encoded": 0, "seconds": 0.0, "cache_hits": 0, "entries_built": 0}


def encoding_stats() -> dict:
    """Totals for this process: ``texts_encoded`` (cache misses), encoding ``seconds``,
    ``cache_hits`` (entries served from the cache) and ``entries_built``.

    >>> sorted(encoding_stats())
    ['cache_hits', 'entries_built', 'seconds', 'texts_encoded']
    """
    return dict(_STATS)


def encoding_delta(before: dict, after: dict | None = None) -> dict:
    """The encoding done between two :func:`encoding_stats` snapshots, with the
    throughput ``texts_per_s`` (null when nothing was encoded).

    >>> encoding_delta({"texts_encoded": 0, "seconds": 0.0, "cache_hits": 0, "entries_built": 0},
    ...                {"texts_encoded": 32, "seconds": 2.0, "cache_hits": 1, "entries_built": 1})
    {'texts_encoded': 32, 'seconds': 2.0, 'texts_per_s': 16.0, 'cache_hits': 1, 'entries_built': 1}
    """
    after = encoding_stats() if after is None else after
    n = int(after["texts_encoded"] - before["texts_encoded"])
    sec = round(float(after["seconds"] - before["seconds"]), 3)
    return {
        "texts_encoded": n,
        "seconds": sec,
        "texts_per_s": round(n / sec, 2) if n and sec > 0 else None,
        "cache_hits": int(after["cache_hits"] - before["cache_hits"]),
        "entries_built": int(after["entries_built"] - before["entries_built"]),
    }


class CacheError(RuntimeError):
    """The feature cache cannot be used (e.g. its folder is not writable)."""


def cache_root(default: str | os.PathLike) -> Path:
    """The feature cache folder: ``$KNOT_CACHE`` when set and non-empty, else ``default``.

    >>> import os
    >>> expected = os.environ.get("KNOT_CACHE", "").strip() or "runs/x/features"
    >>> cache_root("runs/x/features") == Path(expected).expanduser()
    True
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path(default)


def run_feature_cache(layout: Any) -> "FeatureCache":
    """The feature cache of a run: ``$KNOT_CACHE`` when set, else ``layout.features``
    (``RUN/features``, :class:`knot.layout.RunLayout`)."""
    return FeatureCache(cache_root(layout.features))


# ---------------------------------------------------------------------------
# identities and keys
# ---------------------------------------------------------------------------


def encoder_fingerprint(encoder: nn.Module, source: str = "", layers: int | None = None) -> str:
    """Hex SHA-256 of an encoder's identity: every parameter and buffer (name, dtype,
    shape, bytes, in state_dict order), its source name and its layer count.

    Two encoders with different weights, truncated to a different depth or loaded from a
    different source never share a fingerprint. Memoised on the module (the weights of a
    frozen encoder do not change); about 0.2 s for MiniLM's 90 MB.
    """
    n_layers = layers if layers is not None else getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    # Parameters' version counters move on every in-place update (an optimiser step),
    # so the memo never outlives a change of weights.
    versions = tuple(t._version for t in encoder.state_dict().values())
    memo = getattr(encoder, "_knot_feature_fp", None)
    if memo is not None and memo[0] == (source, n_layers, versions):
        return memo[1]
    h = hashlib.sha256()
    h.update(f"{source}|{n_layers}|".encode())
    for name, t in encoder.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    fp = h.hexdigest()
    try:
        encoder._knot_feature_fp = ((source, n_layers, versions), fp)
    except AttributeError:  # pragma: no cover
        pass
    return fp


def _is_ids(inputs: Any) -> bool:
    return len(inputs) > 0 and not isinstance(inputs[0], str)


def inputs_hash(inputs: Sequence[str] | Sequence[Sequence[int]]) -> str:
    """Order-sensitive hex SHA-256 of texts (UTF-8) or of token-id sequences.

    Each item is length-prefixed, so ``["ab", "c"]`` and ``["a", "bc"]`` differ; texts
    and id sequences hash under different prefixes.

    >>> inputs_hash(["ab", "c"]) != inputs_hash(["a", "bc"])
    True
    """
    h = hashlib.sha256()
    if _is_ids(inputs):
        h.update(b"ids|")
        for ids in inputs:
            b = np.asarray(ids, dtype=np.int64).tobytes()
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    else:
        h.update(b"texts|")
        for t in inputs:
            if not isinstance(t, str):
                raise ValueError(f"features: expected str texts, got {type(t).__name__}")
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------


@dataclass
class FeatureChunk:
    """Features of inputs ``start:stop`` in input order.

    ``data`` is (n, H) for ``"mean"``; for ``"tokens"`` it is (sum(lengths), H), text
    ``i`` at rows ``offsets[i]:offsets[i + 1]`` with ``offsets = [0, *cumsum(lengths)]``.
    """

    index: int
    start: int
    stop: int
    data: np.ndarray
    lengths: np.ndarray | None = None


def _chunk_ids(tokenizer: Any, inputs: Sequence, start: int, stop: int, max_length: int) -> list[np.ndarray]:
    part = inputs[start:stop]
    if _is_ids(inputs):
        out = [np.asarray(ids, dtype=np.int64)[:max_length] for ids in part]
        if any(a.ndim != 1 or a.size == 0 for a in out):
            raise ValueError("features: every token-id input must be a non-empty 1-D sequence")
        return out
    enc = tokenizer(
        list(part),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    return [np.asarray(ids, dtype=np.int64) for ids in enc]


def encode_texts(
    encoder: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_length: int,
    kind: str = "tokens",
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = False,
    chunk_size: int = 1024,
    skip: Callable[[int], bool] | None = None,
    dtype: str = "float16",
) -> Iterator[FeatureChunk]:
    """Encode ``texts`` with a frozen encoder, ``chunk_size`` at a time.

    Inside a chunk the texts are sorted by length and cut into batches of
    ``batch_size`` padded to their own longest text; outputs return to input order.
    Runs under ``torch.inference_mode`` with the encoder in eval mode (no dropout).

    Parameters
    ----------
    encoder : Hugging Face encoder (``output_hidden_states`` supported)
    tokenizer : its tokenizer (unused when ``texts`` are already token-id sequences)
    texts : N strings, or N token-id sequences (e.g. the random-token bias inputs)
    max_length : int
        Truncation length in tokens, special tokens included.
    kind : ``"tokens"`` or ``"mean"`` (see the module docstring)
    batch_size, device, progress : inference batch size, where to run, a progress bar
    chunk_size : inputs per yielded chunk
    skip : callable, optional
        ``skip(chunk_index)`` true: the chunk is not encoded (already cached).
    dtype : ``"float16"`` (default) or ``"float32"``, the dtype of the yielded arrays

    Yields
    ------
    FeatureChunk
        One per chunk not skipped, in order.
    """

    if kind not in KINDS:
        raise ValueError(f"features: kind must be one of {KINDS}, got {kind!r}")
    if dtype not in DTYPES:
        raise ValueError(f"features: dtype must be one of {DTYPES}, got {dtype!r}")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError("features: chunk_size and batch_size must be >= 1")
    dev = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval().to(dev)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad) if pad is not None else 0
    np_dtype = np.dtype(dtype)
    n = len(texts)
    n_chunks = -(-n // chunk_size)
    bar = progress_bar(n, "encode", "text", enabled=None if progress else False)
    t0, done = time.perf_counter(), 0
    try:
        for c in range(n_chunks):
            start, stop = c * chunk_size, min(n, (c + 1) * chunk_size)
            if skip is not None and skip(c):
                bar.update(stop - start)
                continue
            ids = _chunk_ids(tokenizer, texts, start, stop, max_length)
            lengths = np.array([len(s) for s in ids], dtype=np.int64)  # (n_c,)
            if kind == "mean":
                out = np.empty((stop - start, 0), dtype=np_dtype)
            else:
                offsets = np.zeros(len(ids) + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                out = np.empty((int(offsets[-1]), 0), dtype=np_dtype)
            order = np.argsort(-lengths, kind="stable")
            with torch.inference_mode():
                for b in range(0, len(order), batch_size):
                    rows = order[b : b + batch_size]
                    batch = pad_batch([ids[r] for r in rows], pad_id)
                    input_ids = batch["input_ids"].to(dev)  # (B, L)
                    mask = batch["attention_mask"].to(dev)  # (B, L)
                    res = encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=kind == "tokens")
                    if kind == "mean":
                        last = res.last_hidden_state.float()  # (B, L, H)
                        m = mask.unsqueeze(-1).float()  # (B, L, 1)
                        feats = (last * m).sum(1) / m.sum(1).clamp(min=1)  # (B, H)
                        feats = feats.cpu().numpy()
                        if out.shape[1] == 0:
                            out = np.empty((stop - start, feats.shape[1]), dtype=np_dtype)
                        out[rows] = feats.astype(np_dtype)
                    else:
                        h = (res.hidden_states[-1] + res.hidden_states[0]).float().cpu().numpy()  # (B, L, H)
                        if out.shape[1] == 0:
                            out = np.empty((int(offsets[-1]), h.shape[-1]), dtype=np_dtype)
                        for j, r in enumerate(rows):
                            out[offsets[r] : offsets[r + 1]] = h[j, : lengths[r]].astype(np_dtype)
            if not np.isfinite(out).all():
                raise ValueError(
                    f"features: chunk {c} has values outside the {dtype} range; use dtype='float32'"
                )
            done += stop - start
            bar.update(stop - start)
            yield FeatureChunk(c, start, stop, out, lengths if kind == "tokens" else None)
    finally:
        bar.close()
        encoder.train(was_training)
    seconds = time.perf_counter() - t0
    if done:
        log.info("encoded %d texts in %.1f s (%.1f texts/s)", done, seconds, done / max(seconds, 1e-9))


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _part_name(start: int, stop: int) -> str:
    return f"rows-{start:09d}-{stop:09d}.npy"


def _lengths_name(start: int, stop: int) -> str:
    return f"rows-{start:09d}-{stop:09d}.lengths.npy"


class FeatureEntry:
    """A complete cache entry, memory-mapped read-only.

    Attributes
    ----------
    path : Path
    manifest : dict
    kind : str
    n : int
        Number of inputs.
    hidden : int
    lengths : np.ndarray (N,) int64
        Token count per input (``"tokens"``), ones for ``"mean"``.
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.kind = manifest["kind"]
        self.n = int(manifest["n"])
        self.hidden = int(manifest["hidden"])
        self.chunk_size = int(manifest["chunk_size"])
        self._parts = [np.load(self.path / p["data"]["file"], mmap_mode="r", allow_pickle=False) for p in manifest["parts"]]
        for p, arr in zip(manifest["parts"], self._parts):
            if list(arr.shape) != list(p["shape"]) or arr.dtype != np.dtype(manifest["dtype"]):
                raise ValueError(f"{p['data']['file']}: {arr.dtype}{list(arr.shape)}, manifest says {manifest['dtype']}{p['shape']}")
        if sum(int(p["n"]) for p in manifest["parts"]) != self.n:
            raise ValueError(f"parts hold {sum(int(p['n']) for p in manifest['parts'])} inputs, manifest says {self.n}")
        if self.kind == "tokens":
            lens = [np.load(self.path / p["lengths"]["file"], allow_pickle=False) for p in manifest["parts"]]
            self.lengths = np.concatenate(lens) if lens else np.zeros(0, np.int64)
            self._offsets = []
            for ln in lens:
                off = np.zeros(len(ln) + 1, dtype=np.int64)
                np.cumsum(ln, out=off[1:])
                self._offsets.append(off)
        else:
            self.lengths = np.ones(self.n, dtype=np.int64)
        if self.lengths.shape[0] != self.n:
            raise ValueError(f"{self.path}: {self.lengths.shape[0]} lengths for {self.n} inputs")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        """Features of input ``i``: (H,) for ``"mean"``, (L_i, H) for ``"tokens"`` (a
        read-only view of the memory map, in the stored dtype)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        c, j = divmod(int(i), self.chunk_size)
        if self.kind == "mean":
            return self._parts[c][j]
        off = self._offsets[c]
        return self._parts[c][off[j] : off[j + 1]]

    def mean_array(self) -> np.ndarray:
        """All ``"mean"`` features as one (N, H) float32 array (small: N x H)."""
        if self.kind != "mean":
            raise ValueError("mean_array: entry holds token states")
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in self._parts]) if self._parts else np.zeros((0, self.hidden), np.float32)


# ---------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------


class FeatureCache:
    """Content-addressed, resumable on-disk cache of frozen-encoder features.

    Parameters
    ----------
    root : path
        Cache folder (see :func:`cache_root`); created on the first write.
    chunk_size : int
        Inputs per part file (and per resumable step).
    verify : ``"sha256"`` or ``"size"``
        ``"sha256"``: hash every data file once per process before first use (default);
        ``"size"``: check byte sizes only.
    """

    def __init__(self, root: str | os.PathLike, *, chunk_size: int = 1024, verify: str = "sha256") -> None:
        if verify not in ("sha256", "size"):
            raise ValueError("FeatureCache: verify must be 'sha256' or 'size'")
        self.root = Path(root)
        self.chunk_size = int(chunk_size)
        self.verify = verify

    # -- keys ------------------------------------------------------------------

    @staticmethod
    def key_fields(
        encoder: nn.Module,
        tokenizer: Any,
        inputs: Sequence,
        *,
        source: str,
        layers: int | None,
        max_length: int,
        kind: str,
        dtype: str = "float16",
    ) -> dict:
        """Everything an entry's features depend on (hashed into its key)."""
        from knot.batching import tokenizer_fingerprint

        if kind not in KINDS:
            raise ValueError(f"features: kind must be one of {KINDS}, got {kind!r}")
        if dtype not in DTYPES:
            raise ValueError(f"features: dtype must be one of {DTYPES}, got {dtype!r}")
        n_layers = layers if layers is not None else getattr(encoder.config, "num_hidden_layers", None)
        return {
            "format": FEATURE_FORMAT,
            "encoder": encoder_fingerprint(encoder, source, n_layers),
            "source": source,
            "layers": n_layers,
            "tokenizer": tokenizer_fingerprint(tokenizer) if not _is_ids(inputs) else None,
            "max_length": int(max_length),
            "kind": kind,
            "dtype": dtype,
            "inputs": inputs_hash(inputs),
            "n": len(inputs),
        }

    @staticmethod
    def key(fields: dict) -> str:
        return sha256_json(fields)[:32]

    # -- entries -----------------------------------------------------------------

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe.", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise CacheError(
                f"{self.root}: feature cache folder is not writable ({exc.strerror or exc}); "
                f"set {CACHE_ENV} to a writable folder"
            ) from None

    def open(self, key: str) -> FeatureEntry | None:
        """The complete entry ``key``, verified; ``None`` when absent or incomplete.

        Raises
        ------
        ValueError
            The entry exists but a file does not match its manifest (the message says
            which); :meth:`get_or_build` deletes and rebuilds it.
        """
        path = self.root / key
        mfile = path / MANIFEST
        if not mfile.is_file():
            return None
        try:
            manifest = json.loads(mfile.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or manifest.get("key") != key:
                raise ValueError("manifest does not name this entry")
            files = [p["data"] for p in manifest["parts"]]
            if manifest["kind"] == "tokens":
                files += [p["lengths"] for p in manifest["parts"]]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{mfile}: corrupt manifest ({exc})") from None
        for f in files:
            fp = path / f["file"]
            try:
                st = fp.stat()
            except OSError:
                raise ValueError(f"{fp}: data file missing") from None
            if st.st_size != f["bytes"]:
                raise ValueError(f"{fp}: {st.st_size} bytes, manifest says {f['bytes']} (truncated or altered)")
            if self.verify == "sha256":
                tag = (str(fp), st.st_size, st.st_mtime_ns, f["sha256"])
                if tag not in _VERIFIED:
                    if sha256_file(fp) != f["sha256"]:
                        raise ValueError(f"{fp}: sha256 does not match the manifest (altered)")
                    _VERIFIED.add(tag)
        try:
            return FeatureEntry(path, manifest)
        except (ValueError, OSError, KeyError) as exc:
            raise ValueError(f"{path}: unreadable entry ({exc})") from None

    def get_or_build(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        source: str,
        layers: int | None = None,
        max_length: int,
        kind: str = "tokens",
        dtype: str = "float16",
        batch_size: int = 64,
        device: torch.device | str | None = None,
        progress: bool = False,
        name: str | None = None,
        on_chunk: Callable[[FeatureChunk], None] | None = None,
    ) -> FeatureEntry:
        """The entry for these inputs, encoding (or finishing) it when needed.

        A complete, verified entry is returned as is (a hit). Otherwise finished part
        files of an interrupted build are kept and only the missing chunks are encoded;
        the manifest is written last. A damaged entry is deleted (with a warning) and
        rebuilt.

        Parameters
        ----------
        encoder, tokenizer : the frozen encoder and its tokenizer
        inputs : N texts, or N token-id sequences (the bias inputs)
        source, layers : how the encoder was built (part of its identity)
        max_length, kind, dtype : see :func:`encode_texts`
        name : str, optional
            A readable label stored in the manifest (e.g. ``"apparel-train"``).
        on_chunk : callable, optional
            Called after each chunk is written (progress hooks; tests).

        Raises
        ------
        CacheError
            The entry must be built and the cache folder is not writable.
        """
        inputs = list(inputs)
        fields = self.key_fields(
            encoder, tokenizer, inputs, source=source, layers=layers, max_length=max_length, kind=kind, dtype=dtype
        )
        key = self.key(fields)
        path = self.root / key
        try:
            entry = self.open(key)
        except ValueError:
            entry = None  # damaged: deleted and rebuilt below, under the build lock only
        if entry is not None:
            log.debug("feature cache hit: %s (%s)", path, name or key)
            _STATS["cache_hits"] += 1
            return entry
        self._check_writable()
        with file_lock(self.root / f".{key}.lock"):
            try:  # another process may have finished it while we waited
                entry = self.open(key)
            except ValueError as exc:
                log.warning("%s; deleting the cache entry and encoding again", exc)
                shutil.rmtree(path, ignore_errors=True)
                entry = None
            if entry is not None:
                _STATS["cache_hits"] += 1
                return entry
            return self._build(
                key, fields, encoder, tokenizer, inputs, max_length=max_length, kind=kind, dtype=dtype,
                batch_size=batch_size, device=device, progress=progress, name=name, on_chunk=on_chunk,
            )

    def _build(
        self, key, fields, encoder, tokenizer, inputs, *, max_length, kind, dtype, batch_size, device, progress,
        name, on_chunk,
    ) -> FeatureEntry:
        path = self.root / key
        path.mkdir(parents=True, exist_ok=True)
        n_chunks = -(-len(inputs) // self.chunk_size)
        expect = [min(len(inputs), (c + 1) * self.chunk_size) - c * self.chunk_size for c in range(n_chunks)]

        def finished(c: int) -> bool:
            return _part_ok(path, c * self.chunk_size, c * self.chunk_size + expect[c], kind)

        todo = [c for c in range(n_chunks) if not finished(c)]
        if len(todo) < n_chunks:
            log.info("%s: resuming, %d of %d chunks already encoded", path, n_chunks - len(todo), n_chunks)
        todo_set = set(todo)
        t0 = time.perf_counter()
        n_encoded = 0
        for chunk in encode_texts(
            encoder,
            tokenizer,
            inputs,
            max_length=max_length,
            kind=kind,
            batch_size=batch_size,
            device=device,
            progress=progress,
            chunk_size=self.chunk_size,
            skip=lambda c: c not in todo_set,
            dtype=dtype,
        ):
            _write_part(path, chunk)
            n_encoded += chunk.stop - chunk.start
            if on_chunk is not None:
                on_chunk(chunk)
        _STATS["texts_encoded"] += n_encoded
        _STATS["seconds"] += time.perf_counter() - t0
        _STATS["entries_built"] += 1
        parts = []
        hidden = None
        for c in range(n_chunks):
            start = c * self.chunk_size
            stop = start + expect[c]
            data = path / _part_name(start, stop)
            arr = np.load(data, mmap_mode="r", allow_pickle=False)
            hidden = int(arr.shape[1])
            part = {"data": _file_record(path, data), "shape": list(arr.shape), "n": expect[c]}
            if kind == "tokens":
                part["lengths"] = _file_record(path, path / _lengths_name(start, stop))
            parts.append(part)
            del arr
        if hidden is None:  # no inputs: the hidden size from the encoder
            hidden = int(encoder.config.hidden_size)
        manifest = {
            "key": key,
            "name": name,
            **fields,
            "hidden": hidden,
            "chunk_size": self.chunk_size,
            "parts": parts,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(path / MANIFEST, manifest)
        for f in parts:  # just hashed from the bytes written: no need to hash again
            for rec in (f["data"], f.get("lengths")):
                if rec:
                    st = (path / rec["file"]).stat()
                    _VERIFIED.add((str(path / rec["file"]), st.st_size, st.st_mtime_ns, rec["sha256"]))
        return self.open(key)

    # -- housekeeping --------------------------------------------------------------

    def info(self) -> list[dict]:
        """One dict per entry folder: key, name, complete, bytes, n, kind, source, layers,
        max_length, dtype, created (see :func:`cache_info`)."""
        return cache_info(self.root)

    def clear(self, keys: Sequence[str] | None = None) -> int:
        """Delete all entries (or those in ``keys``); returns the number deleted."""
        return cache_clear(self.root, keys)


def _part_ok(path: Path, start: int, stop: int, kind: str) -> bool:
    """A part written by an earlier (possibly killed) build is usable: its files exist,
    parse as .npy and have the expected shapes. Writes are renames, so a present file is
    whole unless altered afterwards, which the manifest's sha256 then catches."""
    n = stop - start
    data = path / _part_name(start, stop)
    if not data.is_file():
        return False
    try:
        arr = np.load(data, mmap_mode="r", allow_pickle=False)
        if kind == "mean":
            return arr.ndim == 2 and arr.shape[0] == n
        lfile = path / _lengths_name(start, stop)
        if not lfile.is_file():
            return False
        lengths = np.load(lfile, allow_pickle=False)
        return arr.ndim == 2 and lengths.shape == (n,) and int(lengths.sum()) == arr.shape[0]
    except (ValueError, OSError):
        return False


def _write_part(path: Path, chunk: FeatureChunk) -> None:
    # Data first, lengths last: for "tokens" a part counts only when both exist.
    with atomic_path(path / _part_name(chunk.start, chunk.stop)) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, chunk.data)
    if chunk.lengths is not None:
        with atomic_path(path / _lengths_name(chunk.start, chunk.stop)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, chunk.lengths)


def _file_record(root: Path, file: Path) -> dict:
    return {"file": file.name, "bytes": file.stat().st_size, "sha256": sha256_file(file)}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cache_info(root: str | os.PathLike) -> list[dict]:
    """Entries of the cache at ``root`` (for ``knot cache info``), largest first.

    Each dict: ``key``, ``complete`` (has a manifest), ``bytes`` on disk, and from the
    manifest ``name``, ``n``, ``kind``, ``source``, ``layers``, ``max_length``,
    ``dtype``, ``created``. Incomplete entries are interrupted builds (resumable).
    """
    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rec: dict = {"key": d.name, "complete": False, "bytes": _dir_bytes(d)}
        m = d / MANIFEST
        if m.is_file():
            try:
                man = json.loads(m.read_text(encoding="utf-8"))
                rec["complete"] = True
                for k in ("name", "n", "kind", "source", "layers", "max_length", "dtype", "created"):
                    rec[k] = man.get(k)
            except (ValueError, UnicodeDecodeError):
                rec["complete"] = False
                rec["error"] = "corrupt manifest"
        out.append(rec)
    out.sort(key=lambda r: -r["bytes"])
    return out


def cache_clear(root: str | os.PathLike, keys: Sequence[str] | None = None) -> int:
    """Delete the entries ``keys`` (default: all) of the cache at ``root``; returns how
    many were deleted. Only entry folders (32 hex digits) are touched."""
    root = Path(root)
    if not root.is_dir():
        return 0
    wanted = set(keys) if keys is not None else None
    n = 0
    for d in root.iterdir():
        if d.is_dir() and re.fullmatch(r"[0-9a-f]{32}", d.name) and (wanted is None or d.name in wanted):
            shutil.rmtree(d)
            n += 1
    return n


# ---------------------------------------------------------------------------
# training data
# ---------------------------------------------------------------------------


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features with optional targets, a drop-in for
    :class:`knot.batching.TextDataset` in :func:`knot.batching.make_loader` (it has
    ``lengths``, ``__len__`` and ``collate``).

    Batches: ``features`` float32 (B, L, H) and ``feature_mask`` long (B, L) for
    ``"tokens"`` (padded to the longest item of the batch), or ``features`` (B, H) for
    ``"mean"``; plus ``index`` (B,) and ``target`` when given.

    Parameters
    ----------
    entry : FeatureEntry
    targets : tensor (N,) or (N, ...), optional
    """

    def __init__(self, entry: FeatureEntry, targets: torch.Tensor | Sequence | None = None) -> None:
        if targets is not None:
            targets = torch.as_tensor(targets)
            if targets.shape[0] != len(entry):
                raise ValueError(f"FeatureDataset: {len(entry)} feature rows but {targets.shape[0]} targets")
        self.entry = entry
        self.targets = targets
        self._mean = torch.from_numpy(entry.mean_array()) if entry.kind == "mean" else None  # (N, H)

    def __len__(self) -> int:
        return len(self.entry)

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each item (ones for ``"mean"``), shape (N,)."""
        return self.entry.lengths

    def __getitem__(self, i: int) -> int:
        return int(i)

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if self._mean is not None:
            batch = {"features": self._mean[idx]}  # (B, H)
        else:
            feats, mask = pad_rows([self.entry[int(i)] for i in indices], 0.0, np.float32)  # (B, L, H), (B, L)
            batch = {"features": torch.from_numpy(feats), "feature_mask": torch.from_numpy(mask)}
        batch["index"] = idx
        if self.targets is not None:
            batch["target"] = self.targets[idx]
        return batch

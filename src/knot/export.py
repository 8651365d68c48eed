"""A model that leaves knot: ONNX export, its model card, and a torch-free predictor.

:func:`export_checkpoint` turns any knot checkpoint (a teacher, the global model, a student;
fine-tuned or frozen-encoder with a pooled or token head) into a self-describing folder::

    DIR/
      model.onnx        input_ids, attention_mask, token_type_ids (int64, (batch, length),
                        both dynamic) -> probs (float32, (batch, K)): encoder, pooling and
                        head in one graph
      model.int8.onnx   only with ``quantize="int8"`` (dynamic quantisation), with its
                        measured quality cost printed and written into the card
      tokenizer.json, tokenizer_config.json, ...   the tokenizer files
      config.json       id2label, label2id, the label geometry, max_length, the encoder's
                        name and fingerprint, knot's version, the source checkpoint
      README.md         the model card

The graph is exported from the torch model with ``torch.onnx.export(dynamo=True)`` (needs
``onnxscript``) after switching the encoder to eager attention: exported with its default
SDPA attention, MiniLM gave wrong outputs at other sequence lengths (min cosine 0.89 to
torch). A frozen-encoder model's graph rounds its features to float16, as the feature cache
the head was trained on stores them, so the graph computes what knot's torch
``predict_proba`` computes. Every export is checked before it is kept: onnxruntime's
probabilities on probe texts of several lengths must equal torch's within
:data:`PARITY_ATOL`, else nothing is written.

:class:`OnnxPredictor` serves such a folder with onnxruntime, ``tokenizers`` and numpy
only (the ``onnx`` extra: ``pip install "knot[onnx]"``); it follows the
:class:`knot.predictor.Predictor` contract, so ``knot.load(DIR)`` returns it. This module
imports neither torch nor knot's training code at module level.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from knot import __version__
from knot.predictor import Predictor

__all__ = [
    "EXPORT_FORMAT",
    "FORMATS",
    "LICENCES",
    "PARITY_ATOL",
    "OnnxPredictor",
    "export_checkpoint",
    "find_run",
    "run_test_sets",
    "quality_delta",
]

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
FORMATS = ("onnx",)
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CONFIG = "config.json"
CARD = "README.md"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Largest |onnxruntime - torch| probability an export may show on its probe texts.
PARITY_ATOL = 1e-4
EXTRA_HINT = 'pip install "knot[onnx]"'

#: Licence of the data each reader reads (the datasets folder's PROVENANCE.md, the
#: built-in VADER data's LICENSE.txt); ``jsonl``/``csv`` are the user's own files.
LICENCES: dict[str, str] = {
    "vader": "MIT (Hutto & Gilbert, ICWSM 2014; cite them)",
    "marc": "Amazon MARC licence: non-commercial academic research only; no commercial use, "
            "resale or republication of the reviews",
    "amazon": "Amazon MARC licence: non-commercial academic research only; no commercial use, "
              "resale or republication of the reviews",
    "meld": "GPL-3.0 (the MELD repository; dialogues from the TV series Friends)",
    "emorynlp": "GPL-3.0 (the repository it comes from; the original states no licence)",
    "silicone": "CC BY-NC-SA 4.0 (DailyDialog): non-commercial",
    "goemotions": "Apache-2.0",
    "sst": "no licence stated (Stanford NLP, distributed for research)",
    "jsonl": "your own data: its licence binds the model",
    "csv": "your own data: its licence binds the model",
}
#: Licence of the encoders knot names (a local folder's licence is its own).
ENCODER_LICENCES = {
    "minilm": "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
    "tiny": "none (random weights with MiniLM's tokenizer, Apache-2.0)",
}
#: Texts the export check runs through torch and onnxruntime: 1 to max_length tokens.
PROBE_TEXTS = (
    "ok",
    "The film was far better than I expected.",
    "Terrible service, cold food, and a very long wait; I will not be back.",
    " ".join(["an unusually long sentence that goes on"] * 40),
)


# ---------------------------------------------------------------------------
# serving: onnxruntime + tokenizers + numpy
# ---------------------------------------------------------------------------


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"serving an exported knot model needs onnxruntime: {EXTRA_HINT}") from None
    return onnxruntime


def _read_json(file: Path, what: str) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; not an exported knot model folder")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: corrupt {what} ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: corrupt {what} (expected a JSON object)")
    return data


class OnnxPredictor(Predictor):
    """An exported knot model (:func:`export_checkpoint`) served by onnxruntime.

    Needs onnxruntime, tokenizers and numpy only; never imports torch (``geometry`` does,
    lazily, when asked for).

    Parameters
    ----------
    path : path
        The exported folder (``model.onnx``, ``config.json``, ``tokenizer.json``).
    int8 : bool
        Serve ``model.int8.onnx`` (present only when the export was quantised).
    threads : int, optional
        onnxruntime's intra-op threads (default: its own choice).

    Attributes
    ----------
    labels : list of str
    max_length : int
    coords : np.ndarray (K, D)
    config : dict
        The folder's ``config.json``.

    Examples
    --------
    >>> p = OnnxPredictor("student-onnx")  # doctest: +SKIP
    >>> p.predict(["a wonderful film"])  # doctest: +SKIP
    ['5']
    """

    def __init__(self, path: str | os.PathLike, *, int8: bool = False, threads: int | None = None) -> None:
        from knot.encoders import check_no_remote_code

        ort = _onnxruntime()
        from tokenizers import Tokenizer

        self.path = check_no_remote_code(Path(path))
        self.config = _read_json(self.path / CONFIG, "export config")
        try:
            self.labels = [str(x) for x in self.config["labels"]]
            self.max_length = int(self.config["max_length"])
            self._geometry_dict = dict(self.config["geometry"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path / CONFIG}: not a knot export config ({exc})") from None
        model = self.path / (INT8_FILE if int8 else MODEL_FILE)
        if not model.is_file():
            raise FileNotFoundError(f"{model}: missing; not an exported knot model folder")
        tok_file = self.path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{tok_file}: missing (knot serves fast tokenizers only)")
        self._tokenizer = Tokenizer.from_file(str(tok_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_length)
        self._pad_id = int(self.config.get("pad_token_id") or 0)
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        self._session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        unknown = set(self._inputs) - set(INPUTS)
        if unknown:
            raise ValueError(f"{model}: unexpected graph inputs {sorted(unknown)} (expected {list(INPUTS)})")
        self._geometry: Any = None

    @property
    def coords(self) -> np.ndarray:  # (K, D)
        if "coords" not in self._geometry_dict:
            raise ValueError(f"{self.path / CONFIG}: the geometry is a cost matrix, it has no coordinates")
        return np.asarray(self._geometry_dict["coords"], dtype=np.float64)

    @property
    def geometry(self) -> Any:
        """The task's :class:`knot.geometry.LabelGeometry` (imports torch on first use)."""
        if self._geometry is None:
            from knot.geometry import LabelGeometry

            self._geometry = LabelGeometry.from_dict(self._geometry_dict)
        return self._geometry

    def encode(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """(input id, token type id) pairs of each text, truncated to ``max_length``."""
        return [list(zip(e.ids, e.type_ids)) for e in self._tokenizer.encode_batch(list(texts))]

    def _proba(self, texts: list[str], batch_size: int) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        encoded = self.encode(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = np.argsort([-len(e) for e in encoded], kind="stable")  # longest first: less padding
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            length = max(len(encoded[r]) for r in rows)
            ids = np.full((len(rows), length), self._pad_id, dtype=np.int64)  # (B, L)
            types = np.zeros((len(rows), length), dtype=np.int64)
            mask = np.zeros((len(rows), length), dtype=np.int64)
            for j, r in enumerate(rows):
                n = len(encoded[r])
                ids[j, :n] = [t for t, _ in encoded[r]]
                types[j, :n] = [s for _, s in encoded[r]]
                mask[j, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out[rows] = self._session.run(None, {k: feed[k] for k in self._inputs})[0]  # (B, K)
        return out


# ---------------------------------------------------------------------------
# the run a checkpoint came from: test sets, results, teachers, licences
# ---------------------------------------------------------------------------


def find_run(checkpoint: str | os.PathLike) -> Path | None:
    """The run folder holding ``checkpoint`` (the nearest parent with ``results.json`` and
    ``config.yaml``), or None for a checkpoint outside a run."""
    path = Path(checkpoint).resolve()
    for parent in [path, *path.parents]:
        if (parent / "results.json").is_file() and (parent / "config.yaml").is_file():
            return parent
    return None


def run_test_sets(run: str | os.PathLike, labels: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Every test set of a run (as ``results.json`` names them): texts and label indices
    in ``labels`` order, ``{name: (texts, int64 (n,))}``."""
    from knot.data import load_split
    from knot.evaluation import load_results

    run = Path(run)
    index = {lab: i for i, lab in enumerate(labels)}
    out = {}
    for ts in load_results(run / "results.json")["test_sets"]:
        examples = [e for d in ts["domains"] for e in load_split(run / "data", d, "test")]
        out[ts["name"]] = ([e.text for e in examples], np.asarray([index[e.label] for e in examples], dtype=np.int64))
    return out


def quality_delta(probs_a: Mapping[str, np.ndarray], probs_b: Mapping[str, np.ndarray],
                  sets: Mapping[str, tuple[list[str], np.ndarray]], geometry: Any) -> dict[str, dict[str, float]]:
    """Per test set: accuracy, macro-F1 and Semantic Distance of ``probs_b`` minus those of
    ``probs_a``, and the share of items whose argmax agrees."""
    from knot.metrics import evaluate_probs

    out = {}
    for name, (_, y) in sets.items():
        a, b = evaluate_probs(probs_a[name], y, geometry), evaluate_probs(probs_b[name], y, geometry)
        out[name] = {m: b[m] - a[m] for m in ("accuracy", "macro_f1", "semantic_distance")}
        out[name]["agreement"] = float((probs_a[name].argmax(1) == probs_b[name].argmax(1)).mean())
    return out


def _run_results(run: Path, model_id: str) -> tuple[list[dict], int]:
    """This model's result rows (mean ± std over the seeds when ``run`` is one seed of a
    multi-seed run) and the number of runs they cover."""
    from knot.evaluation import load_results
    from knot.reporting import aggregate_rows

    seeds = sorted(p for p in run.parent.glob("seed-*") if (p / "results.json").is_file())
    runs = seeds if run.name.startswith("seed-") and len(seeds) > 1 else [run]
    results = [load_results(r / "results.json") for r in runs]
    agg = aggregate_rows(results)
    rows = [dict(agg[(model_id, ts["name"])], test_set=ts["name"]) for ts in results[0]["test_sets"]
            if (model_id, ts["name"]) in agg]
    return rows, len(runs)


def _model_id(meta: Mapping[str, Any]) -> str | None:
    role, name = meta.get("role"), meta.get("name")
    if role == "student":
        return f"student:{name}"
    if role == "local":
        return f"teacher:{name}"
    if role == "global":
        return "global"
    return None


# ---------------------------------------------------------------------------
# export (torch from here on, imported inside the functions)
# ---------------------------------------------------------------------------


def _eager(encoder: Any) -> Any:
    if hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation("eager")
    else:  # older transformers
        encoder.config._attn_implementation = "eager"
    return encoder


def _whole_model(model: Any) -> Any:
    """``model`` (a KnotClassifier or FrozenClassifier) as one torch module
    ``(input_ids, attention_mask, token_type_ids) -> probs (B, K)`` with an eager-attention
    copy of its encoder."""
    import copy
    import inspect

    import torch
    from torch import nn

    from knot.models import FrozenClassifier

    frozen = isinstance(model, FrozenClassifier)
    encoder = copy.deepcopy(model.frozen_encoder()[0] if frozen else model.encoder)  # the frozen one is shared
    _eager(encoder).eval()
    takes_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    class WholeModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            kw = {"token_type_ids": token_type_ids} if takes_types else {}
            pooled = frozen and model.head_kind == "pooled"
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=not pooled, **kw)
            if pooled:  # knot.features "mean", stored as float16
                m = attention_mask.unsqueeze(-1).float()  # (B, L, 1)
                feats = (out.last_hidden_state.float() * m).sum(1) / m.sum(1).clamp(min=1)  # (B, H)
                logits = self.model.head(feats.half().float())
            else:
                h = (out.hidden_states[-1] + out.hidden_states[0]).float()  # (B, L, H)
                if frozen:  # knot.features "tokens", stored as float16
                    logits = self.model.head(h.half().float(), attention_mask)
                else:  # KnotClassifier.forward after its encoder
                    h = self.model.mixer(self.model.norm(h), src_key_padding_mask=attention_mask == 0)
                    logits = self.model.classifier(self.model.dropout(h[:, 0]))
            return torch.softmax(logits.float(), dim=-1)  # (B, K)

    return WholeModel().eval()


def _export_onnx(model: Any, file: Path) -> None:
    import torch

    whole = _whole_model(model)
    batch = model.tokenizer(list(PROBE_TEXTS[1:3]), padding=True, truncation=True, max_length=model.max_length,
                            return_tensors="pt", return_token_type_ids=True)
    kwargs = {k: batch[k] for k in INPUTS}  # in INPUTS order: the graph's input order
    b, n = torch.export.Dim("batch"), torch.export.Dim("length", max=max(model.max_length, 2))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*axis name.*")  # dims renamed by the exporter
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.onnx.export(whole, (), kwargs=kwargs, dynamic_shapes={k: {0: b, 1: n} for k in INPUTS},
                                    input_names=list(INPUTS), output_names=["probs"], dynamo=True,
                                    external_data=False, verbose=False)
    program.save(str(file))


def _probe_parity(model: Any, file: Path) -> float:
    """Largest |onnxruntime - torch| probability over the probe texts, one at a time
    (1 to max_length tokens) and all together (padded)."""
    pred = OnnxPredictor(file.parent)
    worst = 0.0
    texts = list(PROBE_TEXTS)
    for part in [[t] for t in texts] + [texts]:
        torch_p = model.predict_proba(part)
        worst = max(worst, float(np.abs(pred.predict_proba(part) - torch_p).max()))
    return worst


def _encoder_entry(cfg: Mapping[str, Any]) -> dict:
    enc = cfg["encoder"]
    source = str(enc.get("source", "unknown"))
    fingerprint = enc.get("fingerprint")
    if fingerprint is None:  # fine-tuned: its weights are in the checkpoint; name them by the file's hash
        fingerprint = cfg.get("weights_sha256")
    return {
        "name": source if source in ENCODER_LICENCES else Path(source).name,
        "mode": enc.get("mode", "fine-tuned"),
        "layers": enc.get("layers"),
        "fingerprint": fingerprint,
    }


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str = "onnx",
    force: bool = False,
    quantize: str | None = None,
    run: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Export a knot checkpoint to a self-describing ONNX folder (see the module docstring).

    Parameters
    ----------
    checkpoint : path
        A knot checkpoint folder, or a training folder with ``best/``.
    out : path
        The folder to write; written to a temporary sibling and renamed at the end.
    fmt : ``"onnx"``
    force : bool
        Replace a non-empty ``out``.
    quantize : ``"int8"``, optional
        Also write ``model.int8.onnx`` (onnxruntime dynamic quantisation) and measure its
        cost against fp32 on the run's test sets (on the probe texts outside a run).
    run : path, optional
        The run the checkpoint belongs to (default: found above the checkpoint); its
        results and config fill the model card.

    Returns
    -------
    dict
        ``{"out", "parity_max_abs", "int8": {test set: deltas} or None, "run"}``.

    Raises
    ------
    FileNotFoundError, ValueError
        Not a knot checkpoint, weights that do not match the config, a folder asking for
        remote code, ``out`` not empty without ``force``, an export that fails the check.
    ImportError
        onnx, onnxscript or onnxruntime missing (the message names the extra).
    """
    from knot.models import load, read_checkpoint_config, resolve_checkpoint
    from knot.utils import atomic_dir, atomic_write_json, atomic_write_text

    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"--quantize: expected int8, got {quantize!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ValueError(f"{out}: exists and is not empty (pass --force to replace it)")
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise ImportError(f"exporting to ONNX needs {name}: {EXTRA_HINT}") from None
    _onnxruntime()
    src = resolve_checkpoint(checkpoint)
    model = load(src)  # refuses remote code; checks weights against config.json
    cfg = read_checkpoint_config(src)
    meta = cfg.get("metadata", {})
    run_dir = Path(run) if run is not None else find_run(src)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        _export_onnx(model, tmp / MODEL_FILE)
        model.tokenizer.save_pretrained(str(tmp))
        geometry = model.geometry.to_dict()
        config = {
            "format": EXPORT_FORMAT,
            "knot_version": __version__,
            "architecture": "knot " + ("frozen-encoder " + model.head_kind + " head" if getattr(model, "frozen", False)
                                      else "fine-tuned encoder + KNOT head"),
            "inputs": list(INPUTS),
            "output": "probs",
            "labels": list(model.labels),
            "id2label": {str(i): lab for i, lab in enumerate(model.labels)},
            "label2id": {lab: i for i, lab in enumerate(model.labels)},
            "geometry": geometry,
            "cost_power": geometry.get("p", 1),
            "max_length": int(model.max_length),
            "pad_token_id": int(model.tokenizer.pad_token_id or 0),
            "encoder": _encoder_entry(cfg),
            "source_checkpoint": {"path": str(src.resolve().relative_to(run_dir.resolve()) if run_dir else src.name), "weights_sha256": cfg.get("weights_sha256"),
                                  "role": meta.get("role"), "name": meta.get("name")},
        }
        atomic_write_json(tmp / CONFIG, config)
        worst = _probe_parity(model, tmp / MODEL_FILE)
        if worst > PARITY_ATOL:
            raise ValueError(
                f"{src}: the exported graph disagrees with torch by {worst:.2e} > {PARITY_ATOL:g} "
                "on the probe texts; nothing was written"
            )
        sets = run_test_sets(run_dir, model.labels) if run_dir is not None else None
        int8 = _quantize(tmp, model, sets) if quantize == "int8" else None
        atomic_write_text(tmp / CARD, model_card(config, meta, run_dir, worst, int8))
    log.info("exported %s to %s in %.1f s (parity on probe texts: max abs %.1e)", src, out,
             time.perf_counter() - t0, worst)
    return {"out": out, "parity_max_abs": worst, "int8": int8, "run": run_dir}


def _quantize(folder: Path, model: Any, sets: Mapping[str, tuple[list[str], np.ndarray]] | None) -> dict:
    """Write ``model.int8.onnx`` and measure it against fp32 (per test set deltas)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # quantize_dynamic logs every skipped node to the root logger
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(folder / MODEL_FILE), str(folder / INT8_FILE), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    if sets is None:  # outside a run: agreement on the probe texts only
        texts = list(PROBE_TEXTS)
        sets = {"probe texts": (texts, OnnxPredictor(folder).predict_proba(texts).argmax(1))}
    fp32, int8 = OnnxPredictor(folder), OnnxPredictor(folder, int8=True)
    pa = {k: fp32.predict_proba(t) for k, (t, _) in sets.items()}
    pb = {k: int8.predict_proba(t) for k, (t, _) in sets.items()}
    return quality_delta(pa, pb, sets, model.geometry)


# ---------------------------------------------------------------------------
# the model card
# ---------------------------------------------------------------------------

_COLUMNS = [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("semantic_distance", "SD"),
            ("expected_cost", "expected cost"), ("w1_gold", "W1 to gold"), ("tv_gold", "TV to gold"),
            ("js_gold", "JS to gold"), ("spearman_gold", "Spearman to gold")]


def _cell(v: Any, n_runs: int) -> str:
    from knot.reporting import format_cell

    return format_cell(v if isinstance(v, (tuple, list)) else None, n_runs)


def _run_config(run: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _teacher_sizes(run: Path, names: Sequence[str]) -> list[str]:
    out = []
    for name in names:
        folder = run / "global" if name == "global" else run / "teachers" / name
        try:
            from knot.models import read_checkpoint_config

            n = read_checkpoint_config(folder).get("metadata", {}).get("n_train")
        except (FileNotFoundError, ValueError):
            n = None
        out.append(f"`{name}` ({n} training texts)" if n is not None else f"`{name}`")
    return out


def model_card(config: Mapping[str, Any], meta: Mapping[str, Any], run: Path | None, parity: float,
               int8: Mapping[str, Mapping[str, float]] | None) -> str:
    """The README.md of an exported folder: what the model is, how it was trained, how
    well it did, what binds it. Teachers are named with their sizes, never their data."""
    enc = config["encoder"]
    role = {"student": "a distilled student", "local": "a local teacher", "global": "the global model"}.get(
        meta.get("role"), "a knot classifier")
    labels = ", ".join(f"`{x}`" for x in config["labels"])
    geometry = config["geometry"]
    geo = (f"`{geometry.get('name') or 'custom'}`: coordinates {geometry['coords']}" if "coords" in geometry
           else f"`{geometry.get('name') or 'custom'}`: a cost matrix")
    lines = [
        f"# {meta.get('experiment', 'knot')}: {meta.get('name', 'model')} ({role})",
        "",
        f"A text classifier exported by knot {config['knot_version']} (`knot export`) to ONNX: "
        f"{config['architecture']} over the `{enc['name']}` encoder"
        f"{'' if enc.get('layers') is None else ' (first ' + str(enc['layers']) + ' layers)'}, "
        f"labels {labels}, texts truncated to {config['max_length']} tokens.",
        "",
        "## Use",
        "",
        "```python",
        "import knot",
        'model = knot.load("THIS_FOLDER")          # onnxruntime; pip install "knot[onnx]"',
        'model.predict_proba(["a text"])           # (N, K) class probabilities',
        "```",
        "",
        "`model.onnx` takes `input_ids`, `attention_mask` and `token_type_ids` (int64, batch x length, "
        "from `tokenizer.json`) and returns `probs` (float32, batch x K); `config.json` holds `id2label` "
        "and the label geometry.",
        f"On probe texts of 1 to {config['max_length']} tokens its probabilities equal knot's torch "
        f"`predict_proba` within {parity:.1e} (max abs).",
        "",
        "## Training",
        "",
        f"- Label geometry {geo}, cost power {config['cost_power']}.",
        f"- Encoder `{enc['name']}` ({enc['mode']}), fingerprint `{str(enc['fingerprint'])[:16]}`.",
    ]
    method = meta.get("method") or {}
    train = meta.get("train") or {}
    if meta.get("role") == "student":
        teachers = meta.get("teachers") or []
        sizes = _teacher_sizes(run, teachers) if run is not None else [f"`{t}`" for t in teachers]
        lines += [
            f"- Distilled from {len(teachers)} teachers: {', '.join(sizes)}.",
            f"- Distillation loss `{method.get('loss')}`, teacher aggregation `{method.get('aggregate')}`, "
            f"weights `{method.get('weights')}`; student started from `{meta.get('init', '?')}`; "
            f"transfer set `{meta.get('transfer_domain')}` ({meta.get('n_train')} texts, labels unused).",
        ]
    else:
        lines.append(f"- Trained with `{train.get('loss')}` on {meta.get('n_train')} labelled texts "
                     f"(domains: {', '.join(meta.get('domains') or []) or '?'}).")
    lines += [
        f"- {train.get('epochs')} epochs, batch {train.get('batch_size')}, lr {train.get('lr')}; "
        f"seed {meta.get('seed')}; the kept epoch ({meta.get('epoch')}) was selected by validation "
        f"`{meta.get('select_by')}`.",
        "",
    ]
    lines += _results_section(run, meta)
    if int8 is not None:
        lines += ["## int8 model (`model.int8.onnx`)", "",
                  "Dynamic int8 quantisation (onnxruntime) changes the predictions; its cost against fp32:", "",
                  "| test set | argmax agreement | Δ accuracy | Δ macro-F1 | Δ SD |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {d['agreement']:.4f} | {d['accuracy']:+.4f} | {d['macro_f1']:+.4f} | "
                  f"{d['semantic_distance']:+.4f} |" for k, d in int8.items()]
        lines.append("")
    lines += ["## Intended use and limits", "",
              "Research use: classifying short English texts into the labels above, in domains like the "
              "training domains. Scores outside them are unmeasured; the probabilities are not calibrated "
              "beyond what the results above show; never use it for decisions about people.", ""]
    lines += _licence_section(run, enc["name"])
    return "\n".join(lines) + "\n"


def _results_section(run: Path | None, meta: Mapping[str, Any]) -> list[str]:
    model_id = _model_id(meta)
    if run is None or model_id is None:
        return ["## Results", "", "Exported from a checkpoint outside a run: no test results recorded.", ""]
    rows, n_runs = _run_results(run, model_id)
    if not rows:
        return ["## Results", "", f"The run {run.name} has no results for `{model_id}`.", ""]
    cols = [(k, t) for k, t in _COLUMNS if any(r.get(k) is not None for r in rows)]
    over = f"mean ± std over {n_runs} seeds" if n_runs > 1 else "one seed"
    lines = ["## Results", "", f"On the run's test sets (`{model_id}`, {over}):", "",
             "| test set | n | " + " | ".join(t for _, t in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    lines += [f"| {r['test_set']} | {r['n']} | " + " | ".join(_cell(r.get(k), n_runs) for k, _ in cols) + " |"
              for r in rows]
    return lines + ["", "SD: Semantic Distance (expected distance between predicted and gold label in the "
                        "label geometry; lower is better).", ""]


def _licence_section(run: Path | None, encoder: str) -> list[str]:
    rows = [("encoder", encoder, ENCODER_LICENCES.get(encoder, "the licence of the encoder folder"))]
    readers: dict[str, list[str]] = {}
    if run is not None:
        for d in (_run_config(run).get("data") or {}).get("domains") or []:
            for s in d.get("sources") or []:
                readers.setdefault(str(s.get("reader")), []).append(str(d.get("name")))
    for reader, domains in readers.items():
        rows.append((f"data ({reader})", ", ".join(dict.fromkeys(domains)),
                     LICENCES.get(reader, "unknown: check the data's terms")))
    lines = ["## Licences", "", "The model is bound by the licences of what it was built from:", "",
             "| part | what | licence |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if readers.keys() & {"marc", "amazon"}:
        lines += ["", "**A MARC (Amazon reviews) domain was used: this model is for non-commercial "
                      "research only.**"]
    return lines + [""]

"""Test-only data: a tiny separable polarity corpus written as JSON lines, a three-class
keyword corpus, and the tiny pipeline config that reads the first."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

GOOD = ["great", "wonderful", "excellent", "lovely", "superb", "brilliant"]
BAD = ["awful", "terrible", "horrible", "dreadful", "boring", "poor"]
NOUNS = ["film", "story", "music", "plot", "cast", "ending", "book", "show"]


def write_polarity_corpus(path: Path, n: int, seed: int, words: int = 3) -> None:
    """``n`` lines ``{"text", "label"}``, alternating neg/pos; each text is ``words`` words
    (adjective, noun[, adjective]) drawn with ``seed``, so the label is always readable."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        adjectives = GOOD if label == "pos" else BAD
        parts = [rng.choice(adjectives), rng.choice(NOUNS), rng.choice(adjectives)][:words]
        lines.append(json.dumps({"text": " ".join(parts), "label": label}))
    Path(path).write_text("\n".join(lines) + "\n")


#: The three-class keyword corpus of :func:`synthetic_rows`.
LABELS3 = ["neg", "neu", "pos"]
KEYWORDS3 = {"neg": ["awful", "terrible", "bad"], "neu": ["okay", "average", "fine"], "pos": ["great", "excellent", "good"]}
FILLER = ["the", "a", "item", "box", "it", "was", "this", "product", "arrived", "and", "is", "my", "for"]


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """``n`` rows ``{"text", "label"}`` cycling neg/neu/pos: four filler words and the
    label's keyword twice, shuffled with ``seed``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS3[i % 3]
        words = rng.sample(FILLER, 4) + [rng.choice(KEYWORDS3[label])] * 2
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """``rows`` as JSON lines (UTF-8)."""
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


#: The four-domain corpus of the pipeline tests: (domain, lines, seed) for books and films
#: (local), mixed (global) and public (transfer).
PIPELINE_DOMAINS = [("books", 40, 0), ("films", 40, 1), ("mixed", 40, 2), ("public", 60, 3)]


def write_pipeline_corpus(root: Path) -> None:
    """One two-word polarity file per domain of :data:`PIPELINE_DOMAINS` under ``root``."""
    for name, n, seed in PIPELINE_DOMAINS:
        write_polarity_corpus(Path(root) / f"{name}.jsonl", n, seed, words=2)


#: The pipeline tests' experiment: the corpus of :func:`write_pipeline_corpus`, the random
#: ``tiny`` encoder, a few epochs (the whole run takes seconds on CPU).
PIPELINE_CONFIG = """\
name: tiny-pipeline
seed: 3
device: cpu
task:
  geometry: {neg: [-1.0], pos: [1.0]}
data:
  domains:
    - {name: books, role: local, sources: [{reader: jsonl, path: books.jsonl, text: text, label: label}]}
    - {name: films, role: local, sources: [{reader: jsonl, path: films.jsonl, text: text, label: label}]}
    - {name: mixed, role: global, sources: [{reader: jsonl, path: mixed.jsonl, text: text, label: label}]}
    - {name: public, role: transfer, sources: [{reader: jsonl, path: public.jsonl, text: text, label: label}]}
model: {encoder: tiny, max_length: 16, dropout: 0.0}
local: {epochs: 2, batch_size: 8, lr: 2.0e-3}
global_model: {epochs: 1, batch_size: 8, lr: 2.0e-3}
bias: {n_samples: 16, length: 8}
distill:
  train: {epochs: 1, batch_size: 8, lr: 1.0e-3}
  methods:
    - {name: ot, loss: ot}
    - {name: entropy, loss: entropy}
"""


def pipeline_config(**sections: dict) -> str:
    """:data:`PIPELINE_CONFIG` with top-level ``sections`` merged in (one level deep; None
    drops the key), as YAML: ``pipeline_config(name="tiny-frozen", model={"encoder_mode": "frozen"})``."""
    import yaml

    cfg = yaml.safe_load(PIPELINE_CONFIG)
    for key, value in sections.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return yaml.safe_dump(cfg, sort_keys=False)


def write_pipeline_case(base: Path) -> tuple[Path, Path]:
    """Write :data:`PIPELINE_CONFIG` to ``base/tiny.yaml`` and its corpus to ``base/data``;
    returns ``(config path, data root)``."""
    root = Path(base) / "data"
    root.mkdir(parents=True, exist_ok=True)
    write_pipeline_corpus(root)
    cfg_path = Path(base) / "tiny.yaml"
    cfg_path.write_text(PIPELINE_CONFIG)
    return cfg_path, root


def two_teacher_results(f1_a: float, f1_b: float) -> dict:
    """A minimal ``results.json`` body: teachers ``a`` and ``b`` on one ``union`` test set,
    with macro-F1 (and accuracy) ``f1_a`` and ``f1_b``."""
    from knot.evaluation import RESULTS_FORMAT

    models = [{"id": "teacher:a", "kind": "teacher", "name": "a"}, {"id": "teacher:b", "kind": "teacher", "name": "b"}]
    rows = [
        {"model": m["id"], "test_set": "union", "n": 10, "accuracy": f1, "macro_f1": f1,
         "semantic_distance": 1 - f1, "expected_cost": 1 - f1}
        for m, f1 in zip(models, (f1_a, f1_b))
    ]
    return {
        "format": RESULTS_FORMAT, "version": 1, "name": "x", "label_names": ["neg", "pos"],
        "test_sets": [{"name": "union", "kind": "union", "domains": ["a", "b"], "n": 10}],
        "models": models, "rows": rows, "baseline_selection_set": "union",
        # each run names its own seed's best teacher
        "baselines": {"global_alone": None, "feddf": None,
                      "best_single_teacher": "teacher:a" if f1_a > f1_b else "teacher:b"},
    }


QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def quickstart_sets() -> list[str]:
    """The ``--set`` overrides of the tests' shared quickstart run (conftest's
    ``quickstart_run``): :func:`quickstart_fast_sets` with 2 MiniLM layers (the graph the
    export tests build)."""
    from knot.config import load_config

    return quickstart_fast_sets(len(load_config(QUICKSTART).data.domains)) + ["model.encoder_layers=2"]


def quickstart_fast_sets(num_domains: int) -> list[str]:
    """``--set`` overrides that shrink ``configs/quickstart.yaml`` to seconds: one epoch
    of two steps everywhere, 20 texts per split of each of its ``num_domains`` domains."""
    return [
        "local.epochs=1", "local.max_steps=2", "global_model.epochs=1", "global_model.max_steps=2",
        "distill.train.epochs=1", "distill.train.max_steps=2", "bias.n_samples=8", "model.max_length=32",
        *[f"data.domains.{i}.{key}=20" for i in range(num_domains) for key in ("max_train", "max_val", "max_test")],
    ]


def load_bench(name: str):
    """The script ``bench/<name>.py`` imported as a module (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

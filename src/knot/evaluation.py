"""Evaluation stage: every model of a run on every test set -> ``results.json`` + ``results.md``.

Models: each local teacher (``teachers/<domain>``), the global model (``global/``) and each
student (``students/<method>``) present in the run directory. Test sets: the test split of
each local domain, of the global domain and of any ``test``-role domain, plus ``union``:
the local test sets together (the reference's combined test set). Metrics per (model, test
set), from :func:`knot.metrics.evaluate_probs` with the task geometry: accuracy, macro-F1,
Semantic Distance and expected ground cost; where every example of a test set has a gold
(human) label distribution, also :func:`knot.metrics.evaluate_gold`: exact W1 to it over the
task geometry, total variation, Jensen-Shannon (bits) and Spearman of the expected coordinate
vs the gold score (``w1_gold``, ``tv_gold``, ``js_gold``, ``spearman_gold``; rows of other
test sets do not have these keys).

The table also names three baselines:

* ``global model alone``: the global model, no distillation;
* ``best single teacher``: the local teacher with the highest union macro-F1 (chosen on the
  test sets themselves, so an optimistic, oracle choice);
* ``FedDF``: the student of the method named ``feddf``, or else the first method with loss
  ``kl`` and aggregate ``mixture`` (KL to the weighted average of the teachers).

``results.json`` layout (``format: knot.results``, version 1)::

    {"format", "version", "name", "geometry": {...}, "label_names": [...],
     "test_sets": [{"name", "kind": "local"|"global"|"test"|"union", "domains": [...], "n"}],
     "models": [{"id", "kind": "teacher"|"global"|"student", "name", "path",
                 "checkpoint_hash", "method"?: {...}, "best_epoch"?: int, "init"?: str}],
     "baselines": {"global_alone": id|null, "best_single_teacher": id|null, "feddf": id|null},
     "rows": [{"model", "test_set", "n", "accuracy", "macro_f1", "semantic_distance",
               "expected_cost", "w1_gold"?, "tv_gold"?, "js_gold"?, "spearman_gold"?}],
     "gold_baselines": {test set: {"w1_gold", "tv_gold", "js_gold"}},  # majority vote vs raters
     "confusion": {model id: {test set: K x K counts, rows gold, columns predicted}},
     "missing": [{"id", "path"}],
     "study_sha256"?: sha256 of the config's ``study`` declaration, when it has one,
     "environment": {"python", "torch", "numpy", "scipy", "transformers", "knot",
                     "knot_commit", "torch_threads"}  # see run_environment; absent in older files
     }

Per-item predictions (issue 20: test-item uncertainty): each evaluated model's predicted
distributions are saved to ``RUN/predictions/<model>.npz`` (``student:ot`` ->
``student-ot.npz``; :func:`save_predictions`, :func:`load_predictions`), keyed
``<split>/<domain>/probs`` (float32, (N, K)), ``<split>/<domain>/labels`` (int64, true class
indices in ``label_names`` order) and ``<split>/<domain>/ids`` (``"<domain>:<split>:<row>"``,
the row of ``data/<domain>/<split>.jsonl``), plus ``label_names`` and ``model``; a union test
set is its domains' arrays concatenated in order.

Model ids are ``teacher:<domain>``, ``global`` and ``student:<method>``.
"""

from __future__ import annotations

import functools
import logging
import math
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from knot import __version__
from knot.data import load_split
from knot.metrics import GOLD_METRICS, GOLD_TITLES, evaluate_gold, evaluate_probs
from knot.models import checkpoint_hash
from knot.run import RunContext, RunModel
from knot.soft_labels import predict_probs
from knot.utils import atomic_path, atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)


__all__ = [
    "RESULTS_FORMAT",
    "METRICS",
    "TestSet",
    "score_models",
    "confusion_matrices",
    "gold_baselines",
    "pick_baselines",
    "build_results",
    "render_markdown",
    "kept_start_note",
    "load_results",
    "save_predictions",
    "load_predictions",
    "evaluate_run",
    "run_environment",
    "environment_line",
]

RESULTS_FORMAT = "knot.results"
_VERSION = 1
#: Metric keys of every row, with their direction (True: higher is better).
METRICS = {"accuracy": True, "macro_f1": True, "semantic_distance": False, "expected_cost": False}
_METRIC_TITLES = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "semantic_distance": "Semantic Distance",
    "expected_cost": "expected cost",
}


@dataclass
class TestSet:
    """A test set: a domain's test split, or the union of several (``domains``)."""

    __test__ = False  # not a pytest class

    name: str
    kind: str  # "local" | "global" | "test" | "union"
    domains: list[str] = field(default_factory=list)

    def to_dict(self, n: int) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "domains": list(self.domains), "n": n}


def _clean(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) else f
    return v


def score_models(
    probs: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    test_sets: Sequence[TestSet],
    metric_fn: Callable[[np.ndarray, np.ndarray], Mapping[str, Any]],
    gold: Mapping[str, Mapping[str, Any]] | None = None,
    gold_fn: Callable[..., Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Metrics of every model on every test set.

    Parameters
    ----------
    probs : mapping model id -> {domain: ndarray (N_d, K)}
        Each model's predicted probabilities on each domain's test split.
    labels : mapping domain -> ndarray (N_d,) int
        Gold class indices.
    test_sets : the test sets to score; a union concatenates its domains.
    metric_fn : ``(probs (N, K), labels (N,)) -> {"n", "accuracy", ...}``, e.g.
        ``functools.partial(knot.metrics.evaluate_probs, geometry=g)``.
    gold : mapping domain -> {"dist": ndarray (N_d, K), "score": ndarray (N_d,) or None}, optional
        The domains whose test examples all have a gold distribution.
    gold_fn : ``(probs, gold dist, scores=gold scores or None) -> {"w1_gold", ...}``, e.g.
        ``functools.partial(knot.metrics.evaluate_gold, geometry=g)``; applied to the test
        sets whose domains are all in ``gold``.

    Returns
    -------
    list of rows ``{"model", "test_set", "n", "accuracy", "macro_f1",
    "semantic_distance", "expected_cost"}``, test sets in the given order, models in the
    order of ``probs`` within each test set.
    """
    rows = []
    for ts in test_sets:
        domains = ts.domains or [ts.name]
        y = np.concatenate([np.asarray(labels[d]) for d in domains])
        for model_id, per_domain in probs.items():
            missing = [d for d in domains if d not in per_domain]
            if missing:
                continue
            p = np.concatenate([np.asarray(per_domain[d]) for d in domains], axis=0)
            m = metric_fn(p, y)
            row = {"model": model_id, "test_set": ts.name, "n": int(len(y))}
            for key in METRICS:
                row[key] = _clean(m.get(key))
            if "mean_entropy" in m:  # sharpness of the predictions (not a quality metric)
                row["mean_entropy"] = _clean(m["mean_entropy"])
            h, scores = _gold_of(gold, domains)
            if h is not None and gold_fn is not None:
                row.update({k: _clean(v) for k, v in gold_fn(p, h, scores=scores).items()})
            rows.append(row)
    return rows


def _gold_of(gold: Mapping[str, Mapping[str, Any]] | None, domains: Sequence[str]):
    """The concatenated gold distributions and scores of ``domains`` (``None`` where any
    domain lacks them)."""
    if not gold or any(d not in gold for d in domains):
        return None, None
    h = np.concatenate([np.asarray(gold[d]["dist"]) for d in domains], axis=0)
    has_scores = all(gold[d].get("score") is not None for d in domains)
    scores = np.concatenate([np.asarray(gold[d]["score"]) for d in domains]) if has_scores else None
    return h, scores


def gold_baselines(
    gold: Mapping[str, Mapping[str, Any]],
    test_sets: Sequence[TestSet],
    gold_fn: Callable[..., Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """How far the raters' majority vote (one-hot argmax of each gold distribution) is
    from the gold distribution itself, per test set with gold: a floor no hard-label
    classifier beats on average.

    >>> from functools import partial
    >>> from knot.geometry import LabelGeometry
    >>> from knot.metrics import evaluate_gold
    >>> g = {"d": {"dist": np.array([[0.0, 0.25, 0.75, 0.0, 0.0]]), "score": None}}
    >>> gold_baselines(g, [TestSet("d", "local", ["d"])], partial(evaluate_gold, geometry=LabelGeometry.preset("sentiment5")))
    {'d': {'w1_gold': 0.25, 'tv_gold': 0.25}}
    """
    out = {}
    for ts in test_sets:
        h, _ = _gold_of(gold, ts.domains or [ts.name])
        if h is None:
            continue
        vote = np.eye(h.shape[1])[h.argmax(axis=1)]  # (N, K)
        m = gold_fn(vote, h, scores=None)
        out[ts.name] = {k: _clean(m[k]) for k in ("w1_gold", "tv_gold")}
    return out


def confusion_matrices(
    probs: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    test_sets: Sequence[TestSet],
    num_labels: int,
) -> dict[str, dict[str, list[list[int]]]]:
    """Confusion matrix (rows: gold class, columns: predicted class) of every model on
    every test set: ``{model id: {test set: [[int] * K] * K}}``.

    >>> confusion_matrices({"m": {"d": np.array([[0.9, 0.1], [0.8, 0.2]])}},
    ...                    {"d": np.array([0, 1])}, [TestSet("d", "local", ["d"])], 2)
    {'m': {'d': [[1, 0], [1, 0]]}}
    """
    out: dict[str, dict[str, list[list[int]]]] = {}
    for model_id, per_domain in probs.items():
        for ts in test_sets:
            domains = ts.domains or [ts.name]
            if any(d not in per_domain for d in domains):
                continue
            y = np.concatenate([np.asarray(labels[d]) for d in domains])
            pred = np.concatenate([np.asarray(per_domain[d]).argmax(axis=1) for d in domains])
            mat = np.zeros((num_labels, num_labels), dtype=np.int64)
            np.add.at(mat, (y, pred), 1)
            out.setdefault(model_id, {})[ts.name] = mat.tolist()
    return out


def _row(rows: Sequence[Mapping[str, Any]], model: str, test_set: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["model"] == model and r["test_set"] == test_set), None)


def pick_baselines(
    models: Sequence[RunModel],
    rows: Sequence[Mapping[str, Any]],
    selection_set: str,
) -> dict[str, str | None]:
    """Which rows are the baselines (see the module docstring).

    ``best_single_teacher`` is the local teacher with the highest macro-F1 on
    ``selection_set`` (ties: the first in order).

    >>> ms = [RunModel("teacher", "a"), RunModel("teacher", "b"), RunModel("global", "global"),
    ...       RunModel("student", "x", method={"loss": "kl", "aggregate": "mixture"})]
    >>> rows = [{"model": "teacher:a", "test_set": "union", "macro_f1": 0.4},
    ...         {"model": "teacher:b", "test_set": "union", "macro_f1": 0.6}]
    >>> pick_baselines(ms, rows, "union")
    {'global_alone': 'global', 'best_single_teacher': 'teacher:b', 'feddf': 'student:x'}
    """
    out: dict[str, str | None] = {"global_alone": None, "best_single_teacher": None, "feddf": None}
    glob = [m for m in models if m.kind == "global"]
    if glob:
        out["global_alone"] = glob[0].id
    best, best_f1 = None, -math.inf
    for m in models:
        if m.kind != "teacher":
            continue
        r = _row(rows, m.id, selection_set)
        f1 = r.get("macro_f1") if r else None
        if f1 is not None and f1 > best_f1:
            best, best_f1 = m.id, f1
    out["best_single_teacher"] = best
    students = [m for m in models if m.kind == "student"]
    named = [m for m in students if m.name == "feddf"]
    by_loss = [
        m for m in students
        if m.method and m.method.get("loss") == "kl" and m.method.get("aggregate") == "mixture"
    ]
    pick = (named or by_loss or [None])[0]
    out["feddf"] = pick.id if pick is not None else None
    return out


def build_results(
    *,
    name: str,
    geometry: Mapping[str, Any] | None,
    label_names: Sequence[str],
    models: Sequence[RunModel],
    test_sets: Sequence[TestSet],
    rows: Sequence[Mapping[str, Any]],
    missing: Sequence[Mapping[str, Any]] = (),
    root: Path | None = None,
    confusion: Mapping[str, Any] | None = None,
    gold_baseline: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the ``results.json`` object (see the module docstring); ``environment``
    (:func:`run_environment`) is stored when given."""
    n_by_set = {}
    for r in rows:
        n_by_set.setdefault(r["test_set"], r["n"])
    union = next((t.name for t in test_sets if t.kind == "union"), None)
    selection = union or next((t.name for t in test_sets if t.kind == "local"), "")
    return {
        "format": RESULTS_FORMAT,
        "version": _VERSION,
        "knot_version": __version__,
        "name": name,
        "geometry": geometry,
        "label_names": list(label_names),
        "test_sets": [t.to_dict(n_by_set.get(t.name, 0)) for t in test_sets],
        "models": [m.to_dict(root) for m in models],
        "baselines": pick_baselines(models, rows, selection),
        "baseline_selection_set": selection,
        "rows": [dict(r) for r in rows],
        "confusion": dict(confusion or {}),
        "gold_baselines": dict(gold_baseline or {}),
        "missing": [dict(m) for m in missing],
    } | ({"environment": dict(environment)} if environment is not None else {})


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _knot_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout knot is imported from, or None (not a git
    checkout, e.g. an installed wheel, or no git)."""
    here = Path(__file__).resolve().parent
    try:
        # only a checkout that tracks this very file: never the HEAD of a repository
        # that merely contains an installed copy (a virtualenv inside a project)
        git = ["git", "-C", str(here)]
        subprocess.run(git + ["ls-files", "--error-unmatch", Path(__file__).name], check=True,
                       capture_output=True, timeout=10)
        out = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_environment() -> dict[str, Any]:
    """What the numbers were computed with: Python, torch, numpy, scipy, transformers and
    knot versions (None when a package is absent), knot's git commit (None outside a git
    checkout) and torch's intra-op thread count, which changes float rounding (see the
    README's reproducibility note)."""
    import torch

    return {
        "python": platform.python_version(),
        **{name: _package_version(name) for name in ("torch", "numpy", "scipy", "transformers")},
        "knot": __version__,
        "knot_commit": _knot_commit(),
        "torch_threads": torch.get_num_threads(),
    }


def environment_line(env: Mapping[str, Any] | None) -> str:
    """One line naming an :func:`run_environment` record (for results.md and the report).

    >>> environment_line({"python": "3.11.9", "torch": "2.5.1", "numpy": "2.1.0", "scipy": None,
    ...                   "transformers": "4.46.0", "knot": "0.1.0", "knot_commit": "0123456789abcdef",
    ...                   "torch_threads": 2})
    'knot 0.1.0 (commit 0123456789ab), Python 3.11.9, torch 2.5.1, numpy 2.1.0, scipy –, transformers 4.46.0; 2 torch thread(s)'
    >>> environment_line(None)
    'not recorded'
    """
    if not env:
        return "not recorded"
    commit = env.get("knot_commit")
    knot = f"knot {env.get('knot') or '–'}" + (f" (commit {commit[:12]})" if commit else "")
    libs = ", ".join(f"{name} {env.get(key) or '–'}" for name, key in
                     (("Python", "python"), ("torch", "torch"), ("numpy", "numpy"), ("scipy", "scipy"),
                      ("transformers", "transformers")))
    return f"{knot}, {libs}; {env.get('torch_threads', '–')} torch thread(s)"


def _describe(model: Mapping[str, Any], baselines: Mapping[str, Any]) -> str:
    notes = []
    if model["kind"] == "teacher":
        notes.append("local teacher")
    elif model["kind"] == "global":
        notes.append("global model")
    elif model["kind"] == "student":
        m = model.get("method") or {}
        if m:
            notes.append(f"student: {m.get('loss')}, {m.get('aggregate')}, {m.get('weights')} weights")
        else:
            notes.append("student")
        if kept_start(model):
            notes.append("initial weights kept (no epoch beat them on val)")
    mid = model["id"]
    if baselines.get("global_alone") == mid:
        notes.append("baseline: global model alone")
    if baselines.get("best_single_teacher") == mid:
        notes.append("baseline: best single teacher")
    if baselines.get("feddf") == mid:
        notes.append("baseline: FedDF (KL to teacher mixture)")
    return "; ".join(notes)


def kept_start(model: Mapping[str, Any]) -> bool:
    """Whether a student (a ``results.json`` model entry) kept its starting weights: its
    selected checkpoint is epoch 0, no trained epoch beat the start on validation."""
    return model.get("kind") == "student" and model.get("best_epoch") == 0


def kept_start_note(model: Mapping[str, Any]) -> str | None:
    """A sentence saying that a student kept its starting weights (None when it did not).

    Such a student scores exactly like what it started from (the global model with
    ``distill.init: global``), which the results table alone does not say.

    >>> kept_start_note({"id": "student:ot", "kind": "student", "best_epoch": 0, "init": "global"})
    'student:ot kept its starting weights (global model): no trained epoch beat it on validation'
    >>> kept_start_note({"id": "student:ot", "kind": "student", "best_epoch": 3}) is None
    True
    """
    if not kept_start(model):
        return None
    start = {"global": "global model", "scratch": "untrained model"}.get(model.get("init") or "", "initial model")
    return f"{model['id']} kept its starting weights ({start}): no trained epoch beat it on validation"


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}"


def render_markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: a macro-F1 overview (models x test sets) and the full per-domain and
    union rows with every metric.

    Returns the Markdown text (ends with a newline).
    """
    rows = results["rows"]
    sets = results["test_sets"]
    models = results["models"]
    baselines = results.get("baselines", {})
    out = [f"# Results: {results.get('name', '')}", ""]
    labels = ", ".join(results.get("label_names", []))
    geometry = results.get("geometry") or {}
    geo_name = geometry.get("name") if isinstance(geometry, dict) else None
    out.append(
        f"Labels: {labels}" + (f"; geometry `{geo_name}`" if geo_name else "") + ". "
        "Higher is better for accuracy and macro-F1, lower for Semantic Distance and expected cost."
    )
    desc = []
    for t in sets:
        if t["kind"] == "union":
            desc.append(f"{t['name']} = {' + '.join(t['domains'])} (n={t['n']})")
        else:
            desc.append(f"{t['name']} ({t['kind']}, n={t['n']})")
    out += ["", "Test sets: " + "; ".join(desc) + ".", ""]
    if baselines.get("best_single_teacher"):
        out += [
            f"The best single teacher is chosen by macro-F1 on `{results.get('baseline_selection_set')}` "
            "(an oracle choice on the test data).",
            "",
        ]

    out += ["## Macro-F1", ""]
    header = ["model"] + [t["name"] for t in sets] + ["notes"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for m in models:
        cells = [f"`{m['id']}`"]
        for t in sets:
            r = _row(rows, m["id"], t["name"])
            cells.append(_fmt(r["macro_f1"]) if r else "–")
        cells.append(_describe(m, baselines))
        out.append("| " + " | ".join(cells) + " |")
    kept = [note for m in models if (note := kept_start_note(m))]
    if kept:
        out += [""] + [f"Note: {note}." for note in kept]

    out += ["", "## All metrics, per domain and union", ""]
    keys = list(METRICS) + [k for k in GOLD_METRICS if any(k in r for r in rows)]
    titles = {**_METRIC_TITLES, **GOLD_TITLES}
    header = ["test set", "model", "n"] + [titles[k] for k in keys]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for t in sets:
        for m in models:
            r = _row(rows, m["id"], t["name"])
            if r is None:
                continue
            out.append(
                "| " + " | ".join([t["name"], f"`{m['id']}`", str(r["n"])] + [_fmt(r.get(k)) for k in keys]) + " |"
            )
    if len(keys) > len(METRICS):
        out += ["", _GOLD_NOTE]
        for name, b in (results.get("gold_baselines") or {}).items():
            out.append(f"- `{name}`: the raters' majority vote is {_fmt(b.get('w1_gold'))} (W1) and "
                       f"{_fmt(b.get('tv_gold'))} (TV) from their distribution.")
    if results.get("missing"):
        out += ["", "Not evaluated (no checkpoint): " + ", ".join(f"`{m['id']}`" for m in results["missing"]) + "."]
    out += ["", f"Environment: {environment_line(results.get('environment'))}."]
    return "\n".join(out) + "\n"


_GOLD_NOTE = (
    "Gold columns (only for test sets whose examples all carry a human label distribution; `–` "
    "elsewhere): exact W1 over the task geometry, total variation and Jensen-Shannon divergence "
    "(log base 2) between the predicted and the human distribution, lower is better; Spearman "
    "correlation of the expected label coordinate with the gold score (mean rating), higher is better."
)


def save_predictions(
    path: str | Path,
    model_id: str,
    label_names: Sequence[str],
    probs: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, Mapping[str, np.ndarray]],
) -> Path:
    """Write one model's per-item predictions atomically (mode as an ordinary write).

    Parameters
    ----------
    path : where to write (``RunLayout.predictions(model_id)``).
    model_id : str
    label_names : list of str, the class order of the columns.
    probs : ``{split: {domain: (N, K)}}``
    labels : ``{split: {domain: (N,) int}}``, the true class indices.
    """
    arrays: dict[str, np.ndarray] = {"model": np.asarray(model_id), "label_names": np.asarray(list(label_names))}
    for split, per_domain in probs.items():
        for d, p in per_domain.items():
            p = np.asarray(p, dtype=np.float32)  # (N, K)
            y = np.asarray(labels[split][d], dtype=np.int64)  # (N,)
            if p.shape != (len(y), len(label_names)):
                raise ValueError(f"save_predictions: {model_id} on {d} ({split}): probs {p.shape}, {len(y)} labels")
            arrays[f"{split}/{d}/probs"] = p
            arrays[f"{split}/{d}/labels"] = y
            arrays[f"{split}/{d}/ids"] = np.asarray([f"{d}:{split}:{i}" for i in range(len(y))])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return Path(path)


def load_predictions(path: str | Path) -> dict[str, Any]:
    """Read :func:`save_predictions`'s file: ``{"model", "label_names", split: {domain:
    {"probs", "labels", "ids"}}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions (rerun `knot evaluate` with this version of knot)")
    out: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            if key in ("model", "label_names"):
                out[key] = z[key].tolist()
                continue
            split, d, what = key.split("/")
            out.setdefault(split, {}).setdefault(d, {})[what] = z[key]
    return out


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` written by :func:`evaluate_run`."""
    return read_json(path, RESULTS_FORMAT, what="knot results",
                     missing="no results; run `knot evaluate CONFIG` first")


# ---------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------


def run_test_sets(cfg: Any) -> list[TestSet]:
    """Each local domain, the global domain, each ``test`` domain, then ``union`` (locals)."""
    sets = [TestSet(d.name, "local", [d.name]) for d in cfg.domains("local")]
    sets += [TestSet(d.name, "global", [d.name]) for d in cfg.domains("global")]
    sets += [TestSet(d.name, "test", [d.name]) for d in cfg.domains("test")]
    locals_ = [d.name for d in cfg.domains("local")]
    if len(locals_) > 1:
        if any(t.name == "union" for t in sets):
            raise ValueError("data.domains: a domain may not be named 'union' (reserved for the union row)")
        sets.append(TestSet("union", "union", locals_))
    return sets


def evaluate_run(run: RunContext) -> dict[str, Any]:
    """Evaluation stage: score every model present on every test set.

    Writes ``layout.results_json`` and ``layout.results_md`` and returns the results dict.
    Models without a checkpoint are listed under ``missing`` (an error if there is none at all).
    """
    cfg, layout, geometry, device = run.cfg, run.layout, run.geometry, run.device
    models, missing = run.models()
    if not models:
        raise FileNotFoundError(
            f"{layout.root}: no model checkpoints to evaluate; run `knot train` / `knot distill` first"
        )
    for m in missing:
        log.warning("evaluate: %s has no checkpoint at %s; skipped", m.id, m.path)
    test_sets = run_test_sets(cfg)
    domains = list(dict.fromkeys(d for t in test_sets for d in t.domains))
    splits = ["test", "val"] if cfg.evaluate.val else ["test"]
    sets = {s: _labelled_split(layout, domains, s, geometry) for s in splits}  # split -> (texts, labels, gold)

    probs: dict[str, dict[str, dict[str, np.ndarray]]] = {s: {} for s in splits}
    for m in models:
        model = run.load_model(m.path, name=m.id)
        m.checkpoint_hash = checkpoint_hash(m.path)
        for s in splits:
            texts = sets[s][0]
            probs[s][m.id] = {
                d: predict_probs(model, texts[d], batch_size=cfg.evaluate.batch_size, device=device,
                                 desc=f"{m.id} on {d}" + ("" if s == "test" else f" ({s})"))
                for d in domains
            }
        del model

    for m in models:
        save_predictions(layout.predictions(m.id), m.id, geometry.labels, {s: probs[s][m.id] for s in splits},
                         {s: sets[s][1] for s in splits})
    gold_fn = functools.partial(evaluate_gold, geometry=geometry)
    metric_fn = functools.partial(evaluate_probs, geometry=geometry)
    _, labels, gold = sets["test"]
    rows = score_models(probs["test"], labels, test_sets, metric_fn, gold, gold_fn)
    confusion = confusion_matrices(probs["test"], labels, test_sets, geometry.num_labels)
    results = build_results(
        name=cfg.name,
        geometry=_geometry_dict(geometry),
        label_names=list(geometry.labels),
        models=models,
        test_sets=test_sets,
        rows=rows,
        missing=[{"id": m.id, "path": str(m.path)} for m in missing],
        root=layout.root,
        confusion=confusion,
        gold_baseline=gold_baselines(gold, test_sets, gold_fn),
        environment=run_environment(),
    )
    if cfg.evaluate.val:
        _, val_labels, val_gold = sets["val"]
        results["validation"] = {
            "split": "val",
            "rows": score_models(probs["val"], val_labels, test_sets, metric_fn, val_gold, gold_fn),
        }
    study = getattr(cfg, "study", None)
    if study is not None:  # the analysis declared before the run (issue 20): its hash
        results["study_sha256"] = study.sha256()
    atomic_write_json(layout.results_json, results)
    atomic_write_text(layout.results_md, render_markdown(results))
    log.info("results written to %s and %s", layout.results_json, layout.results_md)
    return results


def _labelled_split(layout: Any, domains: Sequence[str], split: str, geometry: Any) -> tuple[dict, dict, dict]:
    """Texts, label indices and (where every example has one) gold distributions of each
    domain's ``split``: ``({d: [text]}, {d: int64 (n,)}, {d: {"dist", "score"}})``."""
    texts, labels, gold = {}, {}, {}
    for d in domains:
        examples = load_split(layout.data, d, split)
        if not examples:
            raise ValueError(f"domain {d!r}: the {split} split is empty")
        unlabelled = sum(e.label is None for e in examples)
        if unlabelled:
            raise ValueError(f"domain {d!r}: {unlabelled} {split} example(s) have no label")
        texts[d] = [e.text for e in examples]
        labels[d] = np.asarray([geometry.index(e.label) for e in examples], dtype=np.int64)
        if all(e.gold_dist is not None for e in examples):
            scored = all(e.gold_score is not None for e in examples)
            gold[d] = {"dist": np.asarray([e.gold_dist for e in examples], dtype=np.float64),
                       "score": np.asarray([e.gold_score for e in examples], dtype=np.float64) if scored else None}
    return texts, labels, gold


def _geometry_dict(geometry: Any) -> dict[str, Any]:
    return _jsonable(geometry.to_dict())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj

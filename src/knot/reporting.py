"""Run reports: ``report.md`` with the results tables and PNG plots, over one or more seeds.

:func:`write_report` reads ``results.json`` of each run directory given (one per seed),
aggregates every metric over the seeds (mean and sample standard deviation), and writes

* ``report.md``: the headline table on the union of the local test sets (students and
  baselines side by side), the per-domain table, links to the plots;
* ``plots/semantic_distance.png`` and ``plots/macro_f1.png``: per-domain bars per model
  (error bars: std over seeds);
* ``plots/confusion_<model>.png``: confusion matrices of the students on the union (summed
  over seeds), when the results carry them;
* ``plots/training_curves.png``: training loss and validation selection metric per epoch of
  every model trained in the (first) run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from knot.evaluation import environment_line, kept_start_note, load_results, pick_baselines
from knot.layout import RunLayout
from knot.run import RunModel
from knot.metrics import GOLD_METRICS, GOLD_TITLES
from knot.utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["aggregate_rows", "baselines_over_runs", "report_runs", "write_report", "format_cell", "per_set_table",
           "gold_table", "plot_paired", "learned_cost_tables"]

METRICS = ["accuracy", "macro_f1", "semantic_distance", "expected_cost"]
TITLES = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "semantic_distance": "Semantic Distance",
    "expected_cost": "expected cost",
    "mean_entropy": "mean entropy (nats)",
    **GOLD_TITLES,
}
# the gold metrics exist only on test sets with gold distributions; mean_entropy (how sharp
# the predictions are) only in rows evaluated since issue 20
_ALL = METRICS + ["mean_entropy"] + list(GOLD_METRICS)


def aggregate_rows(results: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Mean and std of every metric per (model, test set) over several runs' results.

    Returns ``{(model, test_set): {"n_runs", "n", metric: (mean, std), ...}}``; std is the
    sample standard deviation (0 for a single run). Missing values (None) are left out.

    >>> r1 = {"rows": [{"model": "m", "test_set": "t", "n": 4, "accuracy": 0.5}]}
    >>> r2 = {"rows": [{"model": "m", "test_set": "t", "n": 4, "accuracy": 0.7}]}
    >>> agg = aggregate_rows([r1, r2])[("m", "t")]
    >>> round(agg["accuracy"][0], 6), round(agg["accuracy"][1], 6), agg["n_runs"]
    (0.6, 0.141421, 2)
    """
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for res in results:
        for row in res["rows"]:
            key = (row["model"], row["test_set"])
            sizes[key] = row.get("n", 0)
            slot = values.setdefault(key, {m: [] for m in _ALL} | {"_runs": []})
            slot["_runs"].append(1.0)
            for m in _ALL:
                v = row.get(m)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    slot[m].append(float(v))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, slot in values.items():
        entry: dict[str, Any] = {"n_runs": len(slot["_runs"]), "n": sizes[key]}
        for m in _ALL:
            xs = slot[m]
            if not xs:
                entry[m] = None
            else:
                std = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
                entry[m] = (float(np.mean(xs)), std)
        out[key] = entry
    return out


def baselines_over_runs(
    results: Sequence[Mapping[str, Any]],
    agg: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The baselines of several runs (seeds) of one experiment.

    Each ``results.json`` names its own seed's best single teacher, and the pick can differ
    between seeds; over the runs it is the local teacher with the best *mean* macro-F1 on
    the selection set (:func:`knot.evaluation.pick_baselines` over the mean rows). The
    global model and FedDF do not depend on scores: the first run's.

    >>> def res(fa, fb):
    ...     return {"models": [{"id": "teacher:a", "kind": "teacher", "name": "a"},
    ...                        {"id": "teacher:b", "kind": "teacher", "name": "b"}],
    ...             "test_sets": [{"name": "union", "kind": "union"}], "baseline_selection_set": "union",
    ...             "baselines": {"best_single_teacher": "teacher:a" if fa > fb else "teacher:b"},
    ...             "rows": [{"model": "teacher:a", "test_set": "union", "macro_f1": fa},
    ...                      {"model": "teacher:b", "test_set": "union", "macro_f1": fb}]}
    >>> baselines_over_runs([res(0.6, 0.5), res(0.3, 0.7)])["best_single_teacher"]
    'teacher:b'
    """
    first = results[0]
    agg = aggregate_rows(results) if agg is None else agg
    selection = first.get("baseline_selection_set") or _headline_set(first)
    mean_rows = [
        {"model": model, "test_set": test_set, "macro_f1": a["macro_f1"][0]}
        for (model, test_set), a in agg.items()
        if test_set == selection and a.get("macro_f1") is not None
    ]
    models = [RunModel(m["kind"], m["name"], method=m.get("method")) for m in first["models"]]
    out = dict(first.get("baselines", {}))
    out["best_single_teacher"] = pick_baselines(models, mean_rows, selection)["best_single_teacher"]
    return out


def format_cell(value: tuple[float, float] | None, n_runs: int) -> str:
    """``0.7312`` for one run, ``0.7312 ± 0.0101`` for several, ``–`` when missing.

    >>> format_cell((0.5, 0.0), 1), format_cell((0.5, 0.01), 3), format_cell(None, 1)
    ('0.5000', '0.5000 ± 0.0100', '–')
    """
    if value is None:
        return "–"
    mean, std = value
    return f"{mean:.4f}" if n_runs <= 1 else f"{mean:.4f} ± {std:.4f}"


def per_set_table(
    agg: Mapping[tuple[str, str], Mapping[str, Any]],
    models: Sequence[Mapping[str, Any]],
    sets: Sequence[Mapping[str, Any]],
) -> list[str]:
    """Markdown rows: one per model, one ``macro-F1 / SD`` cell per test set (``agg`` from
    :func:`aggregate_rows`; ``–`` where a model was not scored on a set)."""
    lines = ["| model | " + " | ".join(f"{t['name']} (n={t['n']})" for t in sets) + " |",
             "|---|" + "---|" * len(sets)]
    for m in models:
        cells = []
        for t in sets:
            a = agg.get((m["id"], t["name"]))
            cells.append("–" if a is None else
                         f"{format_cell(a['macro_f1'], a['n_runs'])} / {format_cell(a['semantic_distance'], a['n_runs'])}")
        lines.append(f"| `{m['id']}` | " + " | ".join(cells) + " |")
    return lines


def _row_of(res: Mapping[str, Any], model: str, test_set: str) -> Mapping[str, Any] | None:
    return next((r for r in res["rows"] if r["model"] == model and r["test_set"] == test_set), None)


def _model_label(model: Mapping[str, Any], baselines: Mapping[str, Any]) -> str:
    mid = model["id"]
    if model["kind"] == "student":
        m = model.get("method") or {}
        desc = ", ".join(str(m[k]) for k in ("loss", "aggregate") if m.get(k))
        label = f"student `{model['name']}`" + (f" ({desc})" if desc else "")
    elif model["kind"] == "global":
        label = "global model"
    else:
        label = f"teacher `{model['name']}`"
    tags = []
    if baselines.get("global_alone") == mid:
        tags.append("global alone")
    if baselines.get("best_single_teacher") == mid:
        tags.append("best single teacher")
    if baselines.get("feddf") == mid:
        tags.append("FedDF")
    return label + (f" — baseline: {', '.join(tags)}" if tags else "")


def _ordered_models(models: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    order = {"student": 0, "global": 1, "teacher": 2}
    return sorted(models, key=lambda m: order.get(m["kind"], 3))


def _headline_set(first: Mapping[str, Any]) -> str:
    sets = first["test_sets"]
    union = [t["name"] for t in sets if t["kind"] == "union"]
    return union[0] if union else sets[0]["name"]


def _plot_metric(agg, models, sets, metric: str, path: Path) -> None:
    """Mean ± std over runs per (test set, model) as dots with whiskers (not bars from 0,
    which hide differences of 1-2 %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t["name"] for t in sets]
    ids = [m["id"] for m in models]
    width = 0.8 / max(len(ids), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) * max(1, len(ids)) * 0.35 + 3), 4.0))
    x = np.arange(len(names))
    for i, mid in enumerate(ids):
        means, errs = [], []
        for t in names:
            v = agg.get((mid, t), {}).get(metric)
            means.append(v[0] if v else np.nan)
            errs.append(v[1] if v else 0.0)
        ax.errorbar(x + (i - (len(ids) - 1) / 2) * width, means, yerr=errs, fmt="o", ms=4, capsize=2, label=mid)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel(TITLES[metric] + (" (lower is better)" if metric == "semantic_distance" else ""))
    ax.set_title(f"{TITLES[metric]} per test set (mean ± std over runs)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_paired(
    comparisons: Mapping[Any, Mapping[str, Mapping[str, Any]]],
    path: str | Path,
    *,
    metrics: Sequence[str] = ("semantic_distance", "macro_f1"),
    title: str = "paired differences",
) -> bool:
    """Dot-and-whisker plot of paired differences a − b with their intervals and a zero line,
    one panel per metric, one row per comparison (``{(a, b): {metric: {"mean", "ci_low",
    "ci_high"}}}``, e.g. from :func:`knot.stats.paired_comparison`). Returns False (and writes
    nothing) when there is nothing to plot."""
    rows = [(k, v) for k, v in comparisons.items() if any(m in v for m in metrics)]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 2.5, 0.45 * len(rows) + 1.4),
                             sharey=True, squeeze=False)
    y = np.arange(len(rows))[::-1]
    labels = [f"{k[0]} − {k[1]}" if isinstance(k, tuple) else str(k) for k, _ in rows]
    for ax, metric in zip(axes[0], metrics):
        for yi, (_, comp) in zip(y, rows):
            d = comp.get(metric)
            if d is None:
                continue
            lo, hi = d["ci_low"], d["ci_high"]
            lo = lo if np.isfinite(lo) else d["mean"]
            hi = hi if np.isfinite(hi) else d["mean"]
            color = {"better": "tab:green", "worse": "tab:red"}.get(d.get("reading"), "tab:gray")
            ax.errorbar([d["mean"]], [yi], xerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="o", color=color, capsize=3)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_title(f"Δ {TITLES.get(metric, metric)}", fontsize=9)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(labels, fontsize=7)
    fig.suptitle(title + " (green: better, red: worse, grey: no difference shown)", fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
    return True


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _plot_confusion(matrix: np.ndarray, labels: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row_sums = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, row_sums, out=np.zeros_like(matrix, dtype=float), where=row_sums > 0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.7 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)))
    ax.set_yticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_yticklabels(labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _histories(layout: RunLayout, models: Sequence[Mapping[str, Any]]) -> dict[str, list[dict]]:
    out = {}
    for m in models:
        if not m.get("path"):
            continue
        p = layout.root / m["path"]
        for candidate in (p / "metrics.jsonl", p.parent / "metrics.jsonl"):
            if candidate.is_file():
                lines = candidate.read_text(encoding="utf-8").splitlines()
                out[m["id"]] = [json.loads(line) for line in lines if line.strip()]
                break
    return out


def _plot_curves(histories: Mapping[str, list[dict]], path: Path) -> bool:
    if not histories:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mid, hist in histories.items():
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
        ax1.plot(epochs, [h.get("train_loss", np.nan) for h in hist], marker="o", label=mid)
        sel = next((h.get("select_by") for h in hist if h.get("select_by")), None)
        key = sel or ("loss" if any("loss" in (h.get("val") or {}) for h in hist) else "macro_f1")
        ax2.plot(epochs, [(h.get("val") or {}).get(key, np.nan) for h in hist], marker="o", label=f"{mid} ({key})")
    ax1.set_title("training loss")
    ax2.set_title("validation (selection metric)")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def gold_table(
    agg: Mapping[tuple[str, str], Mapping[str, Any]],
    models: Sequence[Mapping[str, Any]],
    sets: Sequence[Mapping[str, Any]],
) -> list[str]:
    """Markdown section of the gold-distribution metrics (mean ± std over runs), one row per
    (test set, model) scored against human label distributions; empty when there are none.

    >>> agg = {("m", "t"): {"n_runs": 1, "n": 2, "w1_gold": (0.5, 0.0), "tv_gold": (0.25, 0.0),
    ...                     "js_gold": (0.1, 0.0), "spearman_gold": None}}
    >>> print("\\n".join(gold_table(agg, [{"id": "m"}], [{"name": "t"}])[-1:]))
    | t | `m` | 0.5000 | 0.2500 | 0.1000 | – |
    """
    keys = list(GOLD_METRICS)
    body = []
    for t in sets:
        for m in models:
            a = agg.get((m["id"], t["name"]))
            if a is None or all(a.get(k) is None for k in keys):
                continue
            body.append(f"| {t['name']} | `{m['id']}` | "
                        + " | ".join(format_cell(a.get(k), a["n_runs"]) for k in keys) + " |")
    if not body:
        return []
    return ["", "## Against the human label distributions", "",
            "W1 (exact, task geometry), total variation and Jensen-Shannon (bits): lower is better; "
            "Spearman of the expected coordinate with the gold score: higher is better.", "",
            "| test set | model | " + " | ".join(TITLES[k] for k in keys) + " |",
            "|---|---|" + "---|" * len(keys), *body]


def report_runs(run_dirs: Sequence[str | Path]) -> list[RunLayout]:
    """The runs a report over ``run_dirs`` aggregates: each folder itself, or, for a
    multi-seed run folder (``seed-<s>/`` inside, no ``results.json`` of its own), its seeds
    that have results, as ``knot run`` aggregated them (unfinished seeds are logged and left
    out)."""
    layouts = []
    for d in run_dirs:
        layout = RunLayout(d)
        seeds = [] if layout.results_json.is_file() else layout.seed_runs()
        if not seeds:
            layouts.append(layout)  # load_results says what is missing
            continue
        done = [s for s in seeds if s.results_json.is_file()]
        if not done:
            raise FileNotFoundError(
                f"{layout.root}: no seed has results yet ({', '.join(s.root.name for s in seeds)}); "
                f"finish them with `knot run CONFIG --out {layout.root}`"
            )
        for s in seeds:
            if s not in done:
                log.warning("%s: no results.json (unfinished seed), left out of the report", s.root)
        layouts += done
    return layouts


def learned_cost_tables(layout: RunLayout, models: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown tables of the learned loss costs of a run's students (none: no lines).

    Reads each student's ``geometry_loss.json`` (:data:`knot.distill.GEOMETRY_LOSS_FILE`) and
    shows the ones with an ``origin`` (a learned cost): how it was made, then the matrix.
    """
    lines: list[str] = []
    for m in models:
        if m.get("kind") != "student":
            continue
        path = layout.student(m["name"]) / "geometry_loss.json"
        if not path.is_file():
            continue
        stored = json.loads(path.read_text(encoding="utf-8"))
        origin = stored.get("origin")
        if not origin:
            continue
        labels, cost = stored["labels"], stored["cost"]
        how = ", ".join(f"{k} {v}" for k, v in origin.items() if v is not None)
        lines += ["", f"Student `{m['name']}`: learned loss cost ({how}).", ""]
        lines.append("| | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---|" * len(labels))
        lines += [f"| {a} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for a, row in zip(labels, cost)]
    return ["", "## Learned label costs (first run)"] + lines if lines else []


def write_report(layouts: Sequence[RunLayout], out: str | Path, *, title: str = "knot run") -> Path:
    """Write ``report.md`` and ``plots/`` into ``out`` from the runs' ``results.json``.

    Several layouts are aggregated as seeds of one experiment (mean ± std). Returns the
    path of ``report.md``.
    """
    out = Path(out)
    layouts = [l if isinstance(l, RunLayout) else RunLayout(l) for l in layouts]
    if not layouts:
        raise ValueError("write_report: no run directories given")
    results = [load_results(l.results_json) for l in layouts]
    first = results[0]
    agg = aggregate_rows(results)
    models = _ordered_models(first["models"])
    baselines = baselines_over_runs(results, agg)
    sets = first["test_sets"]
    headline = _headline_set(first)
    n_runs = len(results)
    plots = out / "plots"

    lines = [f"# Report: {title}", ""]
    lines.append(
        f"{n_runs} run(s)" + (" (mean ± std over seeds)" if n_runs > 1 else "")
        + f"; labels: {', '.join(first.get('label_names', []))}. "
        "Higher is better for accuracy and macro-F1; lower for Semantic Distance (SD) and expected cost."
    )
    lines += ["", f"## Headline: `{headline}`", ""]
    lines.append("| model | " + " | ".join(TITLES[m] for m in METRICS) + " |")
    lines.append("|---|" + "---|" * len(METRICS))
    for m in models:
        a = agg.get((m["id"], headline))
        if a is None:
            continue
        lines.append(
            f"| {_model_label(m, baselines)} | "
            + " | ".join(format_cell(a[k], a["n_runs"]) for k in METRICS)
            + " |"
        )
    for m in models:  # a student that kept its start scores like it: say so
        notes = [note for r in results for x in r["models"] if x["id"] == m["id"] and (note := kept_start_note(x))]
        if notes:
            lines += ["", f"Note: {notes[0]}" + (f" (in {len(notes)} of {n_runs} runs)" if n_runs > 1 else "") + "."]
    lines += ["", "## Per test set: macro-F1 / Semantic Distance", ""]
    lines += per_set_table(agg, models, sets)
    lines += gold_table(agg, models, sets)
    lines += learned_cost_tables(layouts[0], models)

    # plots
    lines += ["", "## Plots", ""]
    for metric in ("semantic_distance", "macro_f1"):
        p = plots / f"{metric}.png"
        _plot_metric(agg, models, sets, metric, p)
        lines.append(f"![{TITLES[metric]}](plots/{metric}.png)")
    if n_runs > 1 and baselines.get("global_alone"):
        from knot.stats import paired_comparison

        ref = baselines["global_alone"]
        comps = {}
        for m in models:
            if m["kind"] != "student":
                continue
            per = {}
            for metric, sign in (("semantic_distance", -1), ("macro_f1", +1)):
                pairs = [(_row_of(r, m["id"], headline), _row_of(r, ref, headline)) for r in results]
                if all(a and b and a.get(metric) is not None and b.get(metric) is not None for a, b in pairs):
                    per[metric] = paired_comparison([a[metric] - b[metric] for a, b in pairs], sign=sign)
            if per:
                comps[(m["id"], ref)] = per
        if plot_paired(comps, plots / "paired_vs_global.png",
                       title=f"students − {ref} on {headline}, paired over runs (95 % t interval)"):
            lines.append("![paired differences vs the global model](plots/paired_vs_global.png)")
    conf_written = []
    for m in models:
        if m["kind"] != "student":
            continue
        mats = [r.get("confusion", {}).get(m["id"], {}).get(headline) for r in results]
        mats = [np.asarray(x) for x in mats if x is not None]
        if not mats:
            continue
        name = f"confusion_{m['name']}.png"
        _plot_confusion(sum(mats), first.get("label_names", []), f"{m['id']} on {headline}", plots / name)
        conf_written.append(name)
    for name in conf_written:
        lines.append(f"![confusion](plots/{name})")
    if _plot_curves(_histories(layouts[0], first["models"]), plots / "training_curves.png"):
        lines.append("![training curves](plots/training_curves.png)")
    if n_runs > 1:
        lines += ["", "Runs: " + ", ".join(f"`{l.root}`" for l in layouts)]
    lines += environment_lines(results)
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    log.info("report written to %s", report)
    return report


def environment_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's environment lines: one when every run's ``environment`` is the same,
    else one per distinct environment with the runs (1-based, in the order given) it covers.

    >>> env = {"python": "3.11.9", "torch": "2.5.1", "torch_threads": 1}
    >>> environment_lines([{"environment": env}, {"environment": env}])[1]
    'Environment: knot –, Python 3.11.9, torch 2.5.1, numpy –, scipy –, transformers –; 1 torch thread(s).'
    """
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(results, 1):
        groups.setdefault(environment_line(r.get("environment")), []).append(i)
    if len(groups) == 1:
        return ["", f"Environment: {next(iter(groups))}."]
    lines = ["", "Environment (differs between runs):", ""]
    lines += [f"- run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))}: {line}" for line, runs in groups.items()]
    return lines

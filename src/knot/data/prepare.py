"""Prepare a config's domains: read, map labels, add context, split, write, record.

:func:`prepare_data` writes, inside a run directory (:class:`knot.layout.RunLayout`)::

    data/<domain>/train.jsonl  val.jsonl  test.jsonl     one Example per line
    data/manifest.json                                   what was done, with hashes

and is a no-op when neither the data part of the config nor any source file changed
since the last run (the manifest records a hash of the one and the sha256 of the
others). Every file is written atomically; the old manifest is removed before a redo
starts, so an interrupted run leaves "not prepared" behind, never a mix.

For each domain, in order:

1. read every source (:mod:`knot.data.readers`) and, for dialogue sources, replace each
   utterance by utterance + previous turns (:mod:`knot.data.context`);
2. keep one part if the domain has a ``partition`` (whole dialogues, seeded, stratified);
3. map raw labels to task labels (:mod:`knot.data.labels`), counting per source file
   how many rows each raw label had and how many were dropped or unmapped;
   then, with ``data.dedup`` (the default), keep only the first copy of each exact
   duplicate text, counting the copies dropped and those whose label differed;
4. split: per-file official splits, or seeded stratified ``data.split_ratios`` by
   dialogue (:mod:`knot.data.splits`); then the optional ``max_*`` subsets;
5. check that no split is empty and every required label is in every split.

Last, texts that two domains share (a transfer text also in a teacher's test set, ...)
are counted per pair of domains and splits, recorded in the manifest
(``cross_domain_duplicates``) and logged as a warning; they are not dropped.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from knot import __version__
from knot.errors import ConfigError
from knot.data.builtin import resolve_builtin
from knot.data.context import add_context
from knot.data.example import Example
from knot.data.labels import LabelMapper
from knot.data.readers import SPLITS, Record, read_source, source_files, validate_source
from knot.data.splits import (
    assign_splits,
    derive_rng,
    first_occurrences,
    partition,
    shared_texts,
    stratified_subsample,
)
from knot.geometry import LabelGeometry
from knot.layout import RunLayout
from knot.progress import progress
from knot.utils import atomic_path, atomic_write_json, read_json, sha256_file, sha256_json

__all__ = [
    "DATA_FORMAT",
    "prepare_data",
    "run_prepare",
    "load_split",
    "read_manifest",
    "data_status",
    "task_labels",
    "format_summary",
    "resolve_data_root",
]

log = logging.getLogger(__name__)

#: Bumped when the meaning of prepared files changes, so old ones are redone
#: (2: exact duplicate texts dropped within a domain, see ``data.dedup``).
DATA_FORMAT = 2

NOT_PREPARED = "run `knot data prepare CONFIG` first"


# ---------------------------------------------------------------------------
# config-level helpers
# ---------------------------------------------------------------------------


def task_labels(cfg: Any) -> list[str]:
    """The task's label names, in geometry order (``task.geometry`` / ``task.labels``)."""
    g = LabelGeometry.from_task(cfg.task)
    return list(g.labels)


def _domain_specs(cfg: Any) -> list[list[dict]]:
    return [
        [validate_source(s, f"data.domains[{i}].sources[{j}]") for j, s in enumerate(d.sources)]
        for i, d in enumerate(cfg.data.domains)
    ]


def _check_labels(cfg: Any, labels: list[str]) -> None:
    """Label maps and required labels must name task labels."""
    known = set(labels)
    for i, d in enumerate(cfg.data.domains):
        for raw, target in (d.label_map or {}).items():
            if target is not None and target not in known:
                raise ValueError(
                    f"data.domains[{i}].label_map.{raw}: {target!r} is not a task label "
                    f"(task labels: {', '.join(labels)})"
                )
        for lab in d.require_labels or []:
            if lab not in known:
                raise ValueError(
                    f"data.domains[{i}].require_labels: {lab!r} is not a task label "
                    f"(task labels: {', '.join(labels)})"
                )


def _config_hash(cfg: Any, specs: list[list[dict]], labels: list[str]) -> str:
    d = cfg.data
    domains = []
    for dom, dspecs in zip(d.domains, specs):
        entry = dom.to_dict()
        entry["sources"] = dspecs
        domains.append(entry)
    return sha256_json(
        {
            "format": DATA_FORMAT,
            "seed": d.seed,
            "split_ratios": d.split_ratios,
            "context_turns": d.context_turns,
            "context_separator": d.context_separator,
            "dedup": d.dedup,
            "labels": labels,
            "domains": domains,
        }
    )


def _resolver(cfg: Any, data_root: str | os.PathLike | None) -> Callable[[str], Path]:
    """Map config paths to files: ``builtin:REL`` to the packaged file, absolute as is,
    relative under the data root (resolved only when such a path is met)."""
    root: list[Path] = []

    def resolve(rel: str) -> Path:
        packaged = resolve_builtin(rel)
        if packaged is not None:
            return packaged
        p = Path(rel).expanduser()
        if p.is_absolute():
            return p
        if not root:
            r = resolve_data_root(cfg, data_root)
            if not r.is_dir():
                raise FileNotFoundError(f"data root {r} does not exist (from --data-root, KNOT_DATA or data.root)")
            root.append(r)
        return root[0] / p

    return resolve


def _source_hashes(specs: list[list[dict]], resolve: Callable[[str], Path], cfg) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for dom, dspecs in zip(cfg.data.domains, specs):
        for spec in dspecs:
            for rel in source_files(spec):
                if rel in out:
                    continue
                path = resolve(rel)
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: file not found (a source of domain {dom.name!r})")
                out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def _staleness(old: dict | None, config_hash: str, sources: dict, data_dir: Path) -> list[str]:
    """Why prepared data must be redone (empty list: up to date)."""
    if old is None:
        return ["not prepared yet"]
    if old.get("format") != DATA_FORMAT:
        return [f"prepared with data format {old.get('format')}, this knot writes {DATA_FORMAT}"]
    reasons = []
    if old.get("config_hash") != config_hash:
        reasons.append("the data section of the config changed")
    old_src = {k: v.get("sha256") for k, v in old.get("sources", {}).items()}
    for rel, info in sources.items():
        if rel not in old_src:
            reasons.append(f"new source {rel}")
        elif old_src[rel] != info["sha256"]:
            reasons.append(f"source {rel} changed (sha256 differs)")
    for name, dom in old.get("domains", {}).items():
        for split, f in dom.get("files", {}).items():
            p = data_dir / f["path"]
            if not p.is_file():
                reasons.append(f"{p} is missing")
            elif sha256_file(p) != f["sha256"]:
                reasons.append(f"{p} was modified")
    return reasons


def _try_manifest(data_dir: Path) -> dict | None:
    try:
        return read_manifest(data_dir)
    except (FileNotFoundError, ValueError):
        return None


def data_status(
    cfg: Any, layout: RunLayout, data_root: str | os.PathLike | None = None
) -> list[str]:
    """Reasons the run's prepared data does not match the config and sources (empty: up to date)."""
    labels = task_labels(cfg)
    specs = _domain_specs(cfg)
    resolve = _resolver(cfg, data_root)
    sources = _source_hashes(specs, resolve, cfg)
    return _staleness(_try_manifest(layout.data), _config_hash(cfg, specs, labels), sources, layout.data)


# ---------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------


def prepare_data(
    cfg: Any,
    layout: RunLayout,
    data_root: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> dict:
    """Write every domain's train/val/test files and the manifest; return the manifest.

    Parameters
    ----------
    cfg : Any
        Its ``data`` section says what to read and how to split; ``task`` gives the
        label space.
    layout : RunLayout
        Output goes to ``layout.data``.
    data_root : path, optional
        Folder relative source paths are read from (else ``KNOT_DATA``, else
        ``data.root``; see :func:`resolve_data_root`).
    force : bool
        Redo even when the prepared data is up to date.

    Returns
    -------
    dict
        The manifest (also in ``layout.data / "manifest.json"``): ``domains[name]`` has
        ``role``, ``split`` (the method used), ``counts`` ``{split: n}``,
        ``label_counts`` ``{split: {label: n}}``, ``groups`` ``{split: dialogues}``,
        ``files``, per source file ``read`` (rows, raw label counts, ``dropped`` and
        ``unmapped`` per raw label) and ``duplicates`` (``found`` exact duplicate texts,
        how many were ``dropped``, ``label_conflicts``); ``cross_domain_duplicates``
        lists the texts each pair of domains shares, per pair of splits.

    Raises
    ------
    FileNotFoundError
        A source file or the data root does not exist.
    ValueError
        A malformed file (file and line named), a label map naming a non-task label,
        an empty split or a split missing a required label.
    """
    return run_prepare(cfg, layout, data_root, force=force)[0]


def run_prepare(
    cfg: Any,
    layout: RunLayout,
    data_root: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> tuple[dict, list[str]]:
    """:func:`prepare_data`, also returning why the data was (re)done.

    Returns
    -------
    manifest : dict
    reasons : list of str
        Why the data was prepared (``["not prepared yet"]``, ``["source X changed"]``,
        ``["forced"]``, ...); empty when it was up to date and nothing was written.
    """
    data_dir = layout.data
    labels = task_labels(cfg)
    _check_labels(cfg, labels)
    specs = _domain_specs(cfg)
    resolve = _resolver(cfg, data_root)
    sources = _source_hashes(specs, resolve, cfg)
    config_hash = _config_hash(cfg, specs, labels)
    old = _try_manifest(data_dir)
    reasons = _staleness(old, config_hash, sources, data_dir)
    if not reasons and not force:
        log.info("prepared data in %s is up to date (config and sources unchanged); nothing to do", data_dir)
        return old, []  # type: ignore[return-value]
    reasons = reasons or ["forced"]
    log.info("preparing data in %s: %s", data_dir, "; ".join(reasons))
    if layout.manifest.exists():
        layout.manifest.unlink()

    cache: dict[str, tuple[list[Record], dict]] = {}
    domains: dict[str, dict] = {}
    texts: dict[str, dict[str, set[str]]] = {}
    with progress(total=len(cfg.data.domains), desc="prepare data", unit="domain") as bar:
        for i, (dom, dspecs) in enumerate(zip(cfg.data.domains, specs)):
            domains[dom.name] = _prepare_domain(cfg, i, dom, dspecs, labels, resolve, cache, data_dir, texts)
            bar.update()
    across = _cross_domain_duplicates(texts)

    for name in (old or {}).get("domains", {}):
        if name not in domains:
            _remove_domain(data_dir, name)
    manifest = {
        "format": DATA_FORMAT,
        "knot_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": cfg.data.seed,
        "split_ratios": cfg.data.split_ratios,
        "context_turns": cfg.data.context_turns,
        "context_separator": cfg.data.context_separator,
        "dedup": cfg.data.dedup,
        "labels": labels,
        "config_hash": config_hash,
        "data_hash": sha256_json(
            {n: {s: f["sha256"] for s, f in d["files"].items()} for n, d in domains.items()}
        ),
        "sources": sources,
        "domains": domains,
        "cross_domain_duplicates": across,
    }
    atomic_write_json(layout.manifest, manifest)
    log.info("wrote %s", layout.manifest)
    return manifest, reasons


def _cross_domain_duplicates(texts: dict[str, dict[str, set[str]]]) -> list[dict]:
    """Texts each pair of domains shares (in config order), as manifest entries; a warning
    is logged for each pair that shares any.

    >>> _cross_domain_duplicates({"a": {"train": {"x"}, "test": {"y"}}, "b": {"test": {"x", "z"}}})
    [{'domains': ['a', 'b'], 'texts': 1, 'splits': {'a/train & b/test': 1}}]
    """
    out = []
    names = list(texts)
    for k, a in enumerate(names):
        for b in names[k + 1:]:
            n, pairs = shared_texts(texts[a], texts[b])
            if not n:
                continue
            splits = {f"{a}/{sa} & {b}/{sb}": m for (sa, sb), m in pairs.items()}
            out.append({"domains": [a, b], "texts": n, "splits": splits})
            log.warning(
                "domains %r and %r share %d text(s) (%s); they are kept in both",
                a, b, n, ", ".join(f"{k_}: {m}" for k_, m in splits.items()),
            )
    return out


def _normalised(weights: tuple[float, ...] | None) -> list[float] | None:
    """Gold weights -> probabilities (the reader checked them non-negative, not all zero).

    >>> _normalised((1.0, 0.0, 3.0))
    [0.25, 0.0, 0.75]
    """
    if weights is None:
        return None
    total = float(sum(weights))
    return [w / total for w in weights]


def _remove_domain(data_dir: Path, name: str) -> None:
    folder = data_dir / name
    for split in SPLITS:
        (folder / f"{split}.jsonl").unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def _raw_key(label: Any) -> str | None:
    return ",".join(label) if isinstance(label, tuple) else label


def _prepare_domain(
    cfg: Any,
    i: int,
    dom: Any,
    dspecs: list[dict],
    labels: list[str],
    resolve: Callable[[str], Path],
    cache: dict,
    data_dir: Path,
    texts: dict[str, dict[str, set[str]]],
) -> dict:
    data = cfg.data
    where = f"domain {dom.name!r}"

    # 1. read (+ context), pooled over the sources: (record, source index)
    pool: list[tuple[Record, int]] = []
    read_stats: dict[str, dict] = {}
    keys: list[str] = []
    for j, spec in enumerate(dspecs):
        turns = data.context_turns if spec["context"] else 0
        key = sha256_json([spec, turns, data.context_separator])
        if key not in cache:
            records, stats = read_source(spec, resolve)
            if turns:
                records = add_context(records, turns, data.context_separator)
            log.debug("read %d rows from %s", len(records), spec["path"])
            cache[key] = (records, stats)
        records, stats = cache[key]
        name = spec["path"] if spec["path"] not in read_stats else f"{spec['path']}#{j}"
        keys.append(name)
        read_stats[name] = {"rows": stats["rows"], "filtered": stats["filtered"], "empty": stats["empty"]}
        pool.extend((r, j) for r in records)

    # 2. partition by dialogue
    if dom.partition is not None:
        parts, index = dom.partition["parts"], dom.partition["index"]
        groups = [r.group for r, _ in pool]
        raw = [str(_raw_key(r.label)) for r, _ in pool]
        part = partition(raw, groups, parts, derive_rng(data.seed, "partition", parts))
        pool = [p for p, k in zip(pool, part) if k == index]

    # 3. labels
    mappers = [
        LabelMapper(dom.label_map, labels, multi_label=spec.get("multi_label", "drop")) for spec in dspecs
    ]
    kept: list[tuple[Record, int, str | None]] = []
    in_part = Counter(j for _, j in pool)
    for rec, j in pool:
        label = mappers[j](rec.label)
        if label is None and rec.label is not None:
            continue
        kept.append((rec, j, label))
    for j, (name, m) in enumerate(zip(keys, mappers)):
        rep = m.report()
        read_stats[name].update(
            {"in_domain": in_part[j], "kept": sum(1 for _, k, _ in kept if k == j), **rep}
        )
        if rep["unmapped"]:
            log.warning(
                "%s: %s: %d row(s) with labels outside the label map dropped: %s",
                where, name, sum(rep["unmapped"].values()), rep["unmapped"],
            )

    # gold distributions: one weight per task label, normalised when written
    for rec, j, _ in kept:
        if rec.gold is not None and len(rec.gold) != len(labels):
            raise ValueError(
                f"{resolve(dspecs[j]['path'])}:{rec.line}: gold distribution has {len(rec.gold)} "
                f"weights, the task has {len(labels)} labels ({', '.join(labels)})"
            )

    # duplicates: the first copy of each text stays (so no text is in two splits)
    keep, conflicts = first_occurrences([rec.text for rec, _, _ in kept], [lab for _, _, lab in kept])
    duplicates = {"found": len(kept) - len(keep), "dropped": 0, "label_conflicts": conflicts}
    if duplicates["found"]:
        if data.dedup:
            kept = [kept[k] for k in keep]
            duplicates["dropped"] = duplicates["found"]
            log.info("%s: dropped %d duplicate text(s) (%d with another label than the copy kept)",
                     where, duplicates["found"], conflicts)
        else:
            log.warning("%s: %d duplicate text(s) kept (data.dedup is false): a text may be in two splits",
                        where, duplicates["found"])

    # 4. split
    method = dom.split
    if method == "auto":
        method = "official" if all(s["split"] for s in dspecs) else "random"
    if method == "official":
        split_of = []
        for rec, j, _ in kept:
            s = dspecs[j]["split"] or rec.split
            if s is None:
                raise ValueError(
                    f"data.domains[{i}] ({dom.name}): split is official, but source "
                    f"{dspecs[j]['path']} has no official split (give the source "
                    f"`split: train|val|test`, or `official_splits` for MARC)"
                )
            split_of.append(s)
    else:
        grouped = [rec.group for rec, _, _ in kept]
        assign = assign_splits(
            [lab for _, _, lab in kept], grouped, data.split_ratios, derive_rng(data.seed, "split")
        )
        split_of = [SPLITS[a] for a in assign]
    by_split: dict[str, list[tuple[Record, int, str | None]]] = {s: [] for s in SPLITS}
    for item, s in zip(kept, split_of):
        by_split[s].append(item)

    subsampled = {}
    for s in SPLITS:
        cap = getattr(dom, f"max_{s}")
        if cap is not None and len(by_split[s]) > cap:
            idx = stratified_subsample(
                [lab for _, _, lab in by_split[s]], cap, derive_rng(data.seed, "subsample", s)
            )
            subsampled[s] = len(by_split[s])
            by_split[s] = [by_split[s][k] for k in idx]

    # 5. checks
    labelled = any(lab is not None for _, _, lab in kept)
    if dom.require_labels is not None:
        required = list(dom.require_labels)
    elif dom.label_map is not None:
        required = sorted({v for v in dom.label_map.values() if v is not None})
    else:
        required = list(labels)
    dropped_total = sum(sum(r["dropped"].values()) + sum(r["unmapped"].values()) for r in read_stats.values())
    for s in SPLITS:
        if not by_split[s]:
            raise ValueError(
                f"{where}: the {s} split is empty ({len(pool)} rows in the domain, "
                f"{dropped_total} dropped by the label map, split method {method})"
            )
        if labelled and required:
            present = {lab for _, _, lab in by_split[s]}
            missing = [lab for lab in required if lab not in present]
            if missing:
                raise ValueError(
                    f"{where}: the {s} split has no example of {', '.join(map(repr, missing))} "
                    f"(required: {', '.join(required)}; set data.domains[{i}].require_labels "
                    f"to change which labels every split needs)"
                )

    # write
    order = list(labels)
    files, counts, label_counts, groups, gold = {}, {}, {}, {}, {}
    for s in SPLITS:
        items = by_split[s]
        path = data_dir / dom.name / f"{s}.jsonl"
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                for rec, _, lab in items:
                    ex = Example(rec.text, lab, dom.name, rec.group, _normalised(rec.gold), rec.score)
                    fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
        files[s] = {"path": f"{dom.name}/{s}.jsonl", "sha256": sha256_file(path)}
        counts[s] = len(items)
        gold[s] = {"dist": sum(rec.gold is not None for rec, _, _ in items),
                   "score": sum(rec.score is not None for rec, _, _ in items)}
        c = Counter(lab for _, _, lab in items)
        keys_sorted = order + sorted((k for k in c if k not in order), key=lambda k: (k is None, str(k)))
        label_counts[s] = {str(k): c.get(k, 0) for k in keys_sorted if labelled or k is None}
        groups[s] = len({rec.group for rec, _, _ in items if rec.group is not None})
    texts[dom.name] = {s: {rec.text for rec, _, _ in by_split[s]} for s in SPLITS}
    log.info("%s: %s", dom.name, ", ".join(f"{s} {counts[s]}" for s in SPLITS))
    return {
        "role": dom.role,
        "split": method,
        "sources": [s["path"] for s in dspecs],
        "partition": dom.partition,
        "counts": counts,
        "label_counts": label_counts,
        "groups": groups,
        "subsampled_from": subsampled,
        "duplicates": duplicates,
        "gold": gold,
        "files": files,
        "read": read_stats,
    }


# ---------------------------------------------------------------------------
# reading prepared data
# ---------------------------------------------------------------------------


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """The manifest of prepared data in ``data_dir`` (a run's ``data/`` folder).

    Raises ``FileNotFoundError`` saying to run ``knot data prepare CONFIG`` when there is none.
    """
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir}: no prepared data (manifest.json missing); {NOT_PREPARED}")
    try:
        manifest = read_json(path)
    except ValueError as exc:
        raise ValueError(f"{exc}; {NOT_PREPARED}") from None
    if not isinstance(manifest, dict) or "domains" not in manifest:
        raise ValueError(f"{path}: not a knot data manifest; {NOT_PREPARED}")
    return manifest


def load_split(data_dir: str | os.PathLike, domain: str, split: str) -> list[Example]:
    """The examples of one domain's split, in file order.

    Parameters
    ----------
    data_dir : path
        A run's prepared-data folder (``layout.data``).
    domain : str
        A domain name of the config.
    split : {"train", "val", "test"}

    Returns
    -------
    list of Example
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected train, val or test, got {split!r}")
    manifest = read_manifest(data_dir)
    if domain not in manifest["domains"]:
        have = ", ".join(manifest["domains"]) or "none"
        raise ValueError(
            f"domain {domain!r} is not in the prepared data in {data_dir} (domains: {have}); "
            f"if the config changed, {NOT_PREPARED}"
        )
    path = Path(data_dir) / domain / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {NOT_PREPARED}")
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                out.append(Example.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a prepared example ({exc}); {NOT_PREPARED}") from None
    return out


# ---------------------------------------------------------------------------
# display
# ---------------------------------------------------------------------------


def format_summary(manifest: dict) -> str:
    """A plain-text table of domains, splits and label counts, then what was dropped.

    >>> m = {"labels": ["neg", "pos"], "domains": {"a": {"role": "local",
    ...      "counts": {"train": 3, "val": 1, "test": 1}, "groups": {},
    ...      "label_counts": {"train": {"neg": 1, "pos": 2}, "val": {"neg": 1, "pos": 0},
    ...                       "test": {"neg": 0, "pos": 1}},
    ...      "read": {"a.csv": {"dropped": {"meh": 2}, "unmapped": {}}}}}}
    >>> print(format_summary(m))
    domain  role   split  n  dialogues  neg  pos
    a       local  train  3          -    1    2
                   val    1          -    1    0
                   test   1          -    0    1
    <BLANKLINE>
    dropped by the label map:
      a  a.csv: meh 2
    """
    labels = list(manifest.get("labels") or [])
    for dom in manifest["domains"].values():
        for lc in dom.get("label_counts", {}).values():
            labels.extend(k for k in lc if k not in labels)
    header = ["domain", "role", "split", "n", "dialogues", *labels]
    rows = []
    for name, dom in manifest["domains"].items():
        for k, s in enumerate(SPLITS):
            lc = dom.get("label_counts", {}).get(s, {})
            n_groups = dom.get("groups", {}).get(s, 0)
            rows.append(
                [name if k == 0 else "", dom["role"] if k == 0 else "", s, str(dom["counts"][s]),
                 str(n_groups) if n_groups else "-", *(str(lc[lab]) if lab in lc else "-" for lab in labels)]
            )
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    right = {3, 4, *range(5, len(header))}

    def fmt(row: list[str]) -> str:
        cells = [v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    lines = [fmt(header), *(fmt(r) for r in rows)]
    notes = []
    for name, dom in manifest["domains"].items():
        for src, st in dom.get("read", {}).items():
            parts = []
            for kind, suffix in (("dropped", ""), ("unmapped", " (not in the label map)")):
                if st.get(kind):
                    parts.append(", ".join(f"{lab} {n}" for lab, n in st[kind].items()) + suffix)
            if parts:
                notes.append(f"  {name}  {src}: {'; '.join(parts)}")
    if notes:
        lines += ["", "dropped by the label map:", *notes]
    dups = []
    for name, dom in manifest["domains"].items():
        d = dom.get("duplicates") or {}
        if d.get("found"):
            verb = "dropped" if d.get("dropped") else "kept (data.dedup: false)"
            dups.append(f"  {name}: {d['found']} {verb}, {d.get('label_conflicts', 0)} with another label")
    for entry in manifest.get("cross_domain_duplicates") or []:
        a, b = entry["domains"]
        where = ", ".join(f"{k} {n}" for k, n in entry["splits"].items())
        dups.append(f"  {a} & {b}: {entry['texts']} shared text(s) ({where})")
    if dups:
        lines += ["", "duplicate texts:", *dups]
    return "\n".join(lines)


def resolve_data_root(cfg: Any, override: str | os.PathLike | None = None) -> Path:
    """The data root: ``override`` (``--data-root``), else ``KNOT_DATA``, else ``data.root``.

    A relative ``data.root`` is taken relative to the current directory; ``builtin``
    names the datasets packaged with knot (:mod:`knot.data.builtin`).
    """
    for candidate in (override, os.environ.get("KNOT_DATA"), cfg.data.root):
        if candidate:
            if str(candidate) == "builtin":
                from knot.data.builtin import builtin_root

                return builtin_root()
            return Path(candidate).expanduser()
    raise ConfigError(
        "no data root: pass --data-root DIR, set the KNOT_DATA environment variable, "
        "or set data.root in the config (`builtin` names the data shipped with knot, see `knot data list`)"
    )

"""Streaming readers for the corpora knot supports, in their original formats.

A *source* is one file plus the options of the reader that understands it, written in
a config as a mapping::

    {reader: marc, path: amazon_reviews_multi_en/prodAnalysis/toy.json.gz}
    {reader: meld, path: meld/train_sent_emo.csv, split: train}

Every reader streams its file line by line (gzip or plain, detected by the magic bytes;
UTF-8 with or without a byte-order mark; LF or CRLF line ends) and yields
:class:`Record` objects holding the raw text, the raw label, the dialogue (``group``)
and the position of the row. Label mapping, dialogue context and splitting happen later
(:mod:`knot.data.labels`, :mod:`knot.data.context`, :mod:`knot.data.splits`).

Options every source takes:

``reader``
    One of :data:`READERS` (``marc``/``amazon``, ``meld``, ``emorynlp``, ``silicone``,
    ``goemotions``, ``sst``, ``vader``, ``csv``, ``jsonl``).
``path``
    The file, relative to the data root (or absolute); ``builtin:REL`` names a file
    shipped inside knot (:mod:`knot.data.builtin`) whatever the data root.
``split``
    ``train``, ``val`` or ``test`` when the whole file is one official split, else null.
``context``
    Whether utterances get their dialogue context (default: true for the dialogue
    readers ``meld``, ``emorynlp``, ``silicone``; for ``csv``/``jsonl`` only useful with a
    ``group`` column).
``empty``
    ``error`` (default) stops at a row with an empty text, naming file and line;
    ``skip`` drops such rows and counts them in the manifest.

Errors a user can get name the file and, where there is one, the line:
a missing file, a malformed JSON line or CSV row, a missing column or field, invalid
UTF-8, an unreadable gzip file.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from knot.errors import ConfigError, parse_finite

__all__ = [
    "Record",
    "ReaderInfo",
    "READERS",
    "iter_lines",
    "iter_jsonl",
    "iter_csv",
    "validate_source",
    "source_files",
    "read_source",
    "parse_gold",
    "parse_finite",
    "vader_bin",
    "VADER_EDGES",
]

GZIP_MAGIC = b"\x1f\x8b"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One raw row of a source file.

    ``label`` is the raw label as a string, a tuple of strings for a multi-label row
    (GoEmotions), or ``None`` when the source has no labels. ``group`` names the
    dialogue and ``order`` sorts utterances inside it; readers yield the corpus's own
    dialogue id and :func:`read_source` makes it ``"<source path>:<id>"``, since ids
    repeat across files (DailyDialog dev and test both count from 1).
    ``split`` is the official split of this very row when the reader knows it from the
    row itself (MARC review ids), else ``None``.
    ``gold`` is the row's human label distribution: non-negative weights (counts or
    probabilities, not all zero) over the task's labels in their geometry order;
    ``score`` a gold scalar such as VADER's mean rating. Both are ``None`` when the
    source has none.
    """

    text: str
    label: str | tuple[str, ...] | None
    group: str | None
    line: int
    order: float = 0.0
    split: str | None = None
    gold: tuple[float, ...] | None = None
    score: float | None = None


# ---------------------------------------------------------------------------
# low-level streaming
# ---------------------------------------------------------------------------


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a plain or gzip file.

    The line keeps its line end (``csv`` needs it for quoted newlines); a UTF-8 BOM on
    the first line is removed.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = p.write_bytes("\\ufeffone\\r\\ntwo".encode("utf-8"))
    >>> list(iter_lines(p))
    [(1, 'one\\r\\n'), (2, 'two')]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, "rb") as fh:
        is_gz = fh.read(2) == GZIP_MAGIC
    if path.suffix == ".gz" and not is_gz:
        raise ValueError(f"{path}: unreadable gzip file (not in gzip format)")
    opener = gzip.open if is_gz else open
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(
                        f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
                    ) from None
                if lineno == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield lineno, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: unreadable gzip file ({exc})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file."""
    for lineno, text in iter_lines(path):
        s = text.strip()
        if not s:
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def iter_csv(
    path: str | Path,
    *,
    delimiter: str = ",",
    header: bool = True,
    require: tuple[str, ...] = (),
    quoting: int = csv.QUOTE_MINIMAL,
) -> Iterator[tuple[int, dict[str, str] | list[str]]]:
    """Yield ``(line_number, row)`` for each record of a CSV/TSV file.

    With ``header`` the rows are dicts keyed by the header and every column of
    ``require`` must exist; without it rows are lists. A row with a different number of
    fields than the header, or broken quoting, is an error naming the line where the row
    starts. Blank lines are skipped.
    """
    state = {"line": 0}
    lines = iter_lines(path)

    def feed() -> Iterator[str]:
        for lineno, text in lines:
            state["line"] = lineno
            yield text

    reader = csv.reader(feed(), delimiter=delimiter, quoting=quoting, strict=True)
    columns: list[str] | None = None
    end = 0
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            seen = state["line"]
            at = f", found at line {seen}" if seen > start else ""
            raise ValueError(f"{path}:{start}: malformed CSV row ({exc}{at})") from None
        end = state["line"]
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header and columns is None:
            columns = [c.strip() for c in row]
            missing = [c for c in require if c not in columns]
            if missing:
                raise ValueError(
                    f"{path}: missing column {missing[0]!r} (columns: {', '.join(columns)})"
                )
            continue
        if columns is not None:
            if len(row) != len(columns):
                raise ValueError(
                    f"{path}:{start}: malformed CSV row: expected {len(columns)} fields, "
                    f"got {len(row)}"
                )
            yield start, dict(zip(columns, row))
        else:
            yield start, row
    if header and columns is None and require:
        raise ValueError(f"{path}: empty file (no header row)")


# ---------------------------------------------------------------------------
# helpers shared by the readers
# ---------------------------------------------------------------------------


def _label_str(value: Any, where: str) -> str | None:
    """Raw label -> string: ``5`` and ``5.0`` -> ``"5"``; strings are stripped.

    A numeric label (a JSON star rating) must be finite: ``NaN``, ``Infinity`` and
    ``1e999`` in a JSON file are an error naming ``where``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        parse_finite(value, where)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _field(obj: dict, key: str, path: Path, lineno: int) -> Any:
    if key not in obj:
        raise ValueError(f"{path}:{lineno}: missing field {key!r}")
    return obj[key]


def _text(value: Any, path: Path, lineno: int, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{path}:{lineno}: field {key!r}: expected a string, got {value!r}")
    return value.strip()


def _number(value: Any, path: Path, lineno: int, key: str) -> float:
    return parse_finite(value, f"{path}:{lineno}: column {key!r}")


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------

ReaderFn = Callable[[Path, dict, Callable[[str], Path], dict], Iterator[Record]]


@dataclass(frozen=True)
class ReaderInfo:
    """A reader: its function, its options ``{name: (types, default)}`` and kind."""

    name: str
    fn: ReaderFn
    options: dict[str, tuple[tuple[type, ...], Any]]
    dialogue: bool
    path_options: tuple[str, ...] = ()


READERS: dict[str, ReaderInfo] = {}

_COMMON = {
    "reader": ((str,), None),
    "path": ((str,), None),
    "split": ((str, type(None)), None),
    "context": ((bool, type(None)), None),
    "empty": ((str,), "error"),
}


def _register(name: str, *, options: dict, dialogue: bool = False, path_options=(), aliases=()):
    def deco(fn: ReaderFn) -> ReaderFn:
        info = ReaderInfo(name, fn, {**_COMMON, **options}, dialogue, tuple(path_options))
        for n in (name, *aliases):
            READERS[n] = info
        return fn

    return deco


# ---------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------


def _review_ids(path: Path) -> set[str]:
    ids = set()
    for lineno, obj in iter_jsonl(path):
        ids.add(str(_field(obj, "review_id", path, lineno)))
    return ids


@_register(
    "marc",
    aliases=("amazon",),
    options={
        "category": ((str, list, type(None)), None),
        "title": ((bool,), False),
        "official_splits": ((dict, type(None)), None),
    },
    path_options=("official_splits",),
)
def read_amazon(path: Path, opts: dict, resolve: Callable[[str], Path], stats: dict) -> Iterator[Record]:
    """Amazon reviews as JSON lines, MARC or McAuley layout (detected per line).

    MARC: ``review_body`` (text), ``review_title``, ``stars`` (label), ``product_category``,
    ``review_id``. McAuley: ``reviewText``, ``summary``, ``overall`` (``5.0`` -> ``"5"``).
    ``category`` keeps only rows of that ``product_category`` (a name or a list);
    ``title`` puts the title in front of the body (``"title. body"``);
    ``official_splits`` ``{val: FILE, test: FILE}`` names the MARC files whose review ids
    form the official dev and test sets, so ``split: official`` can use them (every
    other review is official train).
    """
    cats = opts["category"]
    cats = None if cats is None else ({cats} if isinstance(cats, str) else set(cats))
    official: dict[str, set[str]] = {}
    for split, rel in (opts["official_splits"] or {}).items():
        official[split] = _review_ids(resolve(rel))
    for lineno, obj in iter_jsonl(path):
        if "review_body" in obj or "stars" in obj:
            body = _text(_field(obj, "review_body", path, lineno), path, lineno, "review_body")
            title = _text(obj.get("review_title"), path, lineno, "review_title")
            label = _label_str(_field(obj, "stars", path, lineno), f"{path}:{lineno}: field 'stars'")
        elif "reviewText" in obj or "overall" in obj:
            body = _text(obj.get("reviewText"), path, lineno, "reviewText")
            title = _text(obj.get("summary"), path, lineno, "summary")
            label = _label_str(_field(obj, "overall", path, lineno), f"{path}:{lineno}: field 'overall'")
        else:
            raise ValueError(
                f"{path}:{lineno}: not an Amazon review: expected MARC fields (review_body, "
                f"stars) or McAuley fields (reviewText, overall), got {sorted(obj)}"
            )
        if cats is not None:
            cat = _field(obj, "product_category", path, lineno)
            if cat not in cats:
                stats["filtered"] = stats.get("filtered", 0) + 1
                continue
        split = None
        if official:
            rid = str(_field(obj, "review_id", path, lineno))
            split = next((s for s, ids in official.items() if rid in ids), "train")
        text = f"{title}. {body}" if opts["title"] and title and body else body
        yield Record(text, label, None, lineno, float(lineno), split)


def _csv_dialogue(
    path: Path,
    opts: dict,
    *,
    group_cols: tuple[str, ...],
    order_col: str | None,
    group_fmt: Callable[[list[str]], str],
) -> Iterator[Record]:
    text_col, label_col = "Utterance", opts["label_column"]
    require = (text_col, label_col, *group_cols) + ((order_col,) if order_col else ())
    for lineno, row in iter_csv(path, require=require):
        gid = group_fmt([row[c].strip() for c in group_cols])
        order = _number(row[order_col], path, lineno, order_col) if order_col else float(lineno)
        label = _label_str(row[label_col], f"{path}:{lineno}: column {label_col!r}")
        yield Record(row[text_col].strip(), label, gid, lineno, order)


@_register("meld", options={"label_column": ((str,), "Emotion")}, dialogue=True)
def read_meld(path: Path, opts: dict, resolve, stats: dict) -> Iterator[Record]:
    """MELD CSV: ``Utterance``, ``Emotion`` (or ``label_column: Sentiment``), ``Dialogue_ID``,
    ``Utterance_ID``. A dialogue is ``Dialogue_ID`` within one file."""
    return _csv_dialogue(
        path, opts, group_cols=("Dialogue_ID",), order_col="Utterance_ID", group_fmt=lambda v: v[0]
    )


@_register("emorynlp", options={"label_column": ((str,), "Emotion")}, dialogue=True)
def read_emorynlp(path: Path, opts: dict, resolve, stats: dict) -> Iterator[Record]:
    """EmoryNLP CSV: ``Utterance``, ``Emotion``, ``Season``, ``Episode``, ``Scene_ID``,
    ``Utterance_ID``. A dialogue is one scene (season, episode, scene)."""
    return _csv_dialogue(
        path,
        opts,
        group_cols=("Season", "Episode", "Scene_ID"),
        order_col="Utterance_ID",
        group_fmt=lambda v: f"s{v[0]}e{v[1]}c{v[2]}",
    )


@_register("silicone", options={"label_column": ((str,), "Emotion")}, dialogue=True)
def read_silicone(path: Path, opts: dict, resolve, stats: dict) -> Iterator[Record]:
    """SILICONE CSV (DailyDialog ``dyda``, IEMOCAP): ``Utterance``, ``Emotion``,
    ``Dialogue_ID``; utterances are in dialogue order in the file."""
    return _csv_dialogue(
        path, opts, group_cols=("Dialogue_ID",), order_col=None, group_fmt=lambda v: v[0]
    )


@_register(
    "goemotions",
    options={"labels_file": ((str, type(None)), None), "multi_label": ((str,), "drop")},
    path_options=("labels_file",),
)
def read_goemotions(path: Path, opts: dict, resolve, stats: dict) -> Iterator[Record]:
    """GoEmotions TSV without header: text, comma-separated label ids, comment id.

    ``labels_file`` (one name per line, ``labels.txt`` of the release) turns ids into
    names; without it the raw labels are the ids. A row with several labels yields a
    tuple; the source's ``multi_label`` policy (``drop``, ``first`` or ``map``) decides
    what happens to it (:mod:`knot.data.labels`).
    """
    names: list[str] | None = None
    if opts["labels_file"]:
        lf = resolve(opts["labels_file"])
        names = [t.strip() for _, t in iter_lines(lf) if t.strip()]
    for lineno, row in iter_csv(path, delimiter="\t", header=False, quoting=csv.QUOTE_NONE):
        if len(row) < 2:
            raise ValueError(
                f"{path}:{lineno}: malformed TSV row: expected text, label ids[, id], "
                f"got {len(row)} field(s)"
            )
        ids = [t.strip() for t in row[1].split(",") if t.strip()]
        if not ids:
            raise ValueError(f"{path}:{lineno}: no label id")
        if names is not None:
            labels = []
            for t in ids:
                if not t.isdigit() or int(t) >= len(names):
                    raise ValueError(
                        f"{path}:{lineno}: label id {t!r} is not an index into "
                        f"{opts['labels_file']} ({len(names)} names)"
                    )
                labels.append(names[int(t)])
        else:
            labels = ids
        label: str | tuple[str, ...] = labels[0] if len(labels) == 1 else tuple(labels)
        yield Record(row[0].strip(), label, None, lineno, float(lineno))


_SST_ROOT = re.compile(r"^\((\d+)\s")
_SST_LEAF = re.compile(r"\(\d+ ([^()\s]+)\)")
_PTB_TOKENS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}


def sst_tree(line: str) -> tuple[str, str]:
    """Root label and leaf text of one PTB-style SST tree.

    >>> sst_tree("(3 (2 It) (4 (2 -LRB-great-RRB-) (2 \\\\/fun)))")
    ('3', 'It (great) /fun')
    """
    s = line.strip()
    m = _SST_ROOT.match(s)
    if not m or s.count("(") != s.count(")"):
        raise ValueError("expected a bracketed tree like (3 (2 word) ...)")
    words = _SST_LEAF.findall(s)
    if not words:
        raise ValueError("tree has no leaves")
    out = []
    for w in words:
        for k, v in _PTB_TOKENS.items():
            w = w.replace(k, v)
        out.append(w.replace("\\/", "/").replace("\\*", "*"))
    return m.group(1), " ".join(out)


@_register("sst", options={})
def read_sst(path: Path, opts: dict, resolve, stats: dict) -> Iterator[Record]:
    """SST PTB trees, one per line: the root label (``"0"``..``"4"``) and the leaves."""
    for lineno, text in iter_lines(path):
        if not text.strip():
            continue
        try:
            label, sentence = sst_tree(text)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: malformed tree ({exc})") from None
        yield Record(sentence, label, None, lineno, float(lineno))


#: VADER's five ordinal bins on the -4..+4 scale: the inner edges (see :func:`vader_bin`).
VADER_EDGES = (-2.4, -0.8, 0.8, 2.4)


def vader_bin(x: float, edges: tuple[float, ...] = VADER_EDGES) -> int:
    """0-based bin of a VADER rating or mean rating: the number of edges it passes.

    A value on an edge goes to the more extreme bin (below zero an edge belongs to the
    bin under it, at or above zero to the bin over it), so the five bins are
    ``<= -2.4``, ``(-2.4, -0.8]``, ``(-0.8, 0.8)``, ``[0.8, 2.4)``, ``>= 2.4`` and
    the integer ratings map -4, -3 -> 0; -2, -1 -> 1; 0 -> 2; 1, 2 -> 3; 3, 4 -> 4.

    >>> [vader_bin(r) for r in range(-4, 5)]
    [0, 0, 1, 1, 2, 3, 3, 4, 4]
    >>> vader_bin(-2.4), vader_bin(-0.8), vader_bin(-0.75), vader_bin(0.8), vader_bin(2.4)
    (0, 1, 2, 3, 4)
    """
    return sum(1 for e in edges if (x >= e if e >= 0 else x > e))


def _tsv_fields(path: Path, lineno: int, text: str, n: int, layout: str) -> list[str]:
    fields = text.rstrip("\r\n").split("\t")
    if len(fields) != n:
        raise ValueError(f"{path}:{lineno}: malformed line: expected {layout}, got {len(fields)} field(s)")
    return fields


def _vader_ratings(path: Path, lineno: int, mean_s: str, raw: str) -> list[int]:
    """The integer ratings of one anonDataRatings line, checked against its mean."""
    s = raw.strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise ValueError(f"{path}:{lineno}: ratings: expected a list like [1, -2, 0], got {raw!r}")
    items = [t.strip() for t in s[1:-1].split(",")]
    if items == [""]:
        raise ValueError(f"{path}:{lineno}: ratings: empty list")
    ratings = []
    for t in items:
        if not re.fullmatch(r"[+-]?\d+", t) or not -4 <= int(t) <= 4:
            raise ValueError(f"{path}:{lineno}: ratings: {t!r} is not an integer from -4 to 4")
        ratings.append(int(t))
    mean = _number(mean_s, path, lineno, "mean")
    decimals = len(mean_s.strip().partition(".")[2])
    got = sum(ratings) / len(ratings)
    if abs(got - mean) > 0.5 * 10.0 ** -decimals + 1e-9:
        raise ValueError(
            f"{path}:{lineno}: mean {mean_s.strip()} does not match the {len(ratings)} ratings (their mean is {got:.6g})"
        )
    return ratings


@_register(
    "vader",
    options={"ratings": ((str, type(None)), None), "edges": ((list,), list(VADER_EDGES))},
    path_options=("ratings",),
)
def read_vader(path: Path, opts: dict, resolve, stats: dict) -> Iterator[Record]:
    """VADER human-rated sentences (Hutto & Gilbert, ICWSM 2014), built into knot.

    ``path`` is a ``*_GroundTruth.txt`` file (``id \\t mean \\t text``); ``ratings`` its
    ``*_anonDataRatings.txt`` (``id \\t mean \\t std \\t [every rater's integer rating]``),
    by default the same name with ``anonDataRatings`` for ``GroundTruth``. The two are
    joined by id; an id in only one of them is an error naming the file and line.

    * label: the GroundTruth mean rating in five ordinal bins ``"1"``..``"5"`` (the
      ``sentiment5`` labels), ``<= -2.4``, ``(-2.4, -0.8]``, ``(-0.8, 0.8)``,
      ``[0.8, 2.4)``, ``>= 2.4`` (``edges``; a mean on an edge goes to the more
      extreme bin, see :func:`vader_bin`);
    * gold distribution: every rater's rating in the same bins (-4, -3 -> ``"1"``;
      -2, -1 -> ``"2"``; 0 -> ``"3"``; 1, 2 -> ``"4"``; 3, 4 -> ``"5"``), as counts;
    * gold score: the GroundTruth mean rating.

    The gold distribution is over the five bins in this order, so the task must have
    five labels in the same order (``sentiment5``); a ``label_map`` that merges bins
    leaves it at five weights, which prepare rejects naming the file and line.

    A ratings line whose list is empty, holds a non-integer or out-of-range rating, or
    whose mean differs from its ratings' mean by more than the rounding of its printed
    decimals is an error. (The GroundTruth mean of 199 of the 1,000 many-rater tweets
    differs from the ratings file's own mean; the GroundTruth one, the published gold
    standard, is used for label and score.)
    """
    edges = tuple(float(e) for e in opts["edges"])
    rpath = resolve(opts["ratings"])  # filled in by validate_source
    ratings: dict[str, tuple[int, list[int]]] = {}
    for lineno, text in iter_lines(rpath):
        if not text.strip():
            continue
        rid, mean_s, _std, raw = _tsv_fields(rpath, lineno, text, 4, "id, mean, std, [ratings]")
        if rid.strip() in ratings:
            raise ValueError(f"{rpath}:{lineno}: id {rid.strip()!r} repeated (first on line {ratings[rid.strip()][0]})")
        ratings[rid.strip()] = (lineno, _vader_ratings(rpath, lineno, mean_s, raw))
    seen: set[str] = set()
    for lineno, text in iter_lines(path):
        if not text.strip():
            continue
        rid, mean_s, sentence = _tsv_fields(path, lineno, text, 3, "id, mean, text")
        rid = rid.strip()
        if rid not in ratings:
            raise ValueError(f"{path}:{lineno}: id {rid!r} has no ratings in {rpath}")
        if rid in seen:
            raise ValueError(f"{path}:{lineno}: id {rid!r} repeated")
        seen.add(rid)
        mean = _number(mean_s, path, lineno, "mean")
        counts = [0.0] * (len(edges) + 1)
        for r in ratings[rid][1]:
            counts[vader_bin(r, edges)] += 1.0
        label = str(vader_bin(mean, edges) + 1)
        yield Record(sentence.strip(), label, None, lineno, float(lineno), gold=tuple(counts), score=mean)
    extra = [rid for rid in ratings if rid not in seen]
    if extra:
        line = ratings[extra[0]][0]
        raise ValueError(f"{rpath}:{line}: id {extra[0]!r} has no text in {path} ({len(extra)} such id(s))")


_GENERIC = {
    "text": ((str,), None),
    "label": ((str, type(None)), None),
    "group": ((str, type(None)), None),
    "order": ((str, type(None)), None),
    "gold": ((str, type(None)), None),
    "score": ((str, type(None)), None),
}
_GENERIC_COLUMNS = ("text", "label", "group", "order", "gold", "score")


def parse_gold(value: Any, path: Path, lineno: int, key: str) -> tuple[float, ...]:
    """A gold distribution cell: a list of numbers, or a string holding one (JSON
    ``[1, 0, 3]`` or numbers separated by commas, semicolons or spaces). The weights
    (counts or probabilities) must be finite, non-negative and not all zero; their
    number is checked against the task's labels when the data is prepared.

    >>> parse_gold("[3, 0, 1]", Path("a.csv"), 2, "dist")
    (3.0, 0.0, 1.0)
    >>> parse_gold("0.5 0.5", Path("a.csv"), 2, "dist")
    (0.5, 0.5)
    >>> parse_gold([0, 0], Path("a.jsonl"), 7, "dist")
    Traceback (most recent call last):
    ...
    ValueError: a.jsonl:7: field 'dist': gold distribution is all zero
    """
    where = f"{path}:{lineno}: field {key!r}"
    items = value
    if isinstance(value, str):
        items = [t for t in re.split(r"[\s,;]+", value.strip().strip("[]")) if t]
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"{where}: expected a list of per-class weights, got {value!r}")
    out = []
    for k, t in enumerate(items):
        x = parse_finite(t, f"{where}: weight {k}")
        if x < 0:
            raise ValueError(f"{where}: weight {t!r} is negative")
        out.append(x)
    if not any(out):
        raise ValueError(f"{where}: gold distribution is all zero")
    if not math.isfinite(sum(out)):
        raise ValueError(f"{where}: weights too large (their sum overflows)")
    return tuple(out)


@_register("csv", options={**_GENERIC, "delimiter": ((str,), ",")})
def read_csv(path: Path, opts: dict, resolve, stats: dict) -> Iterator[Record]:
    """Any CSV/TSV with a header: ``text`` names the text column, ``label``, ``group``
    (dialogue id) and ``order`` (position in the dialogue) the optional others;
    ``gold`` a column of per-class counts or probabilities in the task's label order
    (:func:`parse_gold`) and ``score`` one of gold scores (e.g. a mean rating);
    ``delimiter`` is ``","`` by default (``"\\t"`` for TSV)."""
    cols = tuple(opts[k] for k in _GENERIC_COLUMNS if opts[k])
    for lineno, row in iter_csv(path, delimiter=opts["delimiter"], require=cols):
        yield _generic_record(row, opts, path, lineno)


@_register("jsonl", options=dict(_GENERIC))
def read_jsonl(path: Path, opts: dict, resolve, stats: dict) -> Iterator[Record]:
    """Any JSON-lines file: ``text``, ``label``, ``group``, ``order``, ``gold``,
    ``score`` name the fields (as for ``csv``; ``gold`` may be a JSON list)."""
    for lineno, obj in iter_jsonl(path):
        for k in _GENERIC_COLUMNS:
            if opts[k]:
                _field(obj, opts[k], path, lineno)
        yield _generic_record(obj, opts, path, lineno)


def _generic_record(row: dict, opts: dict, path: Path, lineno: int) -> Record:
    raw_text = row[opts["text"]]
    text = _text(raw_text if raw_text is None or isinstance(raw_text, str) else str(raw_text),
                 path, lineno, opts["text"])
    label = _label_str(row[opts["label"]], f"{path}:{lineno}: field {opts['label']!r}") if opts["label"] else None
    group = str(row[opts["group"]]).strip() if opts["group"] else None
    order = _number(row[opts["order"]], path, lineno, opts["order"]) if opts["order"] else float(lineno)
    gold = parse_gold(row[opts["gold"]], path, lineno, opts["gold"]) if opts["gold"] else None
    score = _number(row[opts["score"]], path, lineno, opts["score"]) if opts["score"] else None
    return Record(text, label, group, lineno, order, gold=gold, score=score)


# ---------------------------------------------------------------------------
# validation and reading
# ---------------------------------------------------------------------------


def validate_source(spec: Any, where: str = "source") -> dict:
    """Check a source mapping and return it with every option filled in.

    Raises :class:`~knot.errors.ConfigError` naming ``where.key``.

    >>> validate_source({"reader": "sst", "path": "sst5/trees/dev.txt", "split": "val"})["empty"]
    'error'
    >>> validate_source({"reader": "nope", "path": "x"}, "sources[0]")
    Traceback (most recent call last):
    ...
    knot.errors.ConfigError: sources[0].reader: unknown reader 'nope' (expected one of: amazon, csv, emorynlp, goemotions, jsonl, marc, meld, silicone, sst, vader)
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with reader and path, got {spec!r}")
    name = spec.get("reader")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.reader: missing (expected one of: {', '.join(sorted(READERS))})")
    if name not in READERS:
        raise ConfigError(
            f"{where}.reader: unknown reader {name!r} (expected one of: {', '.join(sorted(READERS))})"
        )
    info = READERS[name]
    for key in spec:
        if key not in info.options:
            raise ConfigError(
                f"{where}.{key}: unknown option for reader {name} "
                f"(expected one of: {', '.join(sorted(info.options))})"
            )
    out: dict[str, Any] = {}
    for key, (types, default) in info.options.items():
        value = spec.get(key, default)
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{where}.{key}: expected {_types(types)}, got {value!r}")
        if not isinstance(value, types):
            raise ConfigError(f"{where}.{key}: expected {_types(types)}, got {value!r}")
        out[key] = value
    out["reader"] = info.name
    if not out["path"]:
        raise ConfigError(f"{where}.path: missing (the file, relative to the data root)")
    if out["split"] is not None and out["split"] not in SPLITS:
        raise ConfigError(f"{where}.split: expected train, val, test or null, got {out['split']!r}")
    if out["empty"] not in ("error", "skip"):
        raise ConfigError(f"{where}.empty: expected error or skip, got {out['empty']!r}")
    if name in ("csv", "jsonl") and not out["text"]:
        raise ConfigError(f"{where}.text: the {name} reader needs the name of the text column")
    if "delimiter" in out and len(out["delimiter"]) != 1:
        raise ConfigError(f"{where}.delimiter: expected one character, got {out['delimiter']!r}")
    if "category" in out and isinstance(out["category"], list):
        if not all(isinstance(c, str) for c in out["category"]):
            raise ConfigError(f"{where}.category: expected a name or a list of names")
    if out.get("official_splits") is not None:
        off = out["official_splits"]
        bad = [k for k in off if k not in ("val", "test")]
        if bad or not all(isinstance(v, str) and v for v in off.values()):
            raise ConfigError(
                f"{where}.official_splits: expected {{val: FILE, test: FILE}}, got {off!r}"
            )
    if out.get("multi_label", "drop") not in ("drop", "first", "map"):
        raise ConfigError(
            f"{where}.multi_label: expected drop, first or map, got {out['multi_label']!r}"
        )
    if info.name == "vader":
        if out["ratings"] is None:
            if "GroundTruth" not in out["path"]:
                raise ConfigError(
                    f"{where}.ratings: missing (the path is not a *_GroundTruth file, so the ratings "
                    f"file cannot be derived from it)"
                )
            out["ratings"] = out["path"].replace("GroundTruth", "anonDataRatings")
        edges = out["edges"]
        if len(edges) < 1 or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in edges):
            raise ConfigError(f"{where}.edges: expected increasing bin edges, got {edges!r}")
        for k, e in enumerate(edges):
            parse_finite(e, f"{where}.edges[{k}]", error=ConfigError)
        if list(edges) != sorted(edges):
            raise ConfigError(f"{where}.edges: expected increasing bin edges, got {edges!r}")
    if out["context"] is None:
        out["context"] = info.dialogue
    return out


def _types(types: tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", list: "a list", dict: "a mapping",
             type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def source_files(spec: dict) -> list[str]:
    """Every file a (validated) source reads: its ``path`` and any auxiliary files."""
    files = [spec["path"]]
    for key in READERS[spec["reader"]].path_options:
        value = spec.get(key)
        if isinstance(value, dict):
            files.extend(value[k] for k in sorted(value))
        elif value:
            files.append(value)
    return files


def read_source(spec: dict, resolve: Callable[[str], Path]) -> tuple[list[Record], dict]:
    """Read a validated source completely.

    Parameters
    ----------
    spec : dict
        A source as returned by :func:`validate_source`.
    resolve : callable
        Turns a path of the config (relative to the data root) into a file path.

    Returns
    -------
    records : list of Record
        The rows in file order (filtered rows and skipped empty texts left out);
        dialogue ids qualified by the source path (``"meld/dev_sent_emo.csv:12"``).
    stats : dict
        ``{"rows": kept rows, "filtered": rows outside category, "empty": skipped empty}``.
    """
    path = resolve(spec["path"])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (source {spec['path']!r})")
    stats: dict[str, int] = {"filtered": 0, "empty": 0}
    records = []
    for rec in READERS[spec["reader"]].fn(path, spec, resolve, stats):
        if rec.group is not None:
            rec = replace(rec, group=f"{spec['path']}:{rec.group}")
        if not rec.text:
            if spec["empty"] == "skip":
                stats["empty"] += 1
                continue
            raise ValueError(
                f"{path}:{rec.line}: empty text (set `empty: skip` on the source to drop such rows)"
            )
        records.append(rec)
    stats["rows"] = len(records)
    return records, stats

"""Readers on small files written here, in every format: plain, gzip, BOM, CRLF."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from knot.config import ConfigError
from knot.data.readers import iter_csv, iter_lines, read_source, sst_tree, validate_source


def write(path: Path, text: str, *, gz: bool = False, bom: bool = False, crlf: bool = False) -> Path:
    if crlf:
        text = text.replace("\n", "\r\n")
    data = (("\ufeff" if bom else "") + text).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def read(tmp_path: Path, **spec):
    spec = validate_source(spec)
    return read_source(spec, lambda rel: tmp_path / rel)


def marc_line(i: int, stars: str, body: str, cat: str = "toy", title: str = "T") -> str:
    return json.dumps(
        {"review_id": f"en_{i}", "stars": stars, "review_body": body, "review_title": title,
         "product_category": cat, "language": "en"}
    )


MELD = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
    "1,Hi there.,A,neutral,neutral,0,0\n"
    '2,"Oh, wow!",B,surprise,positive,0,1\n'
    "3,I’m sad.,A,sadness,negative,1,0\n"
)


# ---- formats -----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_marc_reader_every_encoding_variant(tmp_path, gz, bom, crlf):
    name = "r.json.gz" if gz else "r.json"
    text = "\n".join(marc_line(i, str(1 + i % 5), f"body {i}") for i in range(6)) + "\n"
    write(tmp_path / name, text, gz=gz, bom=bom, crlf=crlf)
    records, stats = read(tmp_path, reader="marc", path=name)
    assert [r.label for r in records] == ["1", "2", "3", "4", "5", "1"]
    assert [r.text for r in records] == [f"body {i}" for i in range(6)]
    assert [r.line for r in records] == [1, 2, 3, 4, 5, 6]
    assert stats["rows"] == 6


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_meld_reader_every_encoding_variant(tmp_path, gz, bom, crlf):
    name = "m.csv.gz" if gz else "m.csv"
    write(tmp_path / name, MELD, gz=gz, bom=bom, crlf=crlf)
    records, _ = read(tmp_path, reader="meld", path=name, context=False)
    assert [(r.text, r.label, r.group, r.order) for r in records] == [
        ("Hi there.", "neutral", f"{name}:0", 0.0),
        ("Oh, wow!", "surprise", f"{name}:0", 1.0),
        ("I’m sad.", "sadness", f"{name}:1", 0.0),
    ]


def test_iter_lines_keeps_line_numbers_and_strips_bom(tmp_path):
    p = write(tmp_path / "a.txt", "x\ny\n\nz", bom=True, crlf=True)
    assert [(n, t.rstrip("\r\n")) for n, t in iter_lines(p)] == [(1, "x"), (2, "y"), (3, ""), (4, "z")]


def test_csv_quoted_newline_reports_the_starting_line(tmp_path):
    p = write(tmp_path / "a.csv", 'text,label\n"two\nlines",a\nok,b\n"x",c,extra\n')
    rows = []
    with pytest.raises(ValueError, match=r"a\.csv:5: malformed CSV row: expected 2 fields, got 3"):
        for line, row in iter_csv(p, require=("text",)):
            rows.append((line, row["text"]))
    assert rows == [(2, "two\nlines"), (4, "ok")]


# ---- each reader --------------------------------------------------------------------


def test_marc_title_category_filter_and_official_splits(tmp_path):
    lines = [marc_line(1, "5", "Great", "toy", "Wow"), marc_line(2, "1", "Bad", "home"),
             marc_line(3, "3", "Meh", "toy", ""), marc_line(4, "2", "Poor", "toy")]
    write(tmp_path / "cat.json", "\n".join(lines) + "\n")
    write(tmp_path / "dev.json", marc_line(3, "3", "Meh") + "\n")
    write(tmp_path / "test.json.gz", marc_line(4, "2", "Poor") + "\n", gz=True)
    records, stats = read(
        tmp_path, reader="marc", path="cat.json", category="toy", title=True,
        official_splits={"val": "dev.json", "test": "test.json.gz"},
    )
    assert [r.text for r in records] == ["Wow. Great", "Meh", "T. Poor"]  # no title -> body only
    assert [r.split for r in records] == ["train", "val", "test"]
    assert stats["filtered"] == 1


def test_amazon_reader_reads_the_mcauley_layout(tmp_path):
    lines = [json.dumps({"reviewText": "Nice toy", "overall": 4.0, "summary": "ok"}),
             json.dumps({"reviewText": "Broke", "overall": 1})]
    write(tmp_path / "m.json.gz", "\n".join(lines), gz=True)
    records, _ = read(tmp_path, reader="amazon", path="m.json.gz")
    assert [(r.text, r.label) for r in records] == [("Nice toy", "4"), ("Broke", "1")]


def test_emorynlp_groups_scenes_and_orders_by_utterance_id(tmp_path):
    write(
        tmp_path / "e.csv",
        "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode\n"
        "second,['A'],Joyful,1,2,1,2\n"
        "first,['B'],Neutral,1,1,1,2\n"
        "other scene,['B'],Mad,2,1,1,2\n",
    )
    records, _ = read(tmp_path, reader="emorynlp", path="e.csv")
    assert [r.group for r in records] == ["e.csv:s1e2c1", "e.csv:s1e2c1", "e.csv:s1e2c2"]
    assert [r.order for r in records] == [2.0, 1.0, 1.0]


def test_silicone_reader(tmp_path):
    write(
        tmp_path / "dyda.csv",
        "Utterance,Dialogue_Act,Emotion,Dialogue_ID\n"
        "hello .,inform,no emotion,1\n\"yes , sure\",commissive,happiness,1\nbye,inform,anger,2\n",
        crlf=True,
    )
    records, _ = read(tmp_path, reader="silicone", path="dyda.csv")
    assert [(r.text, r.label, r.group) for r in records] == [
        ("hello .", "no emotion", "dyda.csv:1"),
        ("yes , sure", "happiness", "dyda.csv:1"),
        ("bye", "anger", "dyda.csv:2"),
    ]
    by_act, _ = read(tmp_path, reader="silicone", path="dyda.csv", label_column="Dialogue_Act")
    assert [r.label for r in by_act] == ["inform", "commissive", "inform"]


def test_goemotions_ids_to_names_and_multi_label_tuples(tmp_path):
    write(tmp_path / "labels.txt", "admiration\namusement\nanger\n")
    write(tmp_path / "g.tsv", 'I "love" it\t0\tid1\nha\t1,2\tid2\n')
    records, _ = read(tmp_path, reader="goemotions", path="g.tsv", labels_file="labels.txt")
    assert [(r.text, r.label) for r in records] == [('I "love" it', "admiration"), ("ha", ("amusement", "anger"))]
    raw, _ = read(tmp_path, reader="goemotions", path="g.tsv")
    assert [r.label for r in raw] == ["0", ("1", "2")]
    write(tmp_path / "bad.tsv", "ok\t7\tid\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:1: label id '7'"):
        read(tmp_path, reader="goemotions", path="bad.tsv", labels_file="labels.txt")


def test_sst_root_label_and_leaves():
    assert sst_tree("(1 (2 (2 A) (1 dull)) (2 -LRB-film-RRB-))") == ("1", "A dull (film)")


def test_sst_reader_and_malformed_tree(tmp_path):
    write(tmp_path / "t.txt", "(4 (2 (2 A) (4 gem)) (2 .))\n(0 (0 Awful))\n")
    records, _ = read(tmp_path, reader="sst", path="t.txt", split="train")
    assert [(r.text, r.label) for r in records] == [("A gem .", "4"), ("Awful", "0")]
    write(tmp_path / "bad.txt", "(4 (2 A) (4 gem)\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: malformed tree"):
        read(tmp_path, reader="sst", path="bad.txt")


def test_generic_csv_and_jsonl(tmp_path):
    write(tmp_path / "g.tsv", "txt\tlab\tdlg\tpos\nb\tx\td1\t2\na\ty\td1\t1\n")
    records, _ = read(tmp_path, reader="csv", path="g.tsv", delimiter="\t", text="txt", label="lab",
                      group="dlg", order="pos")
    assert [(r.text, r.label, r.group, r.order) for r in records] == [
        ("b", "x", "g.tsv:d1", 2.0), ("a", "y", "g.tsv:d1", 1.0)]
    write(tmp_path / "g.jsonl", '{"t": "hi", "y": 3}\n\n{"t": "yo", "y": 1.0}\n', bom=True)
    records, _ = read(tmp_path, reader="jsonl", path="g.jsonl", text="t", label="y")
    assert [(r.text, r.label, r.line) for r in records] == [("hi", "3", 1), ("yo", "1", 3)]
    unlabelled, _ = read(tmp_path, reader="jsonl", path="g.jsonl", text="t")
    assert [r.label for r in unlabelled] == [None, None]


# ---- errors users get ---------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json.*file not found"):
        read(tmp_path, reader="marc", path="nope.json")


def test_malformed_json_line_names_file_and_line(tmp_path):
    write(tmp_path / "r.json.gz", marc_line(1, "5", "ok") + "\n{not json\n", gz=True)
    with pytest.raises(ValueError, match=r"r\.json\.gz:2: malformed JSON line"):
        read(tmp_path, reader="marc", path="r.json.gz")


def test_malformed_csv_row_names_file_and_line(tmp_path):
    write(tmp_path / "m.csv", MELD + '4,"unclosed,A,joy,positive,2,0\n')
    with pytest.raises(ValueError, match=r"m\.csv:5: malformed CSV row"):
        read(tmp_path, reader="meld", path="m.csv")
    write(tmp_path / "n.csv", MELD + "4,short,row\n", crlf=True)
    with pytest.raises(ValueError, match=r"n\.csv:5: malformed CSV row: expected 7 fields, got 3"):
        read(tmp_path, reader="meld", path="n.csv")


def test_missing_column_and_field(tmp_path):
    write(tmp_path / "m.csv", "Utterance,Emotion,Utterance_ID\nhi,joy,0\n")
    with pytest.raises(ValueError, match=r"m\.csv: missing column 'Dialogue_ID'"):
        read(tmp_path, reader="meld", path="m.csv")
    write(tmp_path / "r.json", json.dumps({"review_body": "x", "review_id": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"r\.json:1: missing field 'stars'"):
        read(tmp_path, reader="marc", path="r.json")
    write(tmp_path / "o.json", json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"o\.json:1: not an Amazon review"):
        read(tmp_path, reader="marc", path="o.json")


def test_empty_text_is_an_error_or_skipped_on_request(tmp_path):
    write(tmp_path / "s.csv", "Utterance,Emotion,Dialogue_ID\nhi,anger,1\n  ,anger,1\n")
    with pytest.raises(ValueError, match=r"s\.csv:3: empty text"):
        read(tmp_path, reader="silicone", path="s.csv")
    records, stats = read(tmp_path, reader="silicone", path="s.csv", empty="skip")
    assert len(records) == 1 and stats["empty"] == 1


def test_unreadable_gzip(tmp_path):
    write(tmp_path / "fake.json.gz", marc_line(1, "5", "plain text, not gzip"))
    with pytest.raises(ValueError, match=r"fake\.json\.gz: unreadable gzip file"):
        read(tmp_path, reader="marc", path="fake.json.gz")
    whole = gzip.compress(("\n".join(marc_line(i, "5", "x" * 50) for i in range(50))).encode())
    (tmp_path / "cut.json.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.json\.gz: unreadable gzip file"):
        read(tmp_path, reader="marc", path="cut.json.gz")


def test_invalid_utf8_names_the_line(tmp_path):
    (tmp_path / "s.csv").write_bytes(b"Utterance,Emotion,Dialogue_ID\nok,anger,1\n\xff\xfe,anger,1\n")
    with pytest.raises(ValueError, match=r"s\.csv:3: not valid UTF-8"):
        read(tmp_path, reader="silicone", path="s.csv")


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"path": "x"}, "src.reader"),
        ({"reader": "parquet", "path": "x"}, "src.reader"),
        ({"reader": "marc"}, "src.path"),
        ({"reader": "marc", "path": "x", "stars": 1}, "src.stars"),
        ({"reader": "marc", "path": "x", "title": "yes"}, "src.title"),
        ({"reader": "marc", "path": "x", "split": "dev"}, "src.split"),
        ({"reader": "marc", "path": "x", "official_splits": {"train": "a"}}, "src.official_splits"),
        ({"reader": "csv", "path": "x"}, "src.text"),
        ({"reader": "goemotions", "path": "x", "multi_label": "all"}, "src.multi_label"),
        ({"reader": "sst", "path": "x", "empty": "ignore"}, "src.empty"),
    ],
)
def test_bad_source_specs_name_the_key(spec, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_source(spec, "src")


def test_dialogue_ids_are_qualified_by_the_source_path(tmp_path):
    text = "Utterance,Emotion,Dialogue_ID\nhi,anger,1\n"
    write(tmp_path / "dyda" / "dev.csv", text)
    write(tmp_path / "iemocap" / "dev.csv", text)
    a, _ = read(tmp_path, reader="silicone", path="dyda/dev.csv")
    b, _ = read(tmp_path, reader="silicone", path="iemocap/dev.csv")
    assert (a[0].group, b[0].group) == ("dyda/dev.csv:1", "iemocap/dev.csv:1")


def test_unclosed_quote_names_the_row_where_it_starts(tmp_path):
    write(tmp_path / "m.csv", 'Utterance,Emotion,Dialogue_ID\nok,joy,1\n"never closed,joy,1\nmore,joy,1\n')
    with pytest.raises(ValueError, match=r"m\.csv:3: malformed CSV row \(.*found at line 4\)"):
        read(tmp_path, reader="silicone", path="m.csv")

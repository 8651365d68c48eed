"""Hostile input: non-finite numbers in data, config and files read back; run names that
leave runs/; duplicate texts within and across domains."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from knot.cli import app
from knot.config import ConfigError, ExperimentConfig, load_config
from knot.data import load_split, prepare_data
from knot.data.prepare import data_status, format_summary
from knot.errors import parse_finite
from knot.layout import RunLayout
from knot.data.readers import validate_source
from knot.soft_labels import BIAS_FORMAT, SoftLabels, load_bias
from test_data_readers import read, write
from test_data_vader import GOOD_RATINGS, GOOD_TRUTH, write_pair

#: Every spelling of a non-finite number Python's float() accepts in a text file.
TEXT_BAD = ["nan", "NaN", "inf", "-Infinity", "1e999"]
#: The same in JSON (bare constants and an overflowing literal parse; strings are strings).
JSON_BAD = ["NaN", "Infinity", "-Infinity", "1e999", '"nan"', '"1e999"']


# ---------------------------------------------------------------------------
# the one parser
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [*TEXT_BAD, float("nan"), float("inf"), 10**400, True, None, "x", ""])
def test_parse_finite_rejects_every_non_finite_spelling(value):
    with pytest.raises(ValueError, match=r"^f\.csv:3: column 'score': expected a finite number, got "):
        parse_finite(value, "f.csv:3: column 'score'")


def test_parse_finite_accepts_numbers_and_numeric_strings():
    assert [parse_finite(v, "x") for v in (" -2.5 ", "1e3", 3, np.int64(4), np.float32(0.5))] == [
        -2.5, 1000.0, 3.0, 4.0, 0.5]


# ---------------------------------------------------------------------------
# every numeric field of every reader
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", TEXT_BAD)
def test_vader_groundtruth_mean_must_be_finite(tmp_path, bad):
    # a NaN mean passed the ratings check (comparisons with NaN are false) and became label "1"
    write_pair(tmp_path, [GOOD_TRUTH[0], f"2\t{bad}\tMeh."], GOOD_RATINGS)
    with pytest.raises(ValueError, match=rf"x_GroundTruth\.txt:2: column 'mean': expected a finite number, got '{bad}'"):
        read(tmp_path, reader="vader", path="x_GroundTruth.txt")


@pytest.mark.parametrize("bad", TEXT_BAD)
def test_vader_ratings_mean_must_be_finite(tmp_path, bad):
    write_pair(tmp_path, GOOD_TRUTH, [GOOD_RATINGS[0], f"2\t{bad}\t0.43\t[0, -1, 0, 0]"])
    with pytest.raises(ValueError, match=r"x_anonDataRatings\.txt:2: column 'mean': expected a finite number"):
        read(tmp_path, reader="vader", path="x_GroundTruth.txt")


@pytest.mark.parametrize("bad", ["nan", "inf", "1e999"])
def test_vader_ratings_must_be_integers(tmp_path, bad):
    write_pair(tmp_path, GOOD_TRUTH, [GOOD_RATINGS[0], f"2\t-0.25\t0.43\t[0, {bad}, 0, 0]"])
    with pytest.raises(ValueError, match=rf"x_anonDataRatings\.txt:2: ratings: '{bad}' is not an integer"):
        read(tmp_path, reader="vader", path="x_GroundTruth.txt")


@pytest.mark.parametrize("edge", [float("nan"), float("inf"), "1e999"])
def test_vader_edges_must_be_finite(edge):
    with pytest.raises(ConfigError, match=r"src\.edges\[1\]: expected a finite number|src\.edges: expected increasing"):
        validate_source({"reader": "vader", "path": "x_GroundTruth.txt", "edges": [-1.0, edge]}, "src")


@pytest.mark.parametrize("bad", TEXT_BAD)
@pytest.mark.parametrize("column", ["score", "order"])
def test_csv_score_and_order_columns_must_be_finite(tmp_path, bad, column):
    write(tmp_path / "a.csv", f"text,label,{column}\nfine,1,0.5\nhostile,2,{bad}\n")
    with pytest.raises(ValueError, match=rf"a\.csv:3: column '{column}': expected a finite number, got '{bad}'"):
        read(tmp_path, reader="csv", path="a.csv", text="text", label="label", **{column: column})


@pytest.mark.parametrize("bad", TEXT_BAD)
def test_csv_gold_weights_must_be_finite(tmp_path, bad):
    write(tmp_path / "a.csv", f'text,dist\nfine,"[1, 0]"\nhostile,"[1, {bad}]"\n')
    with pytest.raises(ValueError, match=rf"a\.csv:3: field 'dist': weight 1: expected a finite number, got '{bad}'"):
        read(tmp_path, reader="csv", path="a.csv", text="text", gold="dist")


def test_gold_weights_whose_sum_overflows_are_rejected(tmp_path):
    write(tmp_path / "a.csv", 'text,dist\nhostile,"[1e308, 1e308]"\n')
    with pytest.raises(ValueError, match=r"a\.csv:2: field 'dist': weights too large"):
        read(tmp_path, reader="csv", path="a.csv", text="text", gold="dist")


@pytest.mark.parametrize("bad", JSON_BAD)
@pytest.mark.parametrize("key", ["score", "order", "label"])
def test_jsonl_numeric_fields_must_be_finite(tmp_path, bad, key):
    write(tmp_path / "a.jsonl", '{"t": "fine", "label": 1, "score": 1, "order": 1}\n'
                                f'{{"t": "hostile", "label": 2, "score": 1, "order": 1, "{key}": {bad}}}\n')
    if key == "label" and bad.startswith('"'):
        records, _ = read(tmp_path, reader="jsonl", path="a.jsonl", text="t", label="label")
        assert records[1].label == json.loads(bad)  # a string label is a name, mapped (or not) later
        return
    with pytest.raises(ValueError, match=rf"a\.jsonl:2: (column|field) '{key}': expected a finite number"):
        read(tmp_path, reader="jsonl", path="a.jsonl", text="t", label="label", score="score", order="order")


@pytest.mark.parametrize("bad", JSON_BAD[:4])
def test_jsonl_gold_probabilities_must_be_finite(tmp_path, bad):
    write(tmp_path / "a.jsonl", f'{{"t": "hostile", "p": [0.5, {bad}]}}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:1: field 'p': weight 1: expected a finite number"):
        read(tmp_path, reader="jsonl", path="a.jsonl", text="t", gold="p")


@pytest.mark.parametrize("bad", JSON_BAD[:4])
@pytest.mark.parametrize("layout", ["marc", "mcauley"])
def test_star_ratings_must_be_finite(tmp_path, bad, layout):
    line = (f'{{"review_id": "en_1", "stars": {bad}, "review_body": "hostile"}}' if layout == "marc"
            else f'{{"reviewText": "hostile", "overall": {bad}}}')
    write(tmp_path / "r.json", '{"reviewText": "fine", "overall": 5.0}\n' + line + "\n")
    key = "stars" if layout == "marc" else "overall"
    with pytest.raises(ValueError, match=rf"r\.json:2: field '{key}': expected a finite number"):
        read(tmp_path, reader="marc", path="r.json")


@pytest.mark.parametrize("bad", TEXT_BAD)
@pytest.mark.parametrize("reader", ["meld", "emorynlp"])
def test_utterance_ids_must_be_finite(tmp_path, bad, reader):
    header = "Utterance,Emotion,Dialogue_ID,Utterance_ID,Season,Episode,Scene_ID\n"
    write(tmp_path / "d.csv", header + "fine,joy,0,0,1,1,1\n" + f"hostile,joy,0,{bad},1,1,1\n")
    with pytest.raises(ValueError, match=r"d\.csv:3: column 'Utterance_ID': expected a finite number"):
        read(tmp_path, reader=reader, path="d.csv")


# ---------------------------------------------------------------------------
# config numbers and files read back
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf", "1e999", "1.0e999", "nan", "Infinity"])
@pytest.mark.parametrize(
    "key, yaml_text",
    [
        ("local.lr", "local: {{lr: {}}}"),
        ("distill.methods[0].temperature", "distill: {{methods: [{{name: ot, temperature: {}}}]}}"),
        ("distill.methods[0].explicit_weights[1]",
         "distill: {{methods: [{{name: ot, weights: explicit, explicit_weights: [1, {}]}}]}}"),
        ("task.geometry.b[0]", "task: {{geometry: {{a: [0.0], b: [{}]}}}}"),
        ("federated.timeout", "federated: {{timeout: {}}}"),
        ("data.split_ratios[2]", "data: {{split_ratios: [0.7, 0.1, {}]}}"),
    ],
)
def test_config_numbers_must_be_finite(tmp_path, bad, key, yaml_text):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text.format(bad) + "\n")
    with pytest.raises(ConfigError, match=rf"c\.yaml: {re.escape(key)}: expected a finite number"):
        load_config(path)


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf"])  # YAML 1.1 reads 1e999 / nan as strings here
def test_floats_inside_free_form_config_values_must_be_finite(tmp_path, bad):
    path = tmp_path / "c.yaml"
    path.write_text(f"distill: {{methods: [{{name: ot, options: {{eps: {bad}}}}}]}}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: distill\.methods\[0\]\.options\.eps: expected a finite number"):
        load_config(path)


@pytest.mark.parametrize("bad", ["nan", ".inf", "1e999"])
def test_config_numbers_set_on_the_command_line_must_be_finite(tmp_path, bad):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: distill\.train\.lr: expected a finite number"):
        load_config(path, [f"distill.train.lr={bad}"])


def _soft_labels() -> SoftLabels:
    probs = np.full((2, 2, 2), 0.5, dtype=np.float32)
    return SoftLabels(probs, teacher_names=["a", "b"], label_names=["x", "y"], teacher_sizes=[3, 4])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_soft_label_schema_read_back_must_hold_finite_teacher_sizes(tmp_path, bad):
    json_path = _soft_labels().save(tmp_path, "train")
    meta = json.loads(json_path.read_text())
    meta["teacher_sizes"][1] = bad
    json_path.write_text(json.dumps(meta))  # json writes NaN / Infinity
    with pytest.raises(ValueError, match=r"teacher_sizes\[1\]: expected a finite number"):
        SoftLabels.load(tmp_path, "train")


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_bias_file_read_back_must_hold_finite_probabilities(tmp_path, bad):
    (tmp_path / "bias.json").write_text(json.dumps({"format": BIAS_FORMAT, "distribution": {"a": [0.5, bad]}}))
    with pytest.raises(ValueError, match=r"bias\.json: distribution\.a\[1\]: expected a finite number"):
        load_bias(tmp_path, ["a"])


# ---------------------------------------------------------------------------
# run names
# ---------------------------------------------------------------------------

BAD_NAMES = ["../../x", "/abs", "a/b", ".", "..", "", "a\\b", "x\n"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_name_from_yaml_must_be_one_plain_component(tmp_path, name):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: {json.dumps(name)}\n")
    with pytest.raises(ConfigError, match=rf"c\.yaml: name: expected one plain folder name .* got {re.escape(repr(name))}"):
        load_config(path)


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n.strip() == n and n])
def test_run_name_from_set_must_be_one_plain_component(tmp_path, name, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("name: fine\n")
    with pytest.raises(ConfigError, match=r"name: expected one plain folder name"):
        load_config(path, [f"name={name}"])
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["data", "prepare", str(path), "--set", f"name={name}"])
    assert res.exit_code == 2 and "name: expected one plain folder name" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # nothing written anywhere


def test_empty_run_name_from_set_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: fine\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: name: "):
        load_config(path, ["name="])


@pytest.mark.parametrize("name", ["quickstart", "erc-quick", "run_1.v2", "..x", "A"])
def test_plain_run_names_pass(name):
    assert ExperimentConfig.from_dict({"name": name}).name == name


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "..", ""])
def test_student_names_are_folders_too(name):
    with pytest.raises(ConfigError, match=r"distill\.methods\[0\]\.name: expected one plain folder name"):
        ExperimentConfig.from_dict({"distill": {"methods": [{"name": name}]}})


# ---------------------------------------------------------------------------
# duplicate texts
# ---------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"t": t, "y": y}) + "\n" for t, y in rows))


def _dup_corpus(root: Path) -> None:
    """Domain a: 40 distinct texts, then 4 exact copies of a's texts (2 with the other
    label); domain b: 30 distinct texts, 3 of them also in a."""
    a = [(f"a text {i}", "pos" if i % 2 else "neg") for i in range(40)]
    a += [("a text 0", "neg"), ("a text 1", "pos"), ("a text 2", "pos"), ("a text 3", "neg")]
    b = [(f"b text {i}", "pos" if i % 2 else "neg") for i in range(27)]
    b += [("a text 10", "neg"), ("a text 11", "pos"), ("a text 12", "neg")]
    _write_jsonl(root / "a.jsonl", a)
    _write_jsonl(root / "b.jsonl", b)


def _dup_config(**data) -> ExperimentConfig:
    src = {"reader": "jsonl", "text": "t", "label": "y"}
    return ExperimentConfig.from_dict({
        "name": "dups", "task": {"geometry": "uniform", "labels": ["neg", "pos"]},
        "data": {**data, "domains": [
            {"name": "a", "role": "local", "sources": [{**src, "path": "a.jsonl"}]},
            {"name": "b", "role": "transfer", "sources": [{**src, "path": "b.jsonl"}]}]},
    })


def _texts(layout, domain: str) -> dict[str, list[str]]:
    return {s: [e.text for e in load_split(layout.data, domain, s)] for s in ("train", "val", "test")}


def test_duplicate_texts_in_a_domain_are_kept_once_before_splitting(tmp_path, caplog):
    _dup_corpus(tmp_path)
    layout = RunLayout(tmp_path / "run")
    with caplog.at_level("WARNING", logger="knot.data.prepare"):
        m = prepare_data(_dup_config(), layout, tmp_path)
    a = m["domains"]["a"]
    assert a["duplicates"] == {"found": 4, "dropped": 4, "label_conflicts": 2}
    assert sum(a["counts"].values()) == 40
    texts = _texts(layout, "a")
    everything = [t for split in texts.values() for t in split]
    assert len(everything) == len(set(everything)) == 40  # no text twice, none in two splits
    labels = {e.text: e.label for s in ("train", "val", "test") for e in load_split(layout.data, "a", s)}
    assert (labels["a text 0"], labels["a text 1"], labels["a text 2"], labels["a text 3"]) == ("neg", "pos", "neg", "pos")  # the first copy's label
    assert m["domains"]["b"]["duplicates"] == {"found": 0, "dropped": 0, "label_conflicts": 0}
    # across domains: counted, reported, kept in both
    (entry,) = m["cross_domain_duplicates"]
    assert entry["domains"] == ["a", "b"] and entry["texts"] == 3 and sum(entry["splits"].values()) == 3
    assert sum(m["domains"]["b"]["counts"].values()) == 30
    assert any("domains 'a' and 'b' share 3 text(s)" in r.getMessage() for r in caplog.records)
    summary = format_summary(m)
    assert "a: 4 dropped, 2 with another label" in summary and "a & b: 3 shared text(s)" in summary


def test_dedup_false_keeps_every_copy_and_still_counts_them(tmp_path):
    _dup_corpus(tmp_path)
    layout = RunLayout(tmp_path / "run")
    m = prepare_data(_dup_config(dedup=False), layout, tmp_path)
    assert m["dedup"] is False
    assert m["domains"]["a"]["duplicates"] == {"found": 4, "dropped": 0, "label_conflicts": 2}
    assert sum(m["domains"]["a"]["counts"].values()) == 44
    assert m["cross_domain_duplicates"][0]["texts"] == 3


def test_dedup_changes_nothing_on_a_corpus_without_duplicates_and_is_part_of_the_data_hash(tmp_path):
    rows = [(f"text {i}", "pos" if i % 2 else "neg") for i in range(40)]
    _write_jsonl(tmp_path / "a.jsonl", rows)
    _write_jsonl(tmp_path / "b.jsonl", [(f"other {i}", y) for i, (_, y) in enumerate(rows)])
    on = prepare_data(_dup_config(), RunLayout(tmp_path / "on"), tmp_path)
    off_layout = RunLayout(tmp_path / "off")
    off = prepare_data(_dup_config(dedup=False), off_layout, tmp_path)
    assert on["data_hash"] == off["data_hash"] and on["cross_domain_duplicates"] == []
    # switching it is a change of the data section: the prepared data is stale
    assert data_status(_dup_config(), off_layout, tmp_path) == ["the data section of the config changed"]


def test_dedup_is_left_out_of_the_config_dict_at_its_default():
    assert "dedup" not in _dup_config().to_dict()["data"]
    assert _dup_config(dedup=False).to_dict()["data"]["dedup"] is False
    with pytest.raises(ConfigError, match=r"data\.dedup: expected true or false"):
        _dup_config(dedup="yes")

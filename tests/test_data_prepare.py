"""prepare_data / load_split / read_manifest on tiny corpora written by the tests."""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from knot.config import ExperimentConfig
from knot.data import Example, load_split, prepare_data, read_manifest
from knot.data.prepare import data_status, run_prepare
from knot.layout import RunLayout

STARS = ["1", "2", "3", "4", "5"]
EMOTIONS = ["anger", "joy", "neutral", "sadness", "surprise"]
SPLITS = ("train", "val", "test")


def write_reviews(path: Path, n: int, category: str, *, start: int = 0) -> None:
    lines = [
        json.dumps({"review_id": f"en_{start + i}", "stars": STARS[i % 5],
                    "review_body": f"{category} review number {i}", "review_title": "t",
                    "product_category": category})
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode("utf-8")))


def write_dialogues(path: Path, n_dialogues: int) -> None:
    """SILICONE-style CSV; every dialogue has 6 utterances and mixes the raw labels."""
    raw = ["no emotion", "happiness", "anger", "no emotion", "sadness", "surprise", "fear"]
    rows = ["Utterance,Dialogue_Act,Emotion,Dialogue_ID"]
    k = 0
    for d in range(1, n_dialogues + 1):
        for u in range(6):
            rows.append(f"d{d} u{u},inform,{raw[k % len(raw)]},{d}")
            k += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


DD_MAP = {"no emotion": "neutral", "happiness": "joy", "anger": "anger", "sadness": "sadness",
          "surprise": "surprise", "fear": None}


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "datasets"
    write_reviews(root / "marc" / "toy.json.gz", 100, "toy")
    write_reviews(root / "marc" / "grocery.json.gz", 60, "grocery", start=1000)
    write_dialogues(root / "dyda" / "dev.csv", 40)
    return root


def sentiment_cfg(**data) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "tiny",
        "task": {"geometry": "uniform", "labels": STARS},
        "data": {
            "domains": [
                {"name": "toy", "role": "local",
                 "sources": [{"reader": "marc", "path": "marc/toy.json.gz"}]},
                {"name": "grocery", "role": "transfer",
                 "sources": [{"reader": "marc", "path": "marc/grocery.json.gz", "category": "grocery"}],
                 "max_train": 20},
            ],
            **data,
        },
    })


def dialogue_cfg(parts: int = 2, **data) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "dlg",
        "task": {"geometry": "uniform", "labels": EMOTIONS},
        "data": {
            "context_turns": 2,
            "domains": [
                {"name": f"dd-{k}", "role": "local",
                 "sources": [{"reader": "silicone", "path": "dyda/dev.csv"}],
                 "label_map": DD_MAP, "partition": {"parts": parts, "index": k}}
                for k in range(parts)
            ],
            **data,
        },
    })


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- what gets written --------------------------------------------------------------


def test_prepare_writes_splits_and_a_complete_manifest(tmp_path, corpus):
    layout = RunLayout(tmp_path / "run")
    m = prepare_data(sentiment_cfg(), layout, corpus)
    assert m == read_manifest(layout.data)
    assert m["seed"] == 2021 and m["labels"] == STARS and m["knot_version"]
    assert set(m["sources"]) == {"marc/toy.json.gz", "marc/grocery.json.gz"}
    assert all(len(s["sha256"]) == 64 for s in m["sources"].values())
    toy = m["domains"]["toy"]
    assert toy["role"] == "local" and toy["split"] == "random"
    assert toy["counts"] == {"train": 70, "val": 10, "test": 20}
    assert toy["label_counts"]["train"] == {s: 14 for s in STARS}
    assert toy["label_counts"]["val"] == {s: 2 for s in STARS}
    assert toy["read"]["marc/toy.json.gz"]["raw_labels"] == {s: 20 for s in STARS}
    for split in SPLITS:
        examples = load_split(layout.data, "toy", split)
        assert len(examples) == toy["counts"][split]
        assert Counter(e.label for e in examples) == Counter(toy["label_counts"][split])
        assert all(isinstance(e, Example) and e.domain == "toy" and e.group is None for e in examples)
    texts = [e.text for s in SPLITS for e in load_split(layout.data, "toy", s)]
    assert len(set(texts)) == 100  # every review exactly once


def test_transfer_domain_keeps_labels_and_gets_all_three_splits(tmp_path, corpus):
    layout = RunLayout(tmp_path / "run")
    m = prepare_data(sentiment_cfg(), layout, corpus)
    g = m["domains"]["grocery"]
    assert g["role"] == "transfer"
    assert g["counts"] == {"train": 20, "val": 6, "test": 12}  # train subsampled from 42
    assert g["subsampled_from"] == {"train": 42}
    assert g["label_counts"]["train"] == {s: 4 for s in STARS}  # stratified subset
    assert all(e.label in STARS for e in load_split(layout.data, "grocery", "train"))


def test_same_config_same_files_other_seed_other_split(tmp_path, corpus):
    a, b, c = (RunLayout(tmp_path / n) for n in "abc")
    prepare_data(sentiment_cfg(), a, corpus)
    prepare_data(sentiment_cfg(), b, corpus)
    prepare_data(sentiment_cfg(seed=7), c, corpus)
    files = lambda lay: {k: v for k, v in tree(lay.data).items() if k != "manifest.json"}  # noqa: E731
    assert files(a) == files(b)
    assert files(a)["toy/train.jsonl"] != files(c)["toy/train.jsonl"]


# ---- rerun: no-op, and change detection --------------------------------------------


def test_rerun_is_a_noop_and_changes_are_detected(tmp_path, corpus, caplog):
    layout = RunLayout(tmp_path / "run")
    cfg = sentiment_cfg()
    m1, why = run_prepare(cfg, layout, corpus)
    assert why == ["not prepared yet"]
    before = {p: p.stat().st_mtime_ns for p in layout.data.rglob("*")}
    with caplog.at_level(logging.INFO, logger="knot.data"):
        m2, why = run_prepare(cfg, layout, corpus)
    assert why == [] and m2 == m1 and "up to date" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in layout.data.rglob("*")} == before
    assert data_status(cfg, layout, corpus) == []

    write_reviews(corpus / "marc" / "toy.json.gz", 101, "toy")  # a source changed
    assert data_status(cfg, layout, corpus) == ["source marc/toy.json.gz changed (sha256 differs)"]
    m3, why = run_prepare(cfg, layout, corpus)
    assert why == ["source marc/toy.json.gz changed (sha256 differs)"]
    assert sum(m3["domains"]["toy"]["counts"].values()) == 101

    m4, why = run_prepare(sentiment_cfg(split_ratios=[0.8, 0.1, 0.1]), layout, corpus)
    assert why == ["the data section of the config changed"]
    assert m4["domains"]["toy"]["counts"]["train"] == 81

    (layout.data / "toy" / "val.jsonl").write_text("tampered\n")
    _, why = run_prepare(sentiment_cfg(split_ratios=[0.8, 0.1, 0.1]), layout, corpus)
    assert why == [f"{layout.data / 'toy' / 'val.jsonl'} was modified"]


def test_removed_domain_is_cleaned_up(tmp_path, corpus):
    layout = RunLayout(tmp_path / "run")
    prepare_data(sentiment_cfg(), layout, corpus)
    only_toy = sentiment_cfg()
    only_toy.data.domains = only_toy.data.domains[:1]
    m = prepare_data(only_toy, layout, corpus)
    assert list(m["domains"]) == ["toy"] and not (layout.data / "grocery").exists()


def test_data_root_from_environment(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("KNOT_DATA", str(corpus))
    m = prepare_data(sentiment_cfg(), RunLayout(tmp_path / "run"))
    assert m["domains"]["toy"]["counts"]["train"] == 70
    monkeypatch.delenv("KNOT_DATA")
    with pytest.raises(ValueError, match="no data root"):
        prepare_data(sentiment_cfg(), RunLayout(tmp_path / "run2"))


# ---- dialogues ----------------------------------------------------------------------


def test_dialogue_domains_context_partition_and_no_leakage(tmp_path, corpus):
    layout = RunLayout(tmp_path / "run")
    m = prepare_data(dialogue_cfg(parts=2), layout, corpus)
    seen: dict[str, str] = {}
    for name in ("dd-0", "dd-1"):
        dom = m["domains"][name]
        assert dom["split"] == "random"
        assert sum(dom["groups"].values()) == 20  # 40 dialogues, 2 parts
        for split in SPLITS:
            for ex in load_split(layout.data, name, split):
                where = f"{name}/{split}"
                assert seen.setdefault(ex.group, where) == where  # one part, one split
    assert len(seen) == 40
    # fear (1 in 7 rows) is dropped and counted per file
    reads = [m["domains"][n]["read"]["dyda/dev.csv"] for n in ("dd-0", "dd-1")]
    assert sum(r["dropped"].get("fear", 0) for r in reads) == sum(1 for k in range(240) if k % 7 == 6)
    assert all(r["unmapped"] == {} for r in reads)
    # context: utterance, then up to 2 previous, most recent first
    ex = {e.text.split(" [SEP] ")[0]: e for s in SPLITS for n in ("dd-0", "dd-1")
          for e in load_split(layout.data, n, s)}
    assert ex["d1 u3"].text == "d1 u3 [SEP] d1 u2 [SEP] d1 u1"
    assert ex["d1 u0"].text == "d1 u0"
    assert ex["d1 u0"].label == "neutral" and ex["d1 u1"].label == "joy"


def test_official_split_from_files(tmp_path):
    root = tmp_path / "d"
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
    for split, n in (("train", 12), ("dev", 6), ("test", 6)):
        rows = [f"{i},{split} {i},A,{EMOTIONS[i % 5]},x,{i // 3},{i % 3}" for i in range(n)]
        (root / f"{split}.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.csv").write_text(header + "\n".join(rows) + "\n")
    cfg = ExperimentConfig.from_dict({
        "task": {"geometry": "uniform", "labels": EMOTIONS},
        "data": {"context_turns": 0, "domains": [{"name": "meld", "sources": [
            {"reader": "meld", "path": "train.csv", "split": "train"},
            {"reader": "meld", "path": "dev.csv", "split": "val"},
            {"reader": "meld", "path": "test.csv", "split": "test"}], "require_labels": []}]},
    })
    m = prepare_data(cfg, RunLayout(tmp_path / "run"), root)
    assert m["domains"]["meld"]["split"] == "official"
    assert m["domains"]["meld"]["counts"] == {"train": 12, "val": 6, "test": 6}
    assert m["domains"]["meld"]["groups"] == {"train": 4, "val": 2, "test": 2}
    assert {e.text.split()[0] for e in load_split(tmp_path / "run" / "data", "meld", "val")} == {"dev"}


def test_marc_official_split_by_review_id(tmp_path, corpus):
    write_reviews(corpus / "marc" / "dev.json.gz", 10, "toy", start=0)   # ids en_0..en_9
    write_reviews(corpus / "marc" / "test.json.gz", 10, "toy", start=10)  # ids en_10..en_19
    spec = {"reader": "marc", "path": "marc/toy.json.gz",
            "official_splits": {"val": "marc/dev.json.gz", "test": "marc/test.json.gz"}}
    base = {"task": {"geometry": "uniform", "labels": STARS}, "data": {"domains": [{"name": "toy", "sources": [spec]}]}}
    cfg = ExperimentConfig.from_dict(base)
    m = prepare_data(cfg, RunLayout(tmp_path / "auto"), corpus)
    assert m["domains"]["toy"]["split"] == "random"  # auto ignores the tiny official parts
    base["data"]["domains"][0]["split"] = "official"
    m = prepare_data(ExperimentConfig.from_dict(base), RunLayout(tmp_path / "off"), corpus)
    assert m["domains"]["toy"]["counts"] == {"train": 80, "val": 10, "test": 10}
    assert "marc/dev.json.gz" in m["sources"]


# ---- errors users get ---------------------------------------------------------------


def test_labels_outside_the_map_are_counted_and_reported(tmp_path, corpus, caplog):
    cfg = dialogue_cfg(parts=2)
    for d in cfg.data.domains:
        d.label_map = {k: v for k, v in DD_MAP.items() if k != "surprise"}  # surprise now unmapped
        d.require_labels = ["anger", "joy", "neutral"]
    with caplog.at_level(logging.WARNING, logger="knot.data"):
        m = prepare_data(cfg, RunLayout(tmp_path / "run"), corpus)
    unmapped = [m["domains"][n]["read"]["dyda/dev.csv"]["unmapped"] for n in ("dd-0", "dd-1")]
    assert sum(u.get("surprise", 0) for u in unmapped) == sum(1 for k in range(240) if k % 7 == 5)
    assert "outside the label map" in caplog.text and "surprise" in caplog.text


def test_split_missing_a_required_class_is_an_error(tmp_path, corpus):
    cfg = sentiment_cfg()
    cfg.data.domains[0].max_val = 3  # 3 of 5 classes at most
    with pytest.raises(ValueError, match=r"domain 'toy': the val split has no example of"):
        prepare_data(cfg, RunLayout(tmp_path / "run"), corpus)
    assert not (tmp_path / "run" / "data" / "manifest.json").exists()


def test_empty_split_is_an_error(tmp_path, corpus):
    cfg = sentiment_cfg()
    cfg.data.domains[0].label_map = {s: None for s in STARS}  # everything dropped
    with pytest.raises(ValueError, match=r"domain 'toy': the train split is empty .*100 dropped"):
        prepare_data(cfg, RunLayout(tmp_path / "run"), corpus)


def test_label_map_to_a_non_task_label_names_the_key(tmp_path, corpus):
    cfg = sentiment_cfg()
    cfg.data.domains[0].label_map = {"1": "very bad"}
    with pytest.raises(ValueError, match=r"data\.domains\[0\]\.label_map\.1: 'very bad' is not a task label"):
        prepare_data(cfg, RunLayout(tmp_path / "run"), corpus)


def test_missing_source_file(tmp_path, corpus):
    (corpus / "marc" / "grocery.json.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"grocery\.json\.gz: file not found .*grocery"):
        prepare_data(sentiment_cfg(), RunLayout(tmp_path / "run"), corpus)


def test_official_split_without_one_is_an_error(tmp_path, corpus):
    cfg = sentiment_cfg()
    cfg.data.domains[0].split = "official"
    with pytest.raises(ValueError, match=r"data\.domains\[0\] \(toy\): split is official, but source marc/toy"):
        prepare_data(cfg, RunLayout(tmp_path / "run"), corpus)


def test_reading_unprepared_data_says_what_to_run(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match=r"run `knot data prepare CONFIG` first"):
        load_split(tmp_path / "nowhere", "toy", "train")
    with pytest.raises(FileNotFoundError, match=r"run `knot data prepare CONFIG` first"):
        read_manifest(tmp_path / "nowhere")
    layout = RunLayout(tmp_path / "run")
    prepare_data(sentiment_cfg(), layout, corpus)
    with pytest.raises(ValueError, match=r"domain 'apparel' is not in the prepared data .*toy, grocery"):
        load_split(layout.data, "apparel", "train")
    with pytest.raises(ValueError, match="split: expected train, val or test"):
        load_split(layout.data, "toy", "dev")

"""Readers and shipped configs on the real datasets (skipped when they are absent).

Row counts and label distributions are the ones stated in the datasets' PROVENANCE.md.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from knot.config import load_config
from knot.data import load_split, prepare_data
from knot.data.readers import read_source, validate_source
from knot.layout import RunLayout

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[1]
MARC = "amazon_reviews_multi_en"


def read(root: Path, **spec):
    records, stats = read_source(validate_source(spec), lambda rel: root / rel)
    return records, stats


def labels(records) -> Counter:
    return Counter(r.label for r in records)


def test_marc_toy_counts_and_official_split(data_root):
    records, _ = read(
        data_root, reader="marc", path=f"{MARC}/prodAnalysis/toy.json.gz", category="toy",
        official_splits={"val": f"{MARC}/dataset_en_dev.json.gz", "test": f"{MARC}/dataset_en_test.json.gz"},
    )
    assert len(records) == 9203
    assert labels(records) == {"1": 1962, "2": 1830, "3": 1830, "4": 1714, "5": 1867}
    assert Counter(r.split for r in records) == {"train": 8745, "val": 217, "test": 241}


def test_marc_category_filter_on_mixed_file(data_root):
    records, stats = read(data_root, reader="marc", path=f"{MARC}/prodAnalysis/test_home.json.gz", category="home")
    assert (len(records), stats["filtered"]) == (4592, 1914)
    dev, _ = read(data_root, reader="marc", path=f"{MARC}/dataset_en_dev.json.gz")
    assert labels(dev) == {s: 1000 for s in "12345"}


def test_meld(data_root):
    for name, rows, dialogues in (("train", 9989, 1038), ("dev", 1109, 114), ("test", 2610, 280)):
        records, _ = read(data_root, reader="meld", path=f"meld/{name}_sent_emo.csv")
        assert (len(records), len({r.group for r in records})) == (rows, dialogues)
    assert labels(records) == {"neutral": 1256, "joy": 402, "anger": 345, "surprise": 281,
                               "sadness": 208, "disgust": 68, "fear": 50}
    assert "’" in "".join(r.text for r in records)  # curly quotes decoded as UTF-8


def test_emorynlp(data_root):
    sizes = {}
    for name in ("train", "dev", "test"):
        records, _ = read(data_root, reader="emorynlp", path=f"emorynlp/emorynlp_{name}_final.csv")
        sizes[name] = len(records)
        if name == "train":
            assert labels(records) == {"Neutral": 2485, "Joyful": 1677, "Scared": 941, "Mad": 785,
                                       "Peaceful": 638, "Powerful": 551, "Sad": 474}
    assert sizes == {"train": 7551, "dev": 954, "test": 984}


def test_silicone_dailydialog(data_root):
    dev, _ = read(data_root, reader="silicone", path="silicone/dyda/dev.csv")
    test, _ = read(data_root, reader="silicone", path="silicone/dyda/test.csv")
    assert (len(dev), len({r.group for r in dev})) == (8069, 1000)
    assert (len(test), len({r.group for r in test})) == (7740, 1000)
    assert not {r.group for r in dev} & {r.group for r in test}  # ids repeat across files
    assert labels(dev) == {"no emotion": 7108, "happiness": 684, "surprise": 107, "sadness": 79,
                           "anger": 77, "fear": 11, "disgust": 3}


def test_goemotions(data_root):
    for name, rows, multi in (("train", 43410, 7102), ("dev", 5426, 878), ("test", 5427, 837)):
        records, _ = read(data_root, reader="goemotions", path=f"goemotions/original/{name}.tsv",
                          labels_file="goemotions/original/labels.txt")
        assert len(records) == rows
        assert sum(isinstance(r.label, tuple) for r in records) == multi
    carrying = Counter(lab for r in records for lab in (r.label if isinstance(r.label, tuple) else (r.label,)))
    assert carrying["neutral"] == 1787 and carrying["admiration"] == 504


def test_sst(data_root):
    for name, rows in (("dev", 1101), ("test", 2210), ("train", 8544)):
        records, _ = read(data_root, reader="sst", path=f"sst5/trees/{name}.txt")
        assert len(records) == rows
    assert labels(records) == {"0": 1092, "1": 2218, "2": 1624, "3": 2322, "4": 1288}
    assert records[0].text.startswith("The Rock is destined to be the 21st Century 's new")


@pytest.mark.parametrize(
    "name",
    ["sentiment", "sentiment-quick", "sentiment-shift", "erc", "erc-quick", "sentiment-full", "erc-full",
     *(f"study/{t}" for t in ("sentiment", "erc", "goemotions"))],
)
def test_shipped_configs_load_and_their_files_exist(data_root, name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    roles = Counter(d.role for d in cfg.data.domains)
    assert roles["local"] >= 3 and roles["global"] == 1 and roles["transfer"] == 1
    for d in cfg.data.domains:
        for s in d.sources:
            assert (data_root / s["path"]).is_file(), s["path"]


def test_erc_config_prepares_disjoint_dailydialog_parts(data_root, tmp_path):
    cfg = load_config(REPO / "configs" / "erc.yaml")
    layout = RunLayout(tmp_path / "erc")
    m = prepare_data(cfg, layout, data_root)
    meld = m["domains"]["meld"]
    assert meld["split"] == "official"
    # rows less fear and disgust (9989 - 271 - 268, 1109 - 22 - 40, 2610 - 68 - 50), less the 129
    # utterances whose text (with its context) repeats an earlier one, 85 / 8 / 36 per split
    assert meld["duplicates"] == {"found": 129, "dropped": 129, "label_conflicts": 46}
    assert meld["counts"] == {"train": 9450 - 85, "val": 1047 - 8, "test": 2492 - 36}
    assert m["domains"]["emorynlp"]["label_counts"]["train"] == {
        "anger": 784, "joy": 1660, "neutral": 2442, "sadness": 474, "surprise": 0}
    assert m["domains"]["emorynlp"]["duplicates"]["dropped"] == 91
    owner: dict[str, str] = {}
    total = 0
    for k in range(4):
        name = f"dailydialog-{k}"
        dom = m["domains"][name]
        assert dom["split"] == "random"
        n = sum(dom["counts"].values())
        total += n
        assert abs(dom["counts"]["train"] / n - 0.7) < 0.03 and abs(dom["counts"]["val"] / n - 0.1) < 0.03
        for split in ("train", "val", "test"):
            examples = load_split(layout.data, name, split)
            assert {e.label for e in examples} == {"anger", "joy", "neutral", "sadness", "surprise"}
            for e in examples:
                assert owner.setdefault(e.group, f"{name}/{split}") == f"{name}/{split}"
    # every dialogue in exactly one part and split, but 3 whose every utterance (with its
    # context) repeats an earlier dialogue word for word: de-duplication leaves nothing of them
    assert len(owner) == 2000 - 3
    dropped = sum(m["domains"][f"dailydialog-{k}"]["duplicates"]["dropped"] for k in range(4))
    assert dropped == 72
    assert total == 8069 + 7740 - (11 + 3) - (17 + 47) - dropped  # all but fear, disgust and repeats
    first = load_split(layout.data, "dailydialog-0", "train")[5]
    assert first.text.count(" [SEP] ") <= 8


def test_sentiment_config_prepares_every_review(data_root, tmp_path):
    cfg = load_config(REPO / "configs" / "sentiment.yaml")
    m = prepare_data(cfg, RunLayout(tmp_path / "s"), data_root)
    totals = {name: sum(d["counts"].values()) for name, d in m["domains"].items()}
    # every review but the exact repeats of an earlier one: 1 apparel, 11 toy, 5 sports
    assert totals == {"apparel": 4186 - 1, "toy": 9203 - 11, "wireless": 4115, "grocery": 4950, "sports": 8719 - 5}
    assert [d["duplicates"]["dropped"] for d in m["domains"].values()] == [1, 11, 0, 0, 5]
    toy = m["domains"]["toy"]
    assert toy["counts"] == {"train": 6435, "val": 919, "test": 1838}
    stars = {star: sum(toy["label_counts"][s][star] for s in ("train", "val", "test")) for star in "12345"}
    for split, target in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        for star, n in stars.items():
            assert abs(toy["label_counts"][split][star] - n * target) < 1

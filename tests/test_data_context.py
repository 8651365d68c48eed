"""Dialogue context on a hand-made dialogue, and label mapping counts."""

from __future__ import annotations

import pytest

from knot.data.context import add_context, with_context
from knot.data.labels import MULTI, LabelMapper
from knot.data.readers import Record

DIALOGUE = ["Hi.", "Hello, how are you?", "Fine, thanks.", "Great!", "Bye."]


def test_context_is_utterance_then_previous_turns_most_recent_first():
    out = with_context(DIALOGUE, turns=2, separator=" [SEP] ")
    assert out == [
        "Hi.",
        "Hello, how are you? [SEP] Hi.",
        "Fine, thanks. [SEP] Hello, how are you? [SEP] Hi.",
        "Great! [SEP] Fine, thanks. [SEP] Hello, how are you?",
        "Bye. [SEP] Great! [SEP] Fine, thanks.",
    ]


def test_context_turns_zero_and_more_than_the_dialogue():
    assert with_context(DIALOGUE, turns=0) == DIALOGUE
    assert with_context(DIALOGUE, turns=8, separator="|")[-1] == "Bye.|Great!|Fine, thanks.|Hello, how are you?|Hi."
    with pytest.raises(ValueError):
        with_context(DIALOGUE, turns=-1)


def test_add_context_orders_by_utterance_id_and_never_crosses_dialogues():
    # file order scrambled; dialogue d2 interleaved; one record without a dialogue
    records = [
        Record("b2", "x", "d1", 1, order=2),
        Record("z1", "x", "d2", 2, order=1),
        Record("a1", "x", "d1", 3, order=1),
        Record("solo", "x", None, 4),
        Record("c3", "x", "d1", 5, order=3),
    ]
    out = add_context(records, turns=8, separator=" / ")
    assert [r.text for r in out] == ["b2 / a1", "z1", "a1", "solo", "c3 / b2 / a1"]
    assert [(r.label, r.group, r.line) for r in out] == [(r.label, r.group, r.line) for r in records]
    assert add_context(records, turns=0) == records


def test_label_mapper_counts_kept_dropped_and_unmapped():
    m = LabelMapper({"joy": "joy", "happiness": "joy", "disgust": None}, ["joy", "anger"])
    got = [m(x) for x in ["joy", "happiness", "happiness", "disgust", "Peaceful", None]]
    assert got == ["joy", "joy", "joy", None, None, None]
    assert m.report() == {
        "raw_labels": {"Peaceful": 1, "disgust": 1, "happiness": 2, "joy": 1},
        "dropped": {"disgust": 1},
        "unmapped": {"Peaceful": 1},
    }


def test_label_mapper_without_map_keeps_only_task_labels():
    m = LabelMapper(None, ["1", "2", "3", "4", "5"])
    assert [m(x) for x in ["5", "0", "3"]] == ["5", None, "3"]
    assert dict(m.unmapped) == {"0": 1}


@pytest.mark.parametrize(
    "policy, row, expected",
    [
        ("drop", ("joy", "amusement"), None),
        ("first", ("anger", "joy"), "anger"),
        ("map", ("joy", "amusement"), "joy"),       # both map to joy
        ("map", ("joy", "fear"), "joy"),            # fear is dropped by the map, joy remains
        ("map", ("joy", "anger"), None),            # conflicting targets
    ],
)
def test_multi_label_policies(policy, row, expected):
    table = {"joy": "joy", "amusement": "joy", "anger": "anger", "fear": None}
    m = LabelMapper(table, ["joy", "anger"], multi_label=policy)
    assert m(row) == expected
    if expected is None:
        assert m.dropped[MULTI] == 1

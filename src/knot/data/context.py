"""Dialogue context for emotion recognition in conversation (ERC).

As in the KNOT reference, an utterance is classified together with what was said before
it: its text becomes the utterance itself, then up to ``turns`` previous utterances of
the same dialogue, most recent first, joined by a separator (``" [SEP] "`` by default,
which a BERT tokenizer turns into its ``[SEP]`` token). The utterance comes first so
that truncation to ``max_length`` cuts the oldest context, never the utterance.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Sequence

from knot.data.readers import Record

__all__ = ["with_context", "add_context"]


def with_context(utterances: Sequence[str], turns: int, separator: str = " [SEP] ") -> list[str]:
    """Texts of one dialogue's utterances, each followed by its previous ``turns`` ones.

    Parameters
    ----------
    utterances : sequence of str
        The dialogue in order, length ``U``.
    turns : int
        How many previous utterances to append (0: none).
    separator : str
        Put between the pieces.

    Returns
    -------
    list of str, length ``U``

    Examples
    --------
    >>> with_context(["hi", "hello", "how are you?"], turns=1, separator=" | ")
    ['hi', 'hello | hi', 'how are you? | hello']
    >>> with_context(["a", "b", "c"], turns=8, separator=" ")
    ['a', 'b a', 'c b a']
    """
    if turns < 0:
        raise ValueError(f"turns: expected >= 0, got {turns}")
    out = []
    for i, u in enumerate(utterances):
        previous = utterances[max(0, i - turns):i][::-1]  # most recent first
        out.append(separator.join([u, *previous]))
    return out


def add_context(records: Sequence[Record], turns: int, separator: str = " [SEP] ") -> list[Record]:
    """Replace each grouped record's text by :func:`with_context` over its dialogue.

    Records are grouped by ``group`` and ordered by ``order`` inside a dialogue (stable,
    so equal keys keep file order); records without a group are returned unchanged. The
    output keeps the input order.

    >>> rs = [Record("b", "x", "d1", 2, order=2), Record("a", "y", "d1", 1, order=1),
    ...       Record("z", "y", None, 3)]
    >>> [r.text for r in add_context(rs, turns=8, separator=" / ")]
    ['b / a', 'a', 'z']
    """
    if turns == 0:
        return list(records)
    dialogues: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.group is not None:
            dialogues[r.group].append(i)
    out = list(records)
    for idx in dialogues.values():
        idx = sorted(idx, key=lambda i: records[i].order)
        texts = with_context([records[i].text for i in idx], turns, separator)
        for i, t in zip(idx, texts):
            out[i] = replace(records[i], text=t)
    return out

"""The unit every later stage consumes: one labelled (or unlabelled) text."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Example"]


@dataclass(frozen=True)
class Example:
    """One text of a domain, as written to ``<domain>/<split>.jsonl``.

    Parameters
    ----------
    text : str
        The model input. For dialogue corpora this already holds the context: the
        utterance, then up to ``data.context_turns`` previous utterances, most recent
        first, joined by ``data.context_separator``.
    label : str or None
        A label of the task's label space (``"1"``..``"5"``, ``"joy"``, ...), or ``None``
        for unlabelled text.
    domain : str
        The config name of the domain the example belongs to.
    group : str or None
        The dialogue (``"<source path>:<id>"``, e.g. ``"silicone/dyda/dev.csv:7"``) for
        dialogue corpora, else ``None``.
    gold_dist : list of float or None
        The human label distribution over the task's labels (geometry order, sums to
        1), when the source has one (VADER's raters; a ``gold`` column).
    gold_score : float or None
        A gold scalar when the source has one (VADER's mean rating).

    ``to_dict`` leaves out ``gold_dist`` and ``gold_score`` when they are ``None``, so
    prepared files of sources without them are unchanged.

    Examples
    --------
    >>> ex = Example("great", "5", "toy", None)
    >>> Example.from_dict(ex.to_dict()) == ex
    True
    >>> Example("fine", "4", "tweets", gold_dist=[0.0, 0.0, 0.25, 0.75, 0.0], gold_score=1.2).to_dict()["gold_score"]
    1.2
    """

    text: str
    label: str | None
    domain: str
    group: str | None = None
    gold_dist: list[float] | None = None
    gold_score: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("gold_dist", "gold_score"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(
            text=d["text"], label=d.get("label"), domain=d["domain"], group=d.get("group"),
            gold_dist=d.get("gold_dist"), gold_score=d.get("gold_score"),
        )

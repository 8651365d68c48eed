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

    Examples
    --------
    >>> ex = Example("great", "5", "toy", None)
    >>> Example.from_dict(ex.to_dict()) == ex
    True
    """

    text: str
    label: str | None
    domain: str
    group: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(text=d["text"], label=d.get("label"), domain=d["domain"], group=d.get("group"))

"""Map raw corpus labels to the task's label space, counting what is dropped.

A domain's ``label_map`` maps raw labels to task labels; ``null`` drops a raw label on
purpose (MELD ``disgust``). A raw label that is not in the map at all is *unmapped*: the
row is dropped too, but counted separately and reported as a warning, since it usually
means a typo or a corpus with more classes than expected. Without a ``label_map`` raw
labels must already be task labels.

Multi-label rows (GoEmotions) follow the source's ``multi_label`` policy:

``drop``
    the row is dropped;
``first``
    the first label of the row is mapped;
``map``
    every label is mapped; the row is kept when all the labels that map to a task label
    map to the same one, else dropped.

Rows dropped by the policy are counted under the raw label ``"(multi-label)"``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["MULTI", "LabelMapper"]

MULTI = "(multi-label)"


@dataclass
class LabelMapper:
    """Map raw labels and count them per outcome.

    Parameters
    ----------
    label_map : dict or None
        ``{raw: task label or None}``; ``None`` keeps raw labels that are task labels.
    task_labels : sequence of str or None
        The task's label space; ``None`` accepts any label when there is no map.
    multi_label : str
        ``drop``, ``first`` or ``map`` (see the module docstring).

    Examples
    --------
    >>> m = LabelMapper({"joy": "joy", "happiness": "joy", "fear": None}, ["joy", "anger"])
    >>> [m(x) for x in ["joy", "happiness", "fear", "boredom", None]]
    ['joy', 'joy', None, None, None]
    >>> dict(m.raw), dict(m.dropped), dict(m.unmapped)
    ({'joy': 1, 'happiness': 1, 'fear': 1, 'boredom': 1}, {'fear': 1}, {'boredom': 1})
    >>> m(("joy", "happiness")), m(("joy", "fear")), m.multi_label
    (None, None, 'drop')
    >>> LabelMapper({"a": "x", "b": "x", "c": "y"}, multi_label="map")(("a", "b"))
    'x'
    """

    label_map: dict[str, str | None] | None = None
    task_labels: Iterable[str] | None = None
    multi_label: str = "drop"
    raw: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    unmapped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.multi_label not in ("drop", "first", "map"):
            raise ValueError(f"multi_label: expected drop, first or map, got {self.multi_label!r}")
        self._task = None if self.task_labels is None else set(self.task_labels)

    def _one(self, raw: str) -> tuple[str | None, str]:
        """Map one raw label -> (label, outcome) with outcome kept/dropped/unmapped."""
        if self.label_map is not None:
            if raw not in self.label_map:
                return None, "unmapped"
            target = self.label_map[raw]
            return (target, "kept") if target is not None else (None, "dropped")
        if self._task is not None and raw not in self._task:
            return None, "unmapped"
        return raw, "kept"

    def __call__(self, raw: str | tuple[str, ...] | None) -> str | None:
        """The task label of a row's raw label, or ``None`` if the row is dropped.

        An unlabelled row (``raw is None``) maps to ``None`` and is not counted; callers
        keep such rows (transfer sets without labels).
        """
        if raw is None:
            return None
        if isinstance(raw, tuple):
            if self.multi_label == "first":
                raw = raw[0]
            else:
                self.raw[MULTI] += 1
                if self.multi_label == "map":
                    targets = {self._one(r)[0] for r in raw} - {None}
                    if len(targets) == 1:
                        return targets.pop()
                self.dropped[MULTI] += 1
                return None
        self.raw[raw] += 1
        label, outcome = self._one(raw)
        if outcome == "dropped":
            self.dropped[raw] += 1
        elif outcome == "unmapped":
            self.unmapped[raw] += 1
        return label

    def report(self) -> dict:
        """Counts as plain dicts, sorted by label: ``{"raw_labels", "dropped", "unmapped"}``."""
        return {
            "raw_labels": dict(sorted(self.raw.items())),
            "dropped": dict(sorted(self.dropped.items())),
            "unmapped": dict(sorted(self.unmapped.items())),
        }

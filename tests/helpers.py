"""Test-only data: a tiny separable polarity corpus written as JSON lines."""

from __future__ import annotations

import json
import random
from pathlib import Path

GOOD = ["great", "wonderful", "excellent", "lovely", "superb", "brilliant"]
BAD = ["awful", "terrible", "horrible", "dreadful", "boring", "poor"]
NOUNS = ["film", "story", "music", "plot", "cast", "ending", "book", "show"]


def write_polarity_corpus(path: Path, n: int, seed: int, words: int = 3) -> None:
    """``n`` lines ``{"text", "label"}``, alternating neg/pos; each text is ``words`` words
    (adjective, noun[, adjective]) drawn with ``seed``, so the label is always readable."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        adjectives = GOOD if label == "pos" else BAD
        parts = [rng.choice(adjectives), rng.choice(NOUNS), rng.choice(adjectives)][:words]
        lines.append(json.dumps({"text": " ".join(parts), "label": label}))
    Path(path).write_text("\n".join(lines) + "\n")

"""The predictor interface of knot.load: labels, geometry, predict_proba / predict / expected_coordinate."""
from __future__ import annotations
from typing import Any, Sequence
import numpy as np
__all__ = ["Predictor", "check_texts"]

def check_texts(texts: Any) -> list[str]:
    """The texts as a list; a single str, a non-str item or an empty/whitespace-only text is a ValueError."""
    if isinstance(texts, str):
        raise ValueError("texts: expected a list of strings, got one string (wrap it in a list)")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"text {i}: expected a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"text {i} is empty (only whitespace): give a text to classify")
    return out

class Predictor:
    labels: list[str]
    max_length: int
    coords: np.ndarray  # (K, D) float64: the task geometry's label coordinates, set by each implementation
    # ``geometry`` (a knot.geometry.LabelGeometry) is a property of each implementation; the ONNX one builds
    # it lazily from config.json (knot.geometry imports torch), so predicting never needs torch

    @property
    def geometry(self) -> Any:
        raise NotImplementedError

    def _proba(self, texts: list[str], batch_size: int) -> np.ndarray:  # (N, K)
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.labels)))
        return np.asarray(self._proba(texts, batch_size), dtype=np.float64)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(1)]

    def expected_coordinate(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.predict_proba(texts, batch_size) @ np.asarray(self.coords, dtype=np.float64)  # (N, D)

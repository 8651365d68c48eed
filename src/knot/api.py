"""``knot.load``: one predictor for any knot model folder.

``knot.load(path)`` takes a checkpoint folder (a local teacher, the global model or a
student; frozen head-only or fine-tuned; a training folder such as ``RUN/teachers/<d>``
means its ``best/``) or an exported folder (``model.onnx``, see :mod:`knot.export`), and
returns a :class:`knot.predictor.Predictor`: ``labels``, ``geometry``, ``max_length``,
``predict_proba(texts)`` (N, K), ``predict(texts)`` and ``expected_coordinate(texts)`` (N, D).

>>> import knot
>>> model = knot.load("runs/quickstart/students/ot")            # doctest: +SKIP
>>> model.predict(["a wonderful, moving film"])                   # doctest: +SKIP
['5']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from knot.predictor import Predictor

__all__ = ["load", "CheckpointPredictor"]


class CheckpointPredictor(Predictor):
    """A knot checkpoint (torch) as a :class:`~knot.predictor.Predictor`.

    Parameters
    ----------
    path : a checkpoint folder or a training folder (its ``best/``).
    device : ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda[:N]`` or ``mps``.
    feature_cache : frozen-encoder checkpoints: a :class:`knot.features.FeatureCache` to
        encode through (default: a temporary one per call).

    Raises
    ------
    FileNotFoundError, ValueError
        No checkpoint there, or a corrupt one (the message names the file).
    """

    def __init__(self, path: str | os.PathLike, device: Any = "auto", *, feature_cache: Any = None) -> None:
        from knot.models import load as load_model
        from knot.utils import resolve_device

        self.path = Path(path)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = load_model(self.path, device=self.device, feature_cache=feature_cache)
        self.labels = list(self.model.labels)
        self.max_length = int(self.model.max_length)
        self.coords = self.model.geometry.coords.detach().cpu().numpy().astype(np.float64)  # (K, D)

    def __repr__(self) -> str:
        return f"CheckpointPredictor({str(self.path)!r}, labels={self.labels})"

    @property
    def geometry(self) -> Any:
        """The task's :class:`~knot.geometry.LabelGeometry` stored with the checkpoint."""
        return self.model.geometry

    def _proba(self, texts: list[str], batch_size: int) -> np.ndarray:  # (N, K)
        return self.model.predict_proba(texts, batch_size=batch_size, device=self.device)


def load(path: str | os.PathLike, device: Any = "auto", **kwargs: Any) -> Predictor:
    """The predictor of a knot model folder: an exported one (holding ``model.onnx``) gives
    a :class:`knot.export.OnnxPredictor`, any other a :class:`CheckpointPredictor`.

    Parameters
    ----------
    path : the folder.
    device : checkpoints only: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
    **kwargs : passed to the predictor (``feature_cache`` for a frozen checkpoint).
    """
    path = Path(path)
    if (path / "model.onnx").is_file():
        from knot.export import OnnxPredictor  # type: ignore[import-not-found]  # the export module

        return OnnxPredictor(path, **kwargs)
    return CheckpointPredictor(path, device, **kwargs)

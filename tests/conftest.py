"""Shared fixtures.

``data_root`` is the folder with the real datasets: ``$KNOT_DATA`` when set, else the
``shared/datasets`` folder beside the checkout. Tests that need it are skipped, with a
message saying so, when neither exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_data_root() -> Path | None:
    env = os.environ.get("KNOT_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    beside = REPO.parent / "shared" / "datasets"
    return beside if beside.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = find_data_root()
    if root is None:
        pytest.skip("real datasets not found: set KNOT_DATA or place shared/datasets beside the checkout")
    return root


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """Keep torch to the machine's cores and never touch a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

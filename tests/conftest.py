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
def _offline(monkeypatch):
    """Never touch a model hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op torch thread: the tests' tensors and models are small, and on a shared
    2-core machine spinning OpenMP threads cost more than they give."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

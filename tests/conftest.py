"""Shared fixtures.

``data_root`` is the folder with the real datasets: ``$KNOT_DATA`` when set, else the
``shared/datasets`` folder beside the checkout. Tests that need it are skipped, with a
message saying so, when neither exists.

``quickstart_run`` is the README's quickstart, shrunk, run once per session on a fresh
machine's view (no data folder): tests/test_quickstart.py checks the run,
tests/test_export.py exports its student.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import QUICKSTART, quickstart_sets

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


def _no_data_root(*args, **kwargs):
    raise AssertionError("the quickstart must not need a data root")


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> tuple[Path, str]:
    """``configs/quickstart.yaml`` run through the CLI with sizes and steps shrunk
    (``helpers.quickstart_sets``), from a temporary folder with ``KNOT_DATA`` unset and the
    data-root lookup disabled: ``(run folder, the command's output)``."""
    from typer.testing import CliRunner

    from knot.cli import app

    config = QUICKSTART
    base = tmp_path_factory.mktemp("quickstart")
    work = base / "fresh" / "checkout"  # no ../shared/datasets beside it
    work.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KNOT_DATA", raising=False)
        mp.delenv("KNOT_CACHE", raising=False)
        mp.chdir(work)
        mp.setattr("knot.data.prepare.resolve_data_root", _no_data_root)
        sets = quickstart_sets()
        out = base / "run"
        args = ["run", str(config), "--out", str(out)]
        for s in sets:
            args += ["--set", s]
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out, res.output

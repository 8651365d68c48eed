"""Tests for knot.utils: atomic writes keep ordinary modes; read_json."""

from __future__ import annotations

import os
import stat

import pytest

from knot.utils import atomic_dir
from knot.utils import atomic_write_json, atomic_write_text, read_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_write_keeps_the_mode_open_would_give(tmp_path, umask_022):
    # Arrange: under umask 022 open() makes 0644 files
    target = tmp_path / "results.json"

    # Act
    atomic_write_json(target, {"a": 1})
    atomic_write_text(tmp_path / "report.md", "x")

    # Assert: not the 0600 of mkstemp
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644


def test_atomic_dir_keeps_the_mode_mkdir_would_give(tmp_path, umask_022):
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "w.bin").write_bytes(b"0")

    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755


def test_atomic_write_respects_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)

    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o600


def test_read_json_checks_the_format_tag(tmp_path):
    f = tmp_path / "r.json"
    atomic_write_json(f, {"format": "knot-results", "rows": []})

    assert read_json(f, "knot-results") == {"format": "knot-results", "rows": []}
    assert read_json(f) == {"format": "knot-results", "rows": []}
    with pytest.raises(ValueError, match=r"r\.json: not a knot status file"):
        read_json(f, "knot-status", what="knot status")


def test_read_json_reports_line_of_bad_json_and_missing_hint(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{\n  "a": 1,\n}\n')

    with pytest.raises(ValueError, match=r"bad\.json: line 3: invalid JSON"):
        read_json(f)
    with pytest.raises(FileNotFoundError, match=r"nope\.json: run it first"):
        read_json(tmp_path / "nope.json", missing="run it first")
    with pytest.raises(ValueError, match="not a knot file"):
        (tmp_path / "list.json").write_text("[1]")
        read_json(tmp_path / "list.json", "knot-x")

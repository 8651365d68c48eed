"""Tests for knot.progress: bars on a terminal, one log line per loop otherwise."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import knot
from knot.progress import LogProgress, progress


def test_without_a_terminal_one_log_line_and_no_carriage_returns(capsys, caplog):
    # Arrange: pytest's captured stderr is not a terminal
    caplog.set_level(logging.INFO, logger="knot.progress")

    # Act
    with progress(total=3, desc="train epoch 3/10", unit="batch") as bar:
        for _ in range(3):
            bar.update(1)

    # Assert
    assert "\r" not in capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.name == "knot.progress"]
    assert len(lines) == 1
    assert re.fullmatch(r"train epoch 3/10: 3 batches in \d+ s", lines[0])


def test_on_a_terminal_a_tqdm_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Tty())

    bar = progress(total=2, desc="x", unit="text")

    assert not isinstance(bar, LogProgress)
    bar.close()


def test_disabled_is_silent(caplog):
    caplog.set_level(logging.INFO, logger="knot.progress")

    with progress(total=1, desc="x", enabled=False) as bar:
        bar.update()

    assert not caplog.records


def test_every_progress_bar_goes_through_the_helper():
    src = Path(knot.__file__).parent
    users = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "tqdm" in p.read_text(encoding="utf-8"))

    assert users == ["progress.py"]

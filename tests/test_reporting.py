"""Tests for knot.reporting over several seeds."""

from __future__ import annotations

from helpers import two_teacher_results
from knot.layout import RunLayout
from knot.reporting import write_report
from knot.utils import atomic_write_json


def test_best_single_teacher_over_seeds_is_the_best_mean(tmp_path):
    # Arrange: seed 1 picks a (0.60 > 0.50), seed 2 picks b; mean a = 0.45 < mean b = 0.60
    layouts = []
    for seed, (fa, fb) in enumerate([(0.60, 0.50), (0.30, 0.70)]):
        layout = RunLayout(tmp_path / f"seed-{seed}")
        atomic_write_json(layout.results_json, two_teacher_results(fa, fb))
        layouts.append(layout)

    # Act
    report = write_report(layouts, tmp_path / "out").read_text()

    # Assert
    assert "teacher `b` — baseline: best single teacher" in report
    assert "teacher `a` — baseline" not in report

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


def test_the_report_prints_each_runs_environment(tmp_path):
    env = {"python": "3.11.9", "torch": "2.5.1", "numpy": "2.1.0", "scipy": "1.14.1", "transformers": "4.46.0",
           "knot": "0.1.0", "knot_commit": None, "torch_threads": 2}
    layouts = []
    for seed, threads in enumerate([2, 2, 1]):
        layout = RunLayout(tmp_path / f"seed-{seed}")
        atomic_write_json(layout.results_json, two_teacher_results(0.6, 0.5) | {"environment": env | {"torch_threads": threads}})
        layouts.append(layout)

    one = write_report(layouts[:2], tmp_path / "one").read_text()
    mixed = write_report(layouts, tmp_path / "mixed").read_text()

    line = "knot 0.1.0, Python 3.11.9, torch 2.5.1, numpy 2.1.0, scipy 1.14.1, transformers 4.46.0"
    assert f"Environment: {line}; 2 torch thread(s)." in one
    assert "Environment (differs between runs):" in mixed
    assert f"- runs 1, 2: {line}; 2 torch thread(s)" in mixed and f"- run 3: {line}; 1 torch thread(s)" in mixed

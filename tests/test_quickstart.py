"""The README's quickstart runs on a fresh machine: no datasets folder, only the built-in data.

CI runs ``configs/quickstart.yaml`` end to end through the CLI from a temporary folder with
``KNOT_DATA`` unset and the data-root lookup disabled, so neither ``../shared/datasets``
nor any other folder can be read; sizes and steps are shrunk with ``--set`` to keep it fast
(the run is conftest's session fixture ``quickstart_run``, shared with tests/test_export.py).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers import QUICKSTART, quickstart_sets
from knot.cli import app


@pytest.mark.slow
def test_quickstart_runs_without_a_data_folder(quickstart_run, tmp_path):
    out, output = quickstart_run
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert all(src.startswith("builtin:vader/") for src in manifest["sources"])
    assert any((out / "features").iterdir())  # frozen mode: the sentences were encoded into the run's cache
    results = json.loads((out / "results.json").read_text())
    gold_keys = {"w1_gold", "tv_gold", "js_gold", "spearman_gold"}
    union = [r for r in results["rows"] if r["test_set"] == "union"]
    assert {r["model"] for r in union} >= {"global", "student:ot", "student:entropy", "student:feddf"}
    for r in results["rows"]:  # every test set of the quickstart has human distributions
        assert gold_keys <= set(r), r
        assert 0.0 <= r["tv_gold"] <= 1.0 and 0.0 <= r["js_gold"] <= 1.0 and r["w1_gold"] >= 0.0
    assert set(results["gold_baselines"]) == {t["name"] for t in results["test_sets"]}
    assert "W1 to gold" in output and "| union | `student:ot` |" in output
    assert "Against the human label distributions" in (out / "report.md").read_text()

    # the Python API reproduces `knot run` exactly: same rows in results.json
    import knot

    api = knot.Run(QUICKSTART, tmp_path / "api", overrides=quickstart_sets()).run()
    assert api.rows == results["rows"]
    assert api.rows == json.loads((tmp_path / "api" / "results.json").read_text())["rows"]


def test_data_list_shows_the_builtin_data():
    res = CliRunner().invoke(app, ["data", "list"])
    assert res.exit_code == 0, res.output
    assert "vader:" in res.output and "licence: MIT" in res.output and "CITATION.md" in res.output
    assert "tweets" in res.output and "4200 items" in res.output and "MiB" in res.output

"""`knot data prepare` / `knot data show` through the Typer app on a tiny config."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knot.cli import app

runner = CliRunner()

CONFIG = """\
# tiny test config
name: tiny
task: {geometry: uniform, labels: ["1", "2", "3", "4", "5"]}
data:
  domains:
    - name: toy
      role: local
      sources: [{reader: marc, path: toy.json.gz}]
    - name: other
      role: transfer
      sources: [{reader: jsonl, path: other.jsonl, text: body, label: stars}]
      label_map: {"1": "1", "2": "2", "3": "3", "4": "4", "5": "5", "0": null}
"""


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path, Path]:
    root = tmp_path / "data"
    root.mkdir()
    reviews = [json.dumps({"review_id": str(i), "stars": str(1 + i % 5), "review_body": f"text {i}"})
               for i in range(50)]
    (root / "toy.json.gz").write_bytes(gzip.compress("\n".join(reviews).encode()))
    other = [json.dumps({"body": f"b {i}", "stars": i % 6}) for i in range(60)]
    (root / "other.jsonl").write_text("\n".join(other) + "\n")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG)
    return cfg, root, tmp_path / "run"


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_prepare_then_show_then_noop(setup):
    cfg, root, run = setup
    r = invoke("data", "prepare", cfg, "--out", run, "--data-root", root)
    assert r.exit_code == 0, r.output
    assert "not prepared yet" in r.output
    lines = r.output.splitlines()
    header = next(line for line in lines if line.startswith("domain"))
    assert header.split() == ["domain", "role", "split", "n", "dialogues", "1", "2", "3", "4", "5"]
    assert next(line for line in lines if line.startswith("toy")).split()[:4] == ["toy", "local", "train", "35"]
    assert "other  other.jsonl: 0 10" in r.output  # dropped raw label "0", 10 rows
    assert (run / "data" / "manifest.json").is_file()

    again = invoke("data", "prepare", cfg, "--out", run, "--data-root", root)
    assert again.exit_code == 0 and "up to date" in again.output and "nothing to do" in again.output

    show = invoke("data", "show", cfg, "--out", run, "--data-root", root)
    assert show.exit_code == 0 and header in show.output and "stale" not in show.output

    stale = invoke("data", "show", cfg, "--out", run, "--data-root", root, "--set", "data.seed=1")
    assert stale.exit_code == 0 and "stale: the data section of the config changed" in stale.output


def test_show_before_prepare_says_what_to_run(setup):
    cfg, root, run = setup
    r = invoke("data", "show", cfg, "--out", run, "--data-root", root)
    assert r.exit_code == 2 and "knot data prepare CONFIG" in r.output


@pytest.mark.parametrize(
    "edit, key",
    [
        (("reader: marc", "reader: mrac"), "data.domains[0].sources[0].reader"),
        (("role: local", "role: teacher"), "data.domains[0].role"),
        (("name: toy", "name: toy\n      max_trian: 5"), "data.domains[0].max_trian"),
    ],
)
def test_bad_config_exits_nonzero_naming_the_key(setup, edit, key):
    cfg, root, run = setup
    cfg.write_text(CONFIG.replace(*edit, 1))
    r = invoke("data", "prepare", cfg, "--out", run, "--data-root", root)
    assert r.exit_code == 2 and key in r.output, r.output
    assert not run.exists()


def test_bad_data_exits_2_with_file_and_line(setup):
    cfg, root, run = setup
    with open(root / "other.jsonl", "a") as fh:
        fh.write("{broken\n")
    r = invoke("data", "prepare", cfg, "--out", run, "--data-root", root)
    assert r.exit_code == 2 and "other.jsonl:61: malformed JSON line" in r.output

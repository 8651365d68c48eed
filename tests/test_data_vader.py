"""The built-in VADER data, the ``vader`` reader, ``builtin:`` paths and gold distributions."""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from pathlib import Path

import pytest

from knot.config import ExperimentConfig
from knot.data.prepare import resolve_data_root
from knot.data import load_split, prepare_data
from knot.data.builtin import builtin_root, catalogue
from knot.data.readers import read_source, validate_source
from knot.layout import RunLayout

REPO = Path(__file__).resolve().parents[1]
DOMAINS = {  # rows and mean-rating bins "1".."5" with knot's edges (a mean on an edge goes outward)
    "tweets": (4200, [171, 760, 1227, 1669, 373]),
    "movieReviewSnippets": (10605, [1057, 3765, 993, 3751, 1039]),
    "amazonReviewSnippets": (3708, [147, 933, 1018, 1138, 472]),
    "nytEditorialSnippets": (5190, [14, 1291, 3101, 776, 8]),
}
# (the datasets folder's PROVENANCE.md counts half-open [edge, next) bins, so its negative
# bins differ: e.g. tweets 165 / 752 / 1241; the positive bins agree)


def read(tmp_path: Path, **spec):
    spec = validate_source({"reader": "vader", **spec})
    return read_source(spec, lambda rel: tmp_path / rel)


def write_pair(tmp_path: Path, truth: list[str], ratings: list[str], *, bom: bool = True) -> None:
    """A GroundTruth/anonDataRatings pair in VADER's own layout: CRLF, no final newline."""
    (tmp_path / "x_GroundTruth.txt").write_bytes("\r\n".join(truth).encode("utf-8"))
    (tmp_path / "x_anonDataRatings.txt").write_bytes(
        ("\ufeff" if bom else "").encode("utf-8") + "\r\n".join(ratings).encode("utf-8")
    )


GOOD_TRUTH = ["1\t2.5\tLovely!", "2\t-0.25\tMeh."]
GOOD_RATINGS = ["1\t2.5\t0.5\t[2, 3, 3, 2]", "2\t-0.25\t0.43\t[0, -1, 0, 0]"]


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_builtin_vader_domains_read_completely(domain):
    spec = validate_source({"reader": "vader", "path": f"builtin:vader/{domain}_GroundTruth.txt.gz"})
    assert spec["ratings"] == f"builtin:vader/{domain}_anonDataRatings.txt.gz"
    from knot.data.builtin import resolve_builtin

    records, stats = read_source(spec, resolve_builtin)
    rows, bins = DOMAINS[domain]
    assert stats["rows"] == len(records) == rows
    assert [sum(r.label == str(k) for r in records) for k in range(1, 6)] == bins
    assert all(r.gold is not None and sum(r.gold) >= 15 and r.score is not None for r in records)


def test_packaged_files_are_the_originals_byte_for_byte():
    shared = REPO.parent / "shared" / "datasets" / "vader_hutto_icwsm2014"
    if not shared.is_dir():
        pytest.skip("datasets folder not beside the checkout")
    for gz in sorted((builtin_root() / "vader").glob("*.txt.gz")):
        assert gzip.decompress(gz.read_bytes()) == (shared / gz.name[:-3]).read_bytes(), gz.name


def test_packaged_size_and_catalogue():
    (row,) = catalogue()
    assert row["name"] == "vader" and row["licence"] == "MIT" and len(row["files"]) == 8
    assert row["bytes"] <= 3 * 2**20
    assert Path(row["citation"]).is_file() and Path(row["licence_file"]).is_file()


def test_pyproject_declares_the_builtin_data():
    text = (REPO / "pyproject.toml").read_text()
    assert '"knot.data.builtin" = ["vader/*.txt.gz", "vader/LICENSE.txt", "vader/CITATION.md"]' in text


@pytest.mark.slow
def test_wheel_carries_the_data_under_3_mb(tmp_path):
    """Build a wheel (no network: setuptools is in the venv) and check its data and size."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
         "-w", str(tmp_path)], capture_output=True, text=True, timeout=300,
    )
    if res.returncode != 0:
        pytest.skip(f"could not build a wheel here: {res.stderr[-300:]}")
    (whl,) = tmp_path.glob("knot-*.whl")
    assert whl.stat().st_size <= 3 * 2**20
    names = zipfile.ZipFile(whl).namelist()
    assert sum(n.startswith("knot/data/builtin/vader/") and n.endswith(".txt.gz") for n in names) == 8
    assert "knot/data/builtin/vader/LICENSE.txt" in names


def test_vader_labels_gold_counts_and_score(tmp_path):
    write_pair(tmp_path, GOOD_TRUTH, GOOD_RATINGS)
    records, _ = read(tmp_path, path="x_GroundTruth.txt")
    assert [r.label for r in records] == ["5", "3"]  # 2.5 >= 2.4; -0.25 in (-0.8, 0.8)
    assert records[0].gold == (0.0, 0.0, 0.0, 2.0, 2.0)  # 2, 2 -> "4"; 3, 3 -> "5"
    assert records[1].gold == (0.0, 1.0, 3.0, 0.0, 0.0)
    assert [r.score for r in records] == [2.5, -0.25]
    assert records[0].text == "Lovely!"


@pytest.mark.parametrize(
    "line, message",
    [
        ("2\t-0.25\t0.43\t[0, -1, 0.5, 0]", "'0.5' is not an integer from -4 to 4"),
        ("2\t-0.25\t0.43\t[0, -1, x, 0]", "'x' is not an integer"),
        ("2\t-0.25\t0.43\t[0, 5, 0, 0]", "'5' is not an integer from -4 to 4"),
        ("2\t-0.25\t0.43\t[]", "empty list"),
        ("2\t0.5\t0.43\t[0, -1, 0, 0]", "mean 0.5 does not match the 4 ratings"),
        ("2\t-0.4\t0.43\t[0, -1, 0, 0]", "mean -0.4 does not match"),  # -0.25 is beyond rounding of -0.4
        ("2\t-0.25\t0.43", "expected id, mean, std, [ratings]"),
    ],
)
def test_bad_ratings_line_names_file_and_line(tmp_path, line, message):
    write_pair(tmp_path, GOOD_TRUTH, [GOOD_RATINGS[0], line])
    with pytest.raises(ValueError, match=re.escape(message)) as exc:
        read(tmp_path, path="x_GroundTruth.txt")
    assert "x_anonDataRatings.txt:2:" in str(exc.value)


def test_mean_within_rounding_is_accepted(tmp_path):
    write_pair(tmp_path, ["1\t0.3\tok"], ["1\t0.3\t1.0\t[0, 0, 1]"])  # 0.333 prints as 0.3
    records, _ = read(tmp_path, path="x_GroundTruth.txt")
    assert records[0].label == "3"


def test_id_in_one_file_only(tmp_path):
    write_pair(tmp_path, GOOD_TRUTH + ["3\t1.0\tNew."], GOOD_RATINGS)
    with pytest.raises(ValueError, match=r"x_GroundTruth.txt:3: id '3' has no ratings"):
        read(tmp_path, path="x_GroundTruth.txt")
    write_pair(tmp_path, GOOD_TRUTH[:1], GOOD_RATINGS)
    with pytest.raises(ValueError, match=r"x_anonDataRatings.txt:2: id '2' has no text"):
        read(tmp_path, path="x_GroundTruth.txt")


def vader_cfg(path: str, **domain) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "v", "task": {"geometry": "sentiment5"},
        "data": {"root": None, "split_ratios": [0.5, 0.25, 0.25], "domains": [
            {"name": "d", "role": "local", "sources": [{"reader": "vader", "path": path}],
             "require_labels": [], **domain}]},
    })


def test_bad_file_writes_nothing(tmp_path):
    write_pair(tmp_path, GOOD_TRUTH * 1, [GOOD_RATINGS[0], "2\t-0.25\t0.43\t[]"])
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(ValueError, match="empty list"):
        prepare_data(vader_cfg("x_GroundTruth.txt"), layout, tmp_path)
    assert not layout.manifest.exists()
    assert not any(p.is_file() for p in (tmp_path / "run").rglob("*"))


def test_prepare_writes_normalised_gold_and_hashes_the_ratings_file(tmp_path):
    truth = [f"{i}\t{m}\tText {i}." for i, m in enumerate([2.5, -0.25] * 4, start=1)]
    ratings = [f"{i}\t{m}\t0\t{r}" for i, (m, r) in
               enumerate([(2.5, "[2, 3, 3, 2]"), (-0.25, "[0, -1, 0, 0]")] * 4, start=1)]
    write_pair(tmp_path, truth, ratings)
    layout = RunLayout(tmp_path / "run")
    manifest = prepare_data(vader_cfg("x_GroundTruth.txt"), layout, tmp_path)
    assert set(manifest["sources"]) == {"x_GroundTruth.txt", "x_anonDataRatings.txt"}
    assert manifest["domains"]["d"]["gold"]["test"] == {"dist": 2, "score": 2}
    ex = {e.label: e for e in load_split(layout.data, "d", "train")}
    assert ex["5"].gold_dist == [0.0, 0.0, 0.0, 0.5, 0.5] and ex["5"].gold_score == 2.5
    assert ex["3"].gold_dist == [0.0, 0.25, 0.75, 0.0, 0.0]
    # a changed ratings file makes the prepared data stale
    (tmp_path / "x_anonDataRatings.txt").write_bytes(
        (tmp_path / "x_anonDataRatings.txt").read_bytes().replace(b"[0, -1, 0, 0]", b"[-1, 0, 0, 0]")
    )
    from knot.data.prepare import data_status

    assert any("x_anonDataRatings.txt changed" in r for r in data_status(vader_cfg("x_GroundTruth.txt"), layout, tmp_path))


def test_builtin_prefix_ignores_the_data_root_and_root_builtin(tmp_path, monkeypatch):
    monkeypatch.delenv("KNOT_DATA", raising=False)
    cfg = vader_cfg("builtin:vader/amazonReviewSnippets_GroundTruth.txt.gz", max_train=20, max_val=10, max_test=10)
    manifest = prepare_data(cfg, RunLayout(tmp_path / "run"), tmp_path / "does-not-exist")
    assert manifest["domains"]["d"]["counts"] == {"train": 20, "val": 10, "test": 10}
    cfg = ExperimentConfig.from_dict({**cfg.to_dict(), "data": {**cfg.data.to_dict(), "root": "builtin"}})
    assert resolve_data_root(cfg) == builtin_root()


@pytest.mark.parametrize("reader, cell", [("csv", '"[1, 0, 0, 0, 3]"'), ("csv", '"1 0 0 0 3"'), ("jsonl", None)])
def test_generic_gold_column(tmp_path, reader, cell):
    if reader == "csv":
        rows = ["text,label,dist,mean"] + [f"t{i},{1 + i % 5},{cell},0.5" for i in range(20)]
        (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    else:
        rows = [json.dumps({"text": f"t{i}", "label": str(1 + i % 5), "dist": [1, 0, 0, 0, 3], "mean": 0.5})
                for i in range(20)]
        (tmp_path / "a.jsonl").write_text("\n".join(rows) + "\n")
    cfg = ExperimentConfig.from_dict({
        "name": "g", "task": {"geometry": "sentiment5"}, "data": {"domains": [
            {"name": "d", "role": "local", "require_labels": [], "sources": [
                {"reader": reader, "path": f"a.{reader}", "text": "text", "label": "label",
                 "gold": "dist", "score": "mean"}]}]},
    })
    layout = RunLayout(tmp_path / "run")
    prepare_data(cfg, layout, tmp_path)
    ex = load_split(layout.data, "d", "test")[0]
    assert ex.gold_dist == [0.25, 0.0, 0.0, 0.0, 0.75] and ex.gold_score == 0.5


@pytest.mark.parametrize(
    "cell, message",
    [('"[1, 0, 0]"', r"a.csv:3: gold distribution has 3 weights, the task has 5 labels"),
     ('"[1, 0, -1, 0, 0]"', r"a.csv:3: field 'dist': weight '-1' is negative"),
     ('"[0, 0, 0, 0, 0]"', r"a.csv:3: field 'dist': gold distribution is all zero"),
     ('"[1, x, 0, 0, 0]"', r"a.csv:3: field 'dist': weight 1: expected a finite number, got 'x'")],
)
def test_bad_generic_gold_names_file_and_line(tmp_path, cell, message):
    rows = ["text,label,dist", 't0,1,"[1, 0, 0, 0, 0]"', f"t1,2,{cell}"]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    cfg = ExperimentConfig.from_dict({
        "name": "g", "task": {"geometry": "sentiment5"}, "data": {"domains": [
            {"name": "d", "role": "local", "require_labels": [],
             "sources": [{"reader": "csv", "path": "a.csv", "text": "text", "label": "label", "gold": "dist"}]}]},
    })
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        prepare_data(cfg, layout, tmp_path)
    assert not layout.manifest.exists()

"""bench/reproduce.sh with a stand-in `knot`: each comparison and confirmation run runs once, in both lane modes,
and a failed task stops the script before the results page is written."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _setup(tmp_path: Path, fail: str = "") -> tuple[Path, dict]:
    (tmp_path / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "reproduce.sh", tmp_path / "bench" / "reproduce.sh")
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake-knot"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$OMP_NUM_THREADS $*" >> {calls}\n'
        f'case "$2" in *"{fail or "no-such-task"}"*) exit 3;; esac\n'
    )
    fake.chmod(0o755)
    page = tmp_path / "page.txt"
    fake_py = tmp_path / "fake-python"
    fake_py.write_text(f'#!/usr/bin/env bash\necho "$*" > {page}\necho "$*" >> {page}.all\n')
    fake_py.chmod(0o755)
    env = {**os.environ, "KNOT": str(fake), "PYTHON": str(fake_py)}
    env.pop("OMP_NUM_THREADS", None)
    return calls, env


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_every_task_runs_once_then_the_page(tmp_path, lanes):
    calls, env = _setup(tmp_path)
    proc = subprocess.run(["bash", "bench/reproduce.sh", "/data"], cwd=tmp_path, env={**env, "LANES": lanes},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = sorted(calls.read_text().splitlines())
    threads = "1" if lanes == "2" else ""
    tasks = ("sentiment", "erc", "goemotions", "vader")
    assert lines == sorted([f"{threads} run configs/study/{t}.yaml --data-root /data" for t in tasks]
                           + [f"{threads} run runs/confirm-configs/study-{t}-confirm.yaml --data-root /data" for t in tasks])
    calls_py = (tmp_path / "page.txt.all").read_text().splitlines()
    assert len(calls_py) == 2  # the confirmation configs are written after the comparison runs, then the page
    runs = [f"runs/study-{t}" for t in ("sentiment", "erc", "goemotions", "vader")]
    assert calls_py[0].split() == ["bench/make_results.py", *runs, "--write-confirm-configs", "runs/confirm-configs"]
    page = (tmp_path / "page.txt").read_text().split()
    assert page[:12] == ["bench/make_results.py", *runs, "--confirm", *(f"{r}-confirm" for r in runs),
                         "--out", "docs/results.md"][:12]
    assert page[page.index("--out") + 1] == "docs/results.md"
    logs = sorted(p.name for p in (tmp_path / "runs" / "logs").iterdir())
    assert logs == sorted(f"study-{t}{kind}.log" for t in tasks for kind in ("", "-confirm"))
    wall = page[page.index("--wall"):][:3]  # the stand-ins finish within a minute
    assert wall[1] in ("0", "1") and wall[2] == "min"


def test_a_failed_task_stops_before_the_page(tmp_path):
    calls, env = _setup(tmp_path, fail="erc")
    proc = subprocess.run(["bash", "bench/reproduce.sh", "/data"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "FAILED configs/study/erc.yaml" in proc.stderr
    assert not (tmp_path / "page.txt").exists()

"""Hostile use of run folders and the CLI (issue 19): two commands on one run folder,
a holder killed with SIGKILL, `--stages local` on a fresh run, empty texts to predict,
`knot report` on a multi-seed run folder.

The lock tests hold the lock in a child process (a few lines of Python that take
:func:`knot.locking.run_lock` and sleep) and run the second command in this process, so
each takes well under a second of model-free work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import knot
from helpers import two_teacher_results, write_pipeline_case
from knot.cli import app
from knot.layout import RunLayout
from knot.locking import LOCK_NAME, RunLockedError, lock_folder, read_holder, run_lock
from knot.run import has_checkpoint
from knot.utils import atomic_write_json

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="run folder locks need fcntl (POSIX)")

runner = CliRunner()

HOLD = (
    "import sys, time\n"
    "from knot.locking import run_lock\n"
    "with run_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(float(sys.argv[2]))\n"
)


@pytest.fixture
def holder(tmp_path):
    """Start a child that holds ``run_lock(folder)`` for ``seconds``; returns the Popen once
    the lock is held. Children still alive at teardown are killed."""
    children = []

    def start(folder: Path, seconds: float = 60.0) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(Path(knot.__file__).parents[1])}
        script = tmp_path / "hold.py"
        script.write_text(HOLD)
        child = subprocess.Popen([sys.executable, str(script), str(folder), str(seconds)],
                                 stdout=subprocess.PIPE, text=True, env=env)
        children.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_pipeline_case(tmp_path_factory.mktemp("hostile"))


# ---- item 2: one command per run folder ----------------------------------------------


def test_second_run_on_a_held_folder_fails_at_once_naming_the_holder(case, holder, tmp_path):
    # Arrange
    cfg_path, root = case
    out = tmp_path / "run"
    child = holder(out)

    # Act
    start = time.monotonic()
    res = runner.invoke(app, ["run", str(cfg_path), "--out", str(out), "--data-root", str(root)])

    # Assert: exit 2 at once, one line naming the folder, pid, command line and start time
    assert res.exit_code == 2, res.output
    assert time.monotonic() - start < 10
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert str(out) in line and f"pid {child.pid}" in line
    assert f"hold.py {out} 60.0" in line  # the holder's command line
    assert "started 20" in line and "--wait" in line
    assert not (out / "stages.json").exists()  # it did nothing


def test_lock_error_names_pid_command_and_start(holder, tmp_path):
    child = holder(tmp_path / "run")
    with pytest.raises(RunLockedError) as err:
        with run_lock(tmp_path / "run"):
            pass
    info = read_holder(tmp_path / "run")
    assert info["pid"] == child.pid and info["command"].startswith("hold.py ")
    assert f"pid {child.pid}" in str(err.value) and info["started"] in str(err.value)


def test_wait_waits_for_the_holder_to_finish(case, holder, tmp_path):
    # Arrange: the holder releases the lock after 1.5 s
    cfg_path, root = case
    out = tmp_path / "run"
    child = holder(out, seconds=1.5)

    # Act: `data prepare --wait` (model-free) waits, then prepares
    res = runner.invoke(app, ["data", "prepare", str(cfg_path), "--out", str(out),
                              "--data-root", str(root), "--wait"])

    # Assert
    assert res.exit_code == 0, res.output
    assert child.poll() is not None  # it ran only after the holder exited
    assert RunLayout(out).manifest.is_file()


def test_lock_of_a_process_killed_with_sigkill_blocks_nobody(holder, tmp_path):
    child = holder(tmp_path / "run")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the file stays; its flock died with the holder

    with run_lock(tmp_path / "run"):  # no wait: must not raise
        assert read_holder(tmp_path / "run")["pid"] == os.getpid()


def test_lock_is_reentrant_within_a_process(tmp_path):
    """The simulation's ServerApp runs in a thread of `knot federated run`, which holds the
    lock already: taking it again, from any thread, must not deadlock."""
    folder = tmp_path / "run"
    seen = []

    def from_a_thread() -> None:
        with run_lock(folder):
            seen.append(read_holder(folder)["pid"])

    with run_lock(folder):
        with run_lock(folder):
            pass
        worker = threading.Thread(target=from_a_thread)
        worker.start()
        worker.join(5)
        assert seen == [os.getpid()] and not worker.is_alive()
        assert read_holder(folder)["pid"] == os.getpid()  # inner exits did not release it
    assert read_holder(folder) == {}  # released by the outermost exit


def test_a_seed_folder_is_guarded_by_its_multi_seed_run(holder, tmp_path):
    out = tmp_path / "run"
    holder(out)  # e.g. `knot run` with seeds: [1, 2]
    assert lock_folder(out / "seed-1") == out
    res = runner.invoke(app, ["report", str(out / "seed-1")])
    assert res.exit_code == 2 and "in use by pid" in res.output


@pytest.mark.parametrize(
    "command",
    [["run"], ["train"], ["soft-labels"], ["bias"], ["distill"], ["evaluate"], ["report"],
     ["data", "prepare"], ["federated", "run"]],
)
def test_every_command_writing_a_run_folder_offers_wait(command):
    res = runner.invoke(app, [*command, "--help"])
    assert res.exit_code == 0 and "--wait" in res.output


# ---- item 5: --stages local on a fresh run uses --data-root ---------------------------


def test_stages_local_on_a_fresh_run_uses_the_data_root(case, tmp_path):
    cfg_path, root = case
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(cfg_path), "--out", str(out), "--data-root", str(root),
                              "--stages", "local", "--set", "local.epochs=1", "--set", "local.max_steps=1"])
    assert res.exit_code == 0, res.output
    assert RunLayout(out).manifest.is_file()
    assert all(has_checkpoint(RunLayout(out).teacher(d)) for d in ("books", "films"))


# ---- item 10: predict refuses empty texts ---------------------------------------------


@pytest.mark.parametrize("text", ["", "   \t"])
def test_predict_refuses_an_empty_text(tmp_path, text):
    res = runner.invoke(app, ["predict", str(tmp_path / "ckpt"), "great film", text])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"error: text 2 is empty{' (only whitespace)' if text else ''}: give a text to classify"
    ]


# ---- item 12: report on a multi-seed run folder ---------------------------------------


def test_report_on_a_multi_seed_run_aggregates_its_seeds(tmp_path):
    # Arrange: what `knot run` leaves with seeds [1, 2, 3] when seed 3 was killed
    out = tmp_path / "run"
    for seed, (fa, fb) in [(1, (0.60, 0.50)), (2, (0.30, 0.70))]:
        atomic_write_json(RunLayout(out).seed_run(seed).results_json, two_teacher_results(fa, fb))
    RunLayout(out).seed_run(3).root.mkdir()

    # Act
    res = runner.invoke(app, ["report", str(out)])

    # Assert
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "# Report: run (2 seeds)" in report and "2 run(s) (mean ± std over seeds)" in report
    assert "seed-1" in report and "seed-2" in report and "seed-3" not in report


def test_report_on_a_multi_seed_run_without_results_says_what_to_do(tmp_path):
    RunLayout(tmp_path / "run").seed_run(1).root.mkdir(parents=True)
    res = runner.invoke(app, ["report", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert "no seed has results yet (seed-1)" in res.output and "knot run CONFIG" in res.output

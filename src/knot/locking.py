"""Exclusive locks: one build of a feature-cache entry, one command per run folder.

Both rest on :func:`file_lock`, an exclusive ``fcntl.flock`` on a lock file. The kernel
drops a flock when its process dies, so a run killed with ``kill -9`` leaves a lock file
that blocks nobody. Where ``fcntl`` is missing (Windows) the locks are no-ops and
:func:`run_lock` warns once.

:func:`run_lock` guards a run folder for a whole command (``knot run``, ``knot train``,
...): a second command on the same folder fails at once with :class:`RunLockedError`,
which names the holder (pid, command line, start time, read from ``RUN/.lock``), or
waits for it with ``wait=True``. The lock is re-entrant within one process, so a command
that holds it may call code that takes it again (the Flower simulation runs the
ServerApp in a thread of the command's process). A seed folder of a multi-seed run
(``OUT/seed-<s>``, beside ``OUT/.lock``) is guarded by the lock of ``OUT``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RunLockedError", "file_lock", "lock_folder", "read_holder", "run_lock"]

#: The lock file inside a run folder.
LOCK_NAME = ".lock"

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_guard = threading.Lock()
_held: dict[str, list] = {}  # realpath of a run folder -> [fd, depth] (this process)
_warned = False


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


def _try_flock(fd: int, wait: bool) -> bool:
    """Take an exclusive flock on ``fd``; with ``wait=False`` return False if it is held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing), waiting for it.

    A no-op where ``fcntl`` is missing.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _try_flock(fd, wait=True)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_folder(folder: str | os.PathLike) -> Path:
    """The folder whose lock guards ``folder``: the parent of a multi-seed run's seed
    folder (``OUT/seed-<s>`` when ``OUT/.lock`` exists), else ``folder`` itself."""
    folder = Path(folder)
    if re.fullmatch(r"seed--?\d+", folder.name) and (folder.parent / LOCK_NAME).exists():
        return folder.parent
    return folder


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    name = Path(argv[0]).name
    if name in ("cli.py", "__main__.py"):  # python -m knot.cli
        name = "knot"
    elif name == "-c":
        name = "python -c"
    return shlex.join([name, *argv[1:]])


def read_holder(folder: str | os.PathLike) -> dict:
    """What the holder of ``folder``'s lock wrote into it: ``pid``, ``command``,
    ``started``, ``host`` (an empty dict when unreadable, e.g. just being written)."""
    try:
        info = json.loads((lock_folder(folder) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(folder: Path) -> str:
    h = read_holder(folder)
    if not h:
        return f"{folder}: in use by another knot process (holder unknown: it is just starting)"
    host = f" on {h['host']}" if h.get("host") and h.get("host") != socket.gethostname() else ""
    return (
        f"{folder}: in use by pid {h.get('pid', '?')}{host} (`{h.get('command', '?')}`, "
        f"started {h.get('started', '?')})"
    )


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, *, wait: bool = False, poll: float = 0.2) -> Iterator[Path]:
    """Hold the exclusive lock of a run folder (``RUN/.lock``) for the ``with`` block.

    Parameters
    ----------
    folder : the run folder (created if missing); a seed folder of a multi-seed run is
        guarded by its parent's lock (see :func:`lock_folder`).
    wait : wait until the holder releases the lock, instead of failing at once.
    poll : seconds between tries while waiting.

    Yields
    ------
    Path : the folder whose lock is held.

    Raises
    ------
    RunLockedError
        Another process holds the lock and ``wait`` is False; the message names the
        folder and the holder's pid, command line and start time.
    """
    global _warned
    folder = lock_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        if not _warned:
            log.warning("no fcntl on this system: run folders are not locked; "
                        "do not run two commands on one folder at once")
            _warned = True
        yield folder
        return
    key = os.path.realpath(folder)
    announced = False
    while True:
        with _guard:
            if key in _held:  # this process holds it already (re-entrant, any thread)
                _held[key][1] += 1
                break
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
            if _try_flock(fd, wait=False):
                # The holder's details go into the lock file itself (not an atomic
                # rename, which would swap the locked inode): read by the next comer.
                info = {"pid": os.getpid(), "command": _command_line(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": socket.gethostname()}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
                _held[key] = [fd, 1]
                break
            os.close(fd)
        if not wait:
            raise RunLockedError(_describe(folder))
        if not announced:
            log.info("%s; waiting for it to finish", _describe(folder))
            announced = True
        time.sleep(poll)
    try:
        yield folder
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                fd = entry[0]
                os.ftruncate(fd, 0)  # no stale holder for the next reader
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

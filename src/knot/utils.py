"""Small shared helpers: atomic writes, hashing, seeding, device choice.

Everything that writes a file in knot goes through :func:`atomic_write_text`,
:func:`atomic_write_json`, :func:`atomic_path` or :func:`atomic_dir`, so an interrupted
run never leaves a half-written artefact behind: data is written to a temporary file (or
folder) beside the target and renamed over it. A failed write (a full disk, ...) removes
the temporary and raises :class:`knot.errors.WriteError`, one line naming the target. What
they write gets the modes ``open()``/``mkdir()`` would give under the umask
(:func:`follow_umask`), whatever the writer inside did (``tempfile`` and safetensors
create 0600 files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from knot.errors import WriteError

__all__ = [
    "atomic_path",
    "atomic_dir",
    "follow_umask",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "default_file_mode",
    "sha256_file",
    "sha256_json",
    "set_seed",
    "resolve_device",
]


def _write_error(target: Path, exc: Exception) -> WriteError | None:
    """``exc`` as a :class:`WriteError` naming ``target``; None when it is no I/O error.

    safetensors reports a full disk as ``SafetensorError: Error while serializing:
    IoError(Os { code: 28, ... })``, not as an ``OSError``: its code is read back.
    """
    if isinstance(exc, OSError):
        return WriteError(exc.errno, exc.strerror or str(exc), str(target))
    found = re.search(r"IoError\(Os \{ code: (\d+)", str(exc))
    if type(exc).__name__ == "SafetensorError" and found:
        code = int(found.group(1))
        return WriteError(code, os.strerror(code), str(target))
    return None


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Re-raise an I/O error of the body as a :class:`WriteError` naming ``target``."""
    try:
        yield
    except Exception as exc:
        error = _write_error(target, exc)
        if error is None:
            raise
        raise error from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success.

    The file gets the mode ``open()`` would give (:func:`follow_umask`), or 0600 with
    ``private`` (a secret such as a private key: never readable by others, whatever the
    umask; the writer must write into the yielded file, not replace it). On any error the
    temporary is removed and ``target`` is untouched; an I/O error (a full disk, ...:
    an ``OSError``, or safetensors' report of one) becomes a
    :class:`~knot.errors.WriteError` naming ``target``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "x.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (d / "x.txt").read_text()
    'hello'
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(target, exc) from None
    tmp = Path(name)
    try:
        with _writing(target):
            yield tmp
            if private:
                os.chmod(tmp, 0o600)  # mkstemp's mode; said again in case the writer changed it
            else:
                follow_umask(tmp)
            os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``.

    Everything in it gets the modes ``open()``/``mkdir()`` would give
    (:func:`follow_umask`). On an exception the temporary folder is removed and
    ``target`` is untouched (an I/O error becomes a :class:`~knot.errors.WriteError`
    naming ``target``). If the process dies between the two renames, the previous folder
    survives as ``.<name>.old`` beside ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _write_error(target, exc) from None
    try:
        with _writing(target):
            yield tmp
            follow_umask(tmp)
            old = target.parent / f".{target.name}.old"
            if old.exists():
                shutil.rmtree(old)
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode ``open()`` or
    ``mkdir()`` would have given it under the current umask (:func:`default_file_mode`).

    The one place knot sets modes: ``tempfile`` makes 0600 files and 0700 folders, and
    writers such as safetensors' ``save_file`` create their file afresh (0600), so the
    atomic writers call this on what was written before renaming it into place.
    """
    path = Path(path)
    file_mode, dir_mode = default_file_mode(), default_file_mode(directory=True)
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    for root, dirs, files in os.walk(path):
        os.chmod(root, dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode(directory: bool = False) -> int:
    """The mode ``open()`` (``directory=False``) or ``mkdir()`` would give a new file or
    folder under the current umask: 0o666 or 0o777 minus the umask.

    ``tempfile`` creates private files (0600) and folders (0700); the atomic writers give
    what they wrote this mode (:func:`follow_umask`) so that results stay as readable as an
    ordinary write makes them.
    """
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_write_json(target: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``target`` atomically (keys in insertion order)."""
    return atomic_write_text(target, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    what: str = "knot",
    missing: str | None = None,
) -> Any:
    """Read the JSON file ``path``; with ``format``, require a dict tagged ``"format": format``.

    Parameters
    ----------
    path : file to read
    format : the expected value of the file's ``"format"`` key, or None for any JSON
    what : how the error names the expected file (``"{path}: not a {what} file"``)
    missing : the hint after ``"{path}: "`` when the file does not exist

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Invalid JSON or UTF-8 (``"{path}: line N: invalid JSON (...)"``), or a format tag
        other than ``format``.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> _ = atomic_write_json(f, {"format": "knot-x", "n": 1})
    >>> read_json(f, "knot-x")["n"]
    1
    >>> read_json(f, "knot-y", what="knot y")
    Traceback (most recent call last):
    ...
    ValueError: ...r.json: not a knot y file
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {missing or 'file not found'}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: invalid JSON (not UTF-8 text)") from None
    if format is not None and (not isinstance(data, dict) or data.get("format") != format):
        raise ValueError(f"{path}: not a {what} file")
    return data


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of a JSON-serialisable object in canonical form (sorted keys).

    >>> sha256_json({"b": 1, "a": 2}) == sha256_json({"a": 2, "b": 1})
    True
    """
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str = "auto"):
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

"""Progress of long loops: a bar on a terminal, one log line per finished loop otherwise.

A progress bar redrawn with carriage returns is only readable on a terminal; in
``knot run ... > log 2>&1`` it fills the log with half-lines. :func:`progress` shows a
tqdm bar when stderr is a terminal and otherwise logs one line when the loop ends::

    train epoch 3/10: 1200 batches in 41 s (loss=0.4132, sps=29)

Every loop in knot that reports progress goes through it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["progress", "LogProgress"]

log = logging.getLogger(__name__)


def _plural(unit: str, n: float) -> str:
    if n == 1 or not unit:
        return unit
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


class LogProgress:
    """A progress "bar" for logs: counts updates and logs one line on :meth:`close`.

    >>> import logging
    >>> bar = LogProgress(total=3, desc="train epoch 1/2", unit="batch")
    >>> for _ in range(3):
    ...     bar.update()
    >>> bar.set_postfix(loss="0.5000")
    >>> bar.summary(elapsed=2.4)
    'train epoch 1/2: 3 batches in 2 s (loss=0.5000)'
    """

    def __init__(self, total: float | None = None, desc: str = "", unit: str = "it", *, quiet: bool = False):
        self.total, self.desc, self.unit, self.quiet = total, desc, unit, quiet
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = dict(kwargs)

    def summary(self, elapsed: float | None = None) -> str:
        elapsed = time.perf_counter() - self._start if elapsed is None else elapsed
        n = int(self.n) if float(self.n).is_integer() else self.n
        text = f"{self.desc}: {n} {_plural(self.unit, n)} in {elapsed:.0f} s"
        if self.postfix:
            text += " (" + ", ".join(f"{k}={v}" for k, v in self.postfix.items()) + ")"
        return text

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self.quiet:
                log.info("%s", self.summary())

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: float | None = None, desc: str = "", unit: str = "it", *, enabled: bool | None = None) -> Any:
    """A progress bar over a loop of ``total`` ``unit``\\ s: use as a context manager (or
    call ``close()``), ``update(n)`` per step, ``set_postfix(**values)`` optionally.

    Parameters
    ----------
    total, desc, unit : as tqdm's (``unit`` singular; the log line pluralises it)
    enabled : False: no output at all; True or None: a tqdm bar when stderr is a terminal,
        else one ``INFO`` log line when the loop ends (``"{desc}: {n} {unit}s in {t} s"``).
    """
    if enabled is False:
        return LogProgress(total, desc, unit, quiet=True)
    if sys.stderr is not None and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False)
    return LogProgress(total, desc, unit)

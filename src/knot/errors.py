"""Exceptions and the number check shared across knot's modules (no knot imports, so
anything may import it)."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["ConfigError", "WriteError", "parse_finite"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type or range."""


class WriteError(OSError):
    """A file could not be written (disk full, no permission, ...); the atomic writers of
    :mod:`knot.utils` raise it after removing their temporary, so no partial file is left.

    ``str()`` is one line naming the target: ``"<target>: could not write it (<reason>); no
    partial file was left"``. ``errno`` is the original error's.
    """

    def __str__(self) -> str:
        return f"{self.filename}: could not write it ({self.strerror}); no partial file was left"


def parse_finite(value: Any, where: str, *, error: type[ValueError] = ValueError) -> float:
    """``value`` (a number, or a string holding one) as a finite float.

    The one place knot turns a number it reads (a data file's score, mean, rating, order
    or gold weight; a config number; a number in a file read back) into a float. Python's
    ``float`` accepts ``"nan"``, ``"inf"``, ``"Infinity"`` and ``"1e999"`` (which
    overflows to ``inf``), and JSON readers yield ``NaN``/``Infinity`` as floats; all are
    rejected here, since a non-finite number only ever passes comparisons silently (every
    comparison with NaN is false) and turns later metrics into null.

    Parameters
    ----------
    value : real number (NumPy's too) or str
        Booleans are not numbers.
    where : str
        Names the value in the error: ``"file:line: column 'score'"`` or a config key.
    error : ValueError subclass
        The exception raised (:class:`ConfigError` for config values).

    Raises
    ------
    ValueError
        ``"{where}: expected a finite number, got {value!r}"``.

    >>> parse_finite(" 2.5 ", "a.csv:3: column 'score'")
    2.5
    >>> parse_finite("1e999", "a.csv:3: column 'score'")
    Traceback (most recent call last):
    ...
    ValueError: a.csv:3: column 'score': expected a finite number, got '1e999'
    """
    x = math.nan
    if isinstance(value, (numbers.Real, str)) and not isinstance(value, bool):
        try:
            x = float(value)
        except (ValueError, OverflowError):  # OverflowError: an int beyond the float range
            pass
    if not math.isfinite(x):
        raise error(f"{where}: expected a finite number, got {value!r}")
    return x

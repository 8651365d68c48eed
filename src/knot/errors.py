"""Exceptions shared across knot's modules (no knot imports, so anything may import it)."""

from __future__ import annotations

__all__ = ["ConfigError", "WriteError"]


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

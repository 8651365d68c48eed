"""Exceptions shared across knot's modules (no knot imports, so anything may import it)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type or range."""

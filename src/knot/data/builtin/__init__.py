"""Datasets shipped inside the package, so knot runs with no data folder.

A source path that starts with ``builtin:`` is read from this folder whatever the data
root (``{reader: vader, path: "builtin:vader/tweets_GroundTruth.txt.gz"}``), and
``data.root: builtin`` (or ``--data-root builtin``) makes the packaged folder the data
root itself. ``knot data list`` prints :data:`CATALOGUE`.

>>> resolve_builtin("builtin:vader/tweets_GroundTruth.txt.gz").is_file()
True
>>> resolve_builtin("vader/tweets_GroundTruth.txt.gz") is None
True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PREFIX", "ROOT_NAME", "CATALOGUE", "builtin_root", "resolve_builtin", "catalogue"]

#: Source-path prefix naming a packaged file.
PREFIX = "builtin:"
#: The value of ``data.root`` / ``--data-root`` that names the packaged folder.
ROOT_NAME = "builtin"

#: What is built in: name -> description, licence, citation file and domain prefixes.
CATALOGUE = {
    "vader": {
        "description": "VADER human-rated sentences (Hutto & Gilbert, ICWSM 2014): every rater's -4..+4 "
        "rating, 4 domains",
        "licence": "MIT",
        "citation": "vader/CITATION.md",
        "domains": {
            "tweets": 4200,
            "movieReviewSnippets": 10605,
            "amazonReviewSnippets": 3708,
            "nytEditorialSnippets": 5190,
        },
        "reader": "vader",
    },
}


def builtin_root() -> Path:
    """The folder holding the packaged datasets (inside the installed package)."""
    return Path(__file__).resolve().parent


def resolve_builtin(path: str) -> Path | None:
    """``builtin:REL`` -> the packaged file; any other path -> ``None``."""
    if not path.startswith(PREFIX):
        return None
    rel = path[len(PREFIX):].lstrip("/")
    return builtin_root() / rel


def catalogue() -> list[dict]:
    """One row per built-in dataset: name, domains with item counts, files, bytes on disk,
    licence and citation file (absolute path)."""
    root = builtin_root()
    rows = []
    for name, info in CATALOGUE.items():
        files = sorted(p for p in (root / name).iterdir() if p.suffix == ".gz")
        rows.append(
            {
                "name": name,
                "description": info["description"],
                "reader": info["reader"],
                "domains": dict(info["domains"]),
                "files": [f"{PREFIX}{name}/{p.name}" for p in files],
                "bytes": sum(p.stat().st_size for p in files),
                "licence": info["licence"],
                "licence_file": str(root / name / "LICENSE.txt"),
                "citation": str(root / info["citation"]),
            }
        )
    return rows

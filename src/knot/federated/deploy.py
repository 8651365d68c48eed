"""A Flower app folder for real processes (``flwr run APP_DIR CONNECTION``).

``flwr run`` needs a folder with a ``pyproject.toml`` that names the ServerApp and
ClientApp and holds the run config. :func:`write_app` writes one that points at knot's
installed apps (:mod:`knot.federated.server_app`, :mod:`knot.federated.client_app`), lists
no dependencies (nothing is installed at run time: knot must already be installed where
the SuperLink and SuperNodes run) and carries the resolved experiment config, the run
directory and the server's data root. Writing it needs no Flower.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from knot.utils import atomic_write_text

__all__ = ["app_pyproject", "write_app"]


def _toml_str(text: str) -> str:
    """A TOML string: multi-line literal when ``text`` allows it (readable YAML), else a
    basic string (JSON's escapes, as written here, are valid TOML escapes).

    >>> print(_toml_str("a: 1\\nb: 'x'\\n"))
    '''
    a: 1
    b: 'x'
    '''
    >>> _toml_str("one line")
    '"one line"'
    """
    text = str(text)
    q = "'" * 3
    printable = all(c in "\n\t" or (c.isprintable() and c != "\x7f") for c in text)
    if "\n" in text and q not in text and printable:
        return f"{q}\n{text}{'' if text.endswith(chr(10)) else chr(10)}{q}"
    return json.dumps(text, ensure_ascii=False)


def app_pyproject(cfg: Any, out: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
                  expected_clients: int | None = None, client_root: str | os.PathLike | None = None,
                  client_data_root: str | os.PathLike | None = None, launcher_holds_lock: bool = False) -> str:
    """The ``pyproject.toml`` text of the Flower app for ``cfg``.

    Run config keys: ``config`` (the resolved experiment YAML), ``out`` (absolute run
    directory), ``data-root`` (the server's data root, empty for ``KNOT_DATA`` / the
    config's ``data.root``), ``expected-clients`` (SuperNodes the server waits for; 0:
    one per local domain) and, for a simulation only (every client on this machine),
    ``client-root`` and ``client-data-root``: the clients' work folders and data root,
    which a SuperNode's node config overrides (empty: the node config or the defaults);
    ``launcher-holds-lock``: the command that submitted the run holds the run folder's
    lock (else the ServerApp takes it).
    """
    from knot import __version__

    return "\n".join(
        [
            "# Written by `knot federated app`: a Flower app that runs knot's federated teachers.",
            "# Nothing is installed at run time: knot[flower] must be installed where the",
            "# SuperLink and the SuperNodes run.",
            "[build-system]",
            'requires = ["hatchling"]',
            'build-backend = "hatchling.build"',
            "",
            "[project]",
            'name = "knot-federated"',
            f'version = "{__version__.split("+")[0]}"',
            'description = "KNOT federated teachers (knot.federated)"',
            'license = "MIT"',
            "dependencies = []",
            "",
            "[tool.flwr.app]",
            'publisher = "knot"',
            "",
            "[tool.flwr.app.components]",
            'serverapp = "knot.federated.server_app:app"',
            'clientapp = "knot.federated.client_app:app"',
            "",
            "[tool.flwr.app.config]",
            f"config = {_toml_str(cfg.to_yaml())}",
            f"out = {_toml_str(str(Path(out)))}",
            f"data-root = {_toml_str(str(data_root) if data_root else '')}",
            f"expected-clients = {int(expected_clients or 0)}",
            f"client-root = {_toml_str(str(client_root) if client_root else '')}",
            f"client-data-root = {_toml_str(str(client_data_root) if client_data_root else '')}",
            f"launcher-holds-lock = {'true' if launcher_holds_lock else 'false'}",
            "",
        ]
    )


def write_app(app_dir: str | os.PathLike, cfg: Any, out: str | os.PathLike, *,
              data_root: str | os.PathLike | None = None, **run_config: Any) -> Path:
    """Write ``app_dir/pyproject.toml`` (see :func:`app_pyproject`, which takes
    ``run_config``'s keywords); returns its path."""
    path = Path(app_dir) / "pyproject.toml"
    atomic_write_text(path, app_pyproject(cfg, out, data_root, **run_config))
    return path

"""The ``knot`` command line: one subcommand per pipeline stage.

Each command parses its options, loads the config (:func:`knot.config.load_config`) and
calls one stage function; user errors (a bad config, a missing or malformed data file)
are printed as one ``error:`` line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from knot import __version__

app = typer.Typer(
    name="knot",
    help=(
        "Multi-teacher knowledge distillation with optimal transport over label geometry.\n\n"
        "Stages: data prepare -> train (local, global) -> soft-labels -> bias -> distill -> "
        "evaluate -> report; `knot run` does them all."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and inspect the datasets of a config.", no_args_is_help=True)
app.add_typer(data_app, name="data")

log = logging.getLogger("knot")

# Options shared by the stage commands -------------------------------------------------
ConfigArg = typer.Argument(..., help="Experiment config (YAML), e.g. configs/sentiment-quick.yaml.")
OutOpt = typer.Option(None, "--out", help="Run directory (default: runs/<config name>).")
SetOpt = typer.Option(
    None, "--set", help="Override a config key, e.g. --set local.epochs=2 (repeatable)."
)
DataRootOpt = typer.Option(
    None,
    "--data-root",
    help="Folder the config's data paths are relative to (default: $KNOT_DATA, then data.root).",
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def load(config: Path, sets: Optional[List[str]]):
    """Load a config or exit with a one-line error naming the file and key."""
    from knot.config import ConfigError, load_config

    try:
        return load_config(config, sets)
    except ConfigError as exc:
        _fail(str(exc))


def run_dir(cfg, out: Optional[Path]) -> Path:
    return Path(out) if out is not None else Path("runs") / cfg.name


def guarded(fn, *args, **kwargs):
    """Call a stage; turn user errors (ValueError, FileNotFoundError, ...) into exit 2."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        _fail(str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}")


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    _setup_logging(verbose)
    if version:
        typer.echo(__version__)
        raise typer.Exit()


# ---- data (issue: data layer) -----------------------------------------------------------


# ---- train / predict (issue: teachers) --------------------------------------------------


# ---- soft-labels / bias / distill / evaluate (issue: distillation) ---------------------


# ---- run / report (issue: pipeline) -----------------------------------------------------


# ---- federated (issue: federated) -------------------------------------------------------


def main() -> None:  # console script entry point
    app()


if __name__ == "__main__":
    main()

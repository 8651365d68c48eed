"""The ``knot`` command line: one subcommand per pipeline stage.

Each command parses its options, loads the config (:func:`knot.config.load_config`) and
calls one stage method of a :class:`knot.pipeline.Run` (or ``knot.load`` for ``predict``); user errors (a bad config, a missing or malformed data file)
are printed as one ``error:`` line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import contextlib
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
cache_app = typer.Typer(
    help=(
        "Inspect or clear a frozen-encoder feature cache (model.encoder_mode: frozen). "
        "The folder is --dir when given, else $KNOT_CACHE; a run's own cache is RUN/features "
        "(e.g. --dir runs/sentiment-full/features)."
    ),
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")

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
WaitOpt = typer.Option(
    False, "--wait", help="If another knot command holds the run folder, wait for it to finish "
    "(default: fail at once, naming it)."
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


def open_run(config: Path, out: Optional[Path], sets: Optional[List[str]], data_root: Optional[Path] = None):
    """The :class:`knot.pipeline.Run` of a config file and ``--out`` (default runs/<name>)."""
    from knot.pipeline import Run

    cfg = load(config, sets)
    return Run(cfg, run_dir(cfg, out), data_root=data_root)


@contextlib.contextmanager
def locked(folder: Path, wait: bool):
    """Hold the run folder's lock (:func:`knot.locking.run_lock`) for the ``with`` block, or
    exit 2 naming the command that holds it."""
    from knot.locking import RunLockedError, run_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(folder, wait=wait))
        except RunLockedError as exc:
            _fail(f"{exc}; pass --wait to wait for it")
        except OSError as exc:
            _fail(f"{folder}: cannot lock the run folder ({exc})")
        yield


def guarded(fn, *args, **kwargs):
    """Call a stage; turn user errors (ValueError, FileNotFoundError, ...) into exit 2."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        _fail(str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}")


def federated_guarded(fn, *args, **kwargs):
    """Call a federated run as :func:`guarded` does; a failed round (too few clients) exits 1."""
    from knot.federated.core import FederatedError

    try:
        return guarded(fn, *args, **kwargs)
    except FederatedError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)


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


@data_app.command("prepare")
def data_prepare_cmd(
    config: Path = ConfigArg,
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    data_root: Optional[Path] = DataRootOpt,
    force: bool = typer.Option(False, "--force", help="Redo even if the prepared data is up to date."),
    wait: bool = WaitOpt,
) -> None:
    """Read, label-map, split and write the config's datasets to RUN_DIR/data.

    A no-op when neither the config's data section nor any source file changed.
    """
    from knot.data.prepare import format_summary

    run = open_run(config, out, sets, data_root)
    layout = run.layout
    with locked(layout.root, wait):
        prepared = guarded(run.prepare, force=force)
    manifest, reasons = prepared.manifest, prepared.changed
    if reasons:
        typer.echo(f"prepared {layout.data} ({'; '.join(reasons)})")
    else:
        typer.echo(f"{layout.data} is up to date (config and sources unchanged); nothing to do")
    typer.echo(format_summary(manifest))


@data_app.command("list")
def data_list_cmd() -> None:
    """List the datasets built into knot (usable with `builtin:` source paths, no data folder)."""
    from knot.data.builtin import catalogue

    for row in catalogue():
        typer.echo(f"{row['name']}: {row['description']}")
        typer.echo(f"  reader: {row['reader']}; licence: {row['licence']} ({row['licence_file']})")
        typer.echo(f"  cite: {row['citation']}")
        typer.echo(f"  size: {row['bytes'] / 2**20:.2f} MiB in {len(row['files'])} files")
        for domain, n in row["domains"].items():
            typer.echo(f"  {domain:<22} {n:>6} items  builtin:{row['name']}/{domain}_GroundTruth.txt.gz")


@data_app.command("show")
def data_show_cmd(
    config: Path = ConfigArg,
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    data_root: Optional[Path] = DataRootOpt,
) -> None:
    """Print the domains, splits and label distributions of the prepared data."""
    from knot.data.prepare import data_status, format_summary, read_manifest
    from knot.layout import RunLayout

    cfg = load(config, sets)
    layout = RunLayout(run_dir(cfg, out))
    manifest = guarded(read_manifest, layout.data)
    typer.echo(f"{layout.data} (prepared {manifest.get('created', '?')}, seed {manifest.get('seed')})")
    typer.echo(format_summary(manifest))
    try:
        reasons = data_status(cfg, layout, data_root)
    except (ValueError, OSError) as exc:  # sources not reachable: still show the table
        typer.echo(f"\n(could not compare with the sources: {exc})")
        return
    if reasons:
        typer.echo(f"\nstale: {'; '.join(reasons)}; run `knot data prepare {config}` again")


# ---- train / predict (issue: teachers) --------------------------------------------------


@app.command("train")
def train_cmd(
    config: Path = ConfigArg,
    role: str = typer.Option(
        ..., "--role", help="local: one teacher per local domain; global: the global model."
    ),
    domain: Optional[str] = typer.Option(
        None, "--domain", help="Train only this local domain's teacher."
    ),
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    resume: bool = typer.Option(
        False, "--resume", help="Continue each model after its last completed epoch."
    ),
    data_root: Optional[Path] = DataRootOpt,
    wait: bool = WaitOpt,
) -> None:
    """Train the local teachers or the global model (data is prepared first if needed)."""
    from knot.utils import atomic_write_text

    if role not in ("local", "global"):
        _fail(f"--role: expected local or global, got {role!r}")
    run = open_run(config, out, sets, data_root)
    with locked(run.root, wait):
        guarded(atomic_write_text, run.layout.config, run.cfg.to_yaml())
        if data_root is not None:  # the sources may have changed: a no-op when they did not
            guarded(run.prepare)
        result = guarded(run.train_teachers, role, domain, resume=resume).summary
    for name, info in result["models"].items():
        m = info["best_metrics"]
        shown = ", ".join(
            f"{k} {m[k]:.4f}" for k in ("macro_f1", "accuracy", "semantic_distance") if k in m
        )
        typer.echo(
            f"{name}: best epoch {info['best_epoch']} ({shown}) -> {info['checkpoint']}"
        )


@app.command("predict")
def predict_cmd(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint folder (or a training folder such as RUN/teachers/<domain>)."
    ),
    texts: Optional[List[str]] = typer.Argument(None, help="Texts to classify (none may be empty)."),
    file: Optional[Path] = typer.Option(
        None, "--file", help="A UTF-8 text file, one text per line (blank lines skipped)."
    ),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda[:N] or mps."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Print each text's label, class probabilities and expected coordinate."""
    import json

    import numpy as np

    from knot.api import load as load_predictor

    items = list(texts or [])
    for i, text in enumerate(items, 1):
        if not text.strip():
            _fail(f"text {i} is empty{' (only whitespace)' if text else ''}: give a text to classify")
    if file is not None:
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"{file}: cannot read ({exc})")
        kept = [line for line in lines if line.strip()]
        if len(kept) < len(lines):
            log.info("%s: skipped %d blank line(s)", file, len(lines) - len(kept))
        items += kept
    if not items:
        _fail("nothing to predict: give texts or --file")
    predictor = guarded(load_predictor, checkpoint, device)
    # a frozen-encoder checkpoint names its encoder: built here, fingerprint checked
    probs = guarded(predictor.predict_proba, items, batch_size=batch_size)  # (N, K)
    expected = probs @ np.asarray(predictor.coords, dtype=np.float64)  # (N, D)
    labels = predictor.labels
    for text, p, e in zip(items, probs, expected):
        label = labels[int(p.argmax())]
        coord = [round(float(x), 4) for x in e]
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "text": text,
                        "label": label,
                        "probs": {lab: round(float(v), 6) for lab, v in zip(labels, p)},
                        "expected_coord": coord,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            shown = " ".join(f"{lab}:{v:.3f}" for lab, v in zip(labels, p))
            c = coord[0] if len(coord) == 1 else coord
            snippet = text if len(text) <= 60 else text[:57] + "..."
            typer.echo(f"{label}\t{shown}\tE[coord]={c}\t{snippet}")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="A knot checkpoint (teacher, global, student) or training folder."),
    out: Path = typer.Option(..., "--out", help="The folder to write (model.onnx, config.json, tokenizer, README.md)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx; its measured quality cost is "
                              "printed and written into the model card."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
) -> None:
    """Export a checkpoint to ONNX with its tokenizer, config and model card (see knot.export)."""
    from knot.export import export_checkpoint

    try:
        res = guarded(export_checkpoint, checkpoint, out, fmt=fmt, force=force, quantize="int8" if int8 else None)
    except ImportError as exc:
        _fail(str(exc))
    typer.echo(f"exported {checkpoint} -> {res['out']} (onnxruntime vs torch on probe texts: max abs "
               f"{res['parity_max_abs']:.1e})")
    for name, d in (res["int8"] or {}).items():
        typer.echo(f"int8 vs fp32 on {name}: argmax agreement {d['agreement']:.4f}, accuracy {d['accuracy']:+.4f}, "
                   f"macro-F1 {d['macro_f1']:+.4f}, SD {d['semantic_distance']:+.4f}")


# ---- feature cache (issue 12: frozen-encoder fast path) -------------------------------

CacheDirOpt = typer.Option(
    None,
    "--dir",
    help="Cache folder (default: $KNOT_CACHE). A run's own cache is RUN/features, e.g. runs/<name>/features.",
)


def _cache_dir(dir: Optional[Path]) -> Path:
    import os

    from knot.features import CACHE_ENV

    if dir is not None:
        return dir
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    _fail(f"no cache folder: pass --dir (a run's cache is runs/<name>/features) or set {CACHE_ENV}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache_app.command("info")
def cache_info_cmd(dir: Optional[Path] = CacheDirOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the cache's entries (largest first): key, texts, kind, encoder, size."""
    import json

    from knot.features import cache_info

    root = _cache_dir(dir)
    entries = cache_info(root)
    if as_json:
        typer.echo(json.dumps({"dir": str(root), "entries": entries}, indent=2))
        return
    total = sum(e["bytes"] for e in entries)
    typer.echo(f"{root}: {len(entries)} entries, {_size(total)}")
    for e in entries:
        if not e["complete"]:
            typer.echo(f"  {e['key'][:12]}  incomplete ({e.get('error', 'interrupted build, resumable')})  {_size(e['bytes'])}")
            continue
        typer.echo(
            f"  {e['key'][:12]}  {e.get('name') or '-'}  n={e.get('n')}  {e.get('kind')}  "
            f"{e.get('source')}/{e.get('layers')} layers  max_length={e.get('max_length')}  {_size(e['bytes'])}"
        )


@cache_app.command("clear")
def cache_clear_cmd(
    dir: Optional[Path] = CacheDirOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete every entry of the cache (entry folders only; nothing else in the folder)."""
    from knot.features import cache_clear, cache_info

    root = _cache_dir(dir)
    n = len(cache_info(root))
    if n and not yes and not typer.confirm(f"delete {n} cache entries in {root}?"):
        raise typer.Exit(code=1)
    deleted = guarded(cache_clear, root)
    typer.echo(f"{root}: deleted {deleted} entries")


# ---- soft-labels / bias / distill / evaluate (issue: distillation) ---------------------


@app.command("soft-labels")
def soft_labels_cmd(
    config: Path = ConfigArg,
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    wait: bool = WaitOpt,
) -> None:
    """Teachers label the transfer set: soft labels for its train and val splits.

    Every teacher (each local one, then the global model) predicts class probabilities;
    written to RUN/soft_labels/{train,val}.safetensors + .json.
    """
    run = open_run(config, out, sets)
    with locked(run.root, wait):
        summary = guarded(run.soft_labels).summary
    for split, info in summary["splits"].items():
        typer.echo(f"{split}: {info['n']} texts x {len(summary['teachers'])} teachers -> {run.layout.soft_labels}")
        for name, m in (info.get("teacher_metrics") or {}).items():
            typer.echo(f"  {name}: accuracy {m.get('accuracy', float('nan')):.4f}, "
                       f"macro-F1 {m.get('macro_f1', float('nan')):.4f} (vs gold, report only)")


@app.command("bias")
def bias_cmd(
    config: Path = ConfigArg,
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    wait: bool = WaitOpt,
) -> None:
    """Measure each teacher's distribution bias on random-token inputs.

    The predicted-class distribution on bias.n_samples seeded inputs of bias.length random
    vocabulary tokens; written to RUN/soft_labels/bias.json and printed as a table.
    """
    from knot.soft_labels import bias_table

    run = open_run(config, out, sets)
    with locked(run.root, wait):
        result = guarded(run.bias).summary
    typer.echo(bias_table(result))


@app.command("distill")
def distill_cmd(
    config: Path = ConfigArg,
    loss: Optional[str] = typer.Option(
        None, "--loss", help="A registered distillation loss (knot.losses.available_losses(), e.g. ot or entropy): "
        "train the configured students with this loss (a default one named after the loss when none is configured)."
    ),
    method: Optional[List[str]] = typer.Option(
        None, "--method", help="Train only this distill.methods entry (repeatable; default: all)."
    ),
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue each student after its last completed epoch."),
    wait: bool = WaitOpt,
) -> None:
    """Distil students from the soft labels, one per distill.methods entry.

    Each student starts from the global model (distill.init: global) or from scratch and
    is written to RUN/students/<method>/.
    """
    if loss is not None:
        from knot.losses import available_losses

        if loss not in available_losses():
            _fail(f"--loss: expected one of {', '.join(available_losses())}, got {loss!r}")
    run = open_run(config, out, sets)
    with locked(run.root, wait):
        result = guarded(run.distill, method or None, loss=loss, resume=resume).summary
    for name, info in result["students"].items():
        best = info["best_metrics"]
        before = info["initial_val"].get("loss")
        after = best.get("loss")
        shown = f"val loss {before:.4f} -> {after:.4f}" if before is not None and after is not None else ""
        typer.echo(f"{name}: best epoch {info['best_epoch']} {shown} -> {info['checkpoint']}")


@app.command("evaluate")
def evaluate_cmd(
    config: Path = ConfigArg,
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    wait: bool = WaitOpt,
) -> None:
    """Evaluate every model of the run on every test set.

    Teachers, the global model and the students on each local test set, the global test
    set and the union of the local ones; written to RUN/results.json and RUN/results.md.
    """
    from knot.evaluation import render_markdown

    run = open_run(config, out, sets)
    with locked(run.root, wait):
        results = guarded(run.evaluate).summary
    typer.echo(render_markdown(results))



# ---- run / report (issue: pipeline) -----------------------------------------------------


@app.command("run")
def run_cmd(
    config: Path = ConfigArg,
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    data_root: Optional[Path] = DataRootOpt,
    stages: Optional[str] = typer.Option(
        None,
        "--stages",
        help="Comma-separated stages to run: prepare, local, global, soft-labels, bias, distill, "
        "evaluate, report (default: all). Finished stages are skipped either way.",
    ),
    force: bool = typer.Option(False, "--force", help="Rerun the selected stages even if up to date."),
    wait: bool = WaitOpt,
) -> None:
    """Run the whole experiment (or resume it): prepare -> teachers -> soft labels -> bias ->
    distillation -> evaluation -> report. Rerunning skips the stages whose inputs did not change."""
    run = open_run(config, out, sets, data_root)
    out_dir = run.root
    selected = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    with locked(out_dir, wait):  # the top folder: a multi-seed run's seed-*/ are inside
        guarded(run.run, selected, force=force)
    report = out_dir / "report.md"
    typer.echo(f"run directory: {out_dir}")
    if report.is_file():
        typer.echo(f"report: {report}")
    results = out_dir / "results.md"
    if results.is_file():
        typer.echo(results.read_text(encoding="utf-8"))


@app.command("report")
def report_cmd(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories (several: aggregated as seeds)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where report.md and plots/ go (default: the first run directory)."),
    wait: bool = WaitOpt,
) -> None:
    """Write report.md with the results table and plots for one run, or mean +- std over several.

    A multi-seed run directory (the one `knot run` made, with seed-*/ inside) counts as its seeds.
    """
    from knot.reporting import report_runs, write_report

    layouts = guarded(report_runs, run_dirs)
    target = out or run_dirs[0]
    title = run_dirs[0].name
    if len(run_dirs) == 1 and len(layouts) > 1:
        title += f" ({len(layouts)} seeds)"
    with locked(target, wait):
        path = guarded(write_report, layouts, target, title=title)
    typer.echo(f"report: {path}")


# ---- federated (issue: federated) -------------------------------------------------------

federated_app = typer.Typer(
    help="Federated teachers: each local teacher stays with its owner (a Flower client) and "
    "sends only soft labels on the public transfer set.",
    no_args_is_help=True,
)
app.add_typer(federated_app, name="federated")


def _need_flower() -> None:
    from knot.federated import flower_available

    if not flower_available():
        _fail('Flower is not installed: pip install "knot[flower]" (or run with --in-process)')


def _federated_summary(run: Path) -> None:
    from knot.federated.core import read_status
    from knot.layout import RunLayout
    from knot.utils import read_json

    status = read_status(run)
    rounds = sorted(RunLayout(run).federated.glob("round-*.json"))
    if rounds:
        info = read_json(rounds[-1])
        typer.echo(f"round {info['round']}: teachers from {', '.join(info['clients']) or 'no client'}")
        for e in info.get("excluded", []):
            typer.echo(f"  excluded {e.get('client') or 'node ' + str(e['node'])}: {e['reason']}")
        for node in info.get("silent", []):
            typer.echo(f"  skipped node {node}: no answer within {info.get('timeout')} s")
    typer.echo(f"status: {status['status']}  run directory: {run}")
    results = run / "results.md"
    if results.is_file():
        typer.echo(results.read_text(encoding="utf-8"))


@federated_app.command("run")
def federated_run_cmd(
    config: Path = ConfigArg,
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    data_root: Optional[Path] = DataRootOpt,
    in_process: bool = typer.Option(
        False, "--in-process", help="Call the clients directly in this process (no Flower needed)."
    ),
    clients: Optional[int] = typer.Option(
        None, "--clients", min=1, help="SuperNodes to simulate (default: one per local domain; "
        "extra nodes own no domain, answer with an error and are excluded)."
    ),
    wait: bool = WaitOpt,
) -> None:
    """Run the experiment federated, on Flower's simulation engine (one client per local domain).

    Each client trains its teacher on its own domain and returns soft labels on the transfer
    set; the server trains the global model, distils the students and evaluates them into
    RUN_DIR, like `knot run`. The simulation is `flwr run` against a local simulation
    SuperLink (TLS on loopback); its logs go to RUN_DIR/federated/local. Exits 1 when the
    round or the server fails.
    """
    from knot.federated.core import run_in_process
    from knot.layout import RunLayout

    cfg = load(config, sets)
    out_dir = run_dir(cfg, out).resolve()
    if in_process and clients is not None:
        _fail("--clients is for the Flower simulation, not --in-process")
    if not in_process:
        _need_flower()
    # held for the whole run; the ServerApp (another process under Flower) is told so
    with locked(out_dir, wait):
        if in_process:
            federated_guarded(run_in_process, cfg, RunLayout(out_dir), data_root=data_root)
        else:
            from knot.federated.flower import run_simulation

            federated_guarded(run_simulation, cfg, out_dir, data_root=data_root, num_clients=clients, holds_lock=True)
    _federated_summary(out_dir)


@federated_app.command("local")
def federated_local_cmd(
    config: Path = ConfigArg,
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    data_root: Optional[Path] = DataRootOpt,
    clients: Optional[int] = typer.Option(
        None, "--clients", min=1, help="SuperNode processes (default: one per local domain; "
        "extra nodes own no domain, answer with an error and are excluded)."
    ),
    certs: Optional[Path] = typer.Option(
        None, "--certs", help="Folder with ca.crt, server.pem, server.key (`knot federated certs`); "
        "default: a throwaway one in RUN/federated/local/certs."
    ),
    keys: Optional[Path] = typer.Option(
        None, "--keys", help="Folder of SuperNode keys (KEYS/<domain>, made when missing): the SuperLink "
        "admits only these nodes. Default: RUN/federated/local/keys."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="No TLS and no node authentication: local experiments only."
    ),
    wait: bool = WaitOpt,
) -> None:
    """Run the experiment on real Flower processes on this machine: a SuperLink and one
    SuperNode per local domain, each its own process on loopback with its own work dir
    (RUN/federated/clients/<domain>) and feature cache; TLS and SuperNode authentication
    unless --insecure. Every process is stopped at the end. Exits 1 when the run fails.
    """
    from knot.federated.local import INSECURE_WARNING, run_local, write_certs
    from knot.layout import RunLayout

    cfg = load(config, sets)
    out_dir = run_dir(cfg, out).resolve()
    _need_flower()
    if insecure and (certs or keys):
        _fail("--insecure drops TLS and node keys: give it without --certs/--keys")
    if insecure:
        typer.secho(f"WARNING: {INSECURE_WARNING}", fg=typer.colors.YELLOW, bold=True, err=True)
    work = RunLayout(out_dir).federated / "local"
    with locked(out_dir, wait):
        if not insecure:
            certs = certs or guarded(write_certs, work / "certs")["ca"].parent
            keys = keys or work / "keys"
        federated_guarded(run_local, cfg, out_dir, data_root=data_root, clients=clients, certs=certs, keys=keys,
                          insecure=insecure, work=work, holds_lock=True)
    _federated_summary(out_dir)


@federated_app.command("certs")
def federated_certs_cmd(
    folder: Path = typer.Argument(..., help="Folder to write ca.crt, ca.key, server.pem, server.key into."),
    host: Optional[List[str]] = typer.Option(
        None, "--host", help="Host name or IP address the certificate is for (repeat; default 127.0.0.1 and localhost)."
    ),
    days: int = typer.Option(30, "--days", min=1, help="Days the certificates stay valid."),
) -> None:
    """Make a self-signed CA and a SuperLink certificate (for loopback tests and demos).

    The SuperLink uses ca.crt, server.pem and server.key; every SuperNode and `flwr` get
    ca.crt only. For real machines use a certificate from your organisation's CA for the
    SuperLink's host name, under the same names.
    """
    from knot.federated.local import write_certs

    paths = guarded(write_certs, folder, tuple(host or ("127.0.0.1", "localhost")), days)
    typer.echo(f"CA {paths['ca']} (give to every SuperNode); server {paths['cert']} + {paths['key']} (SuperLink)")


@federated_app.command("keys")
def federated_keys_cmd(
    folder: Path = typer.Argument(..., help="Folder to write the key pair into."),
    name: str = typer.Argument(..., help="The node's name (its local domain)."),
) -> None:
    """Make a SuperNode's authentication key pair: FOLDER/NAME (private, stays with the data
    owner) and FOLDER/NAME.pub (sent to the operator, who registers it with
    `flwr supernode register FOLDER/NAME.pub`)."""
    from knot.federated.local import write_node_key

    priv, pub = guarded(write_node_key, folder, name)
    typer.echo(f"private key {priv} (keep it); public key {pub} (send it to the operator)")


@federated_app.command("app")
def federated_app_cmd(
    config: Path = ConfigArg,
    app_dir: Path = typer.Argument(..., help="Folder to write the Flower app (pyproject.toml) into."),
    out: Optional[Path] = OutOpt,
    sets: Optional[List[str]] = SetOpt,
    data_root: Optional[Path] = DataRootOpt,
) -> None:
    """Write a Flower app folder for `flwr run` on real processes (SuperLink + SuperNodes).

    Its pyproject.toml names knot's ServerApp and ClientApp and carries the resolved config,
    the run directory and the server's data root as run config; it installs nothing.
    """
    from knot.federated.deploy import write_app

    cfg = load(config, sets)
    out_dir = run_dir(cfg, out).resolve()
    path = guarded(write_app, app_dir, cfg, out_dir, data_root=data_root.resolve() if data_root else None)
    typer.echo(f"wrote {path}; the server writes to {out_dir}")


@federated_app.command("status")
def federated_status_cmd(
    run: Path = typer.Argument(..., help="Run directory of a federated run."),
    wait: float = typer.Option(0.0, "--wait", help="Wait up to this many seconds for the run to finish."),
) -> None:
    """Print a federated run's status; exit 0 only when it finished ok.

    `flwr run` exits 0 even when the ServerApp fails: check the run with this instead.
    Exit codes: 0 ok, 1 failed or still running, 2 no federated run there.
    """
    import time

    from knot.federated.core import read_status

    deadline = time.monotonic() + wait
    while True:
        try:
            status = read_status(run)
        except FileNotFoundError as exc:
            status = None
            if time.monotonic() >= deadline:
                _fail(str(exc))
        except ValueError as exc:
            _fail(str(exc))
        if status is not None and status["status"] != "running":
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    if status["status"] == "ok":
        _federated_summary(run)
        return
    typer.secho(f"{status['status']}: {status.get('error') or ''}".rstrip(": "), err=True,
                fg=typer.colors.RED if status["status"] == "failed" else typer.colors.YELLOW)
    raise typer.Exit(code=1)


def main() -> None:  # console script entry point
    app()


if __name__ == "__main__":
    main()

"""Flower adapter: records <-> requests/replies, the Grid transport, the apps, the simulation.

A thin layer over :mod:`knot.federated.core` (needs the ``flower`` extra:
``pip install "knot[flower]"``). It only translates: a :class:`~knot.federated.core.TeacherRequest`
becomes a Flower ``Message`` of type :data:`MESSAGE_TYPE` whose ``RecordDict`` holds

* ``knot.request`` (ConfigRecord): protocol, round, the experiment config as JSON, and
  the transfer reference (domain, splits, sizes, text hashes) — no texts;

and a :class:`~knot.federated.core.TeacherReply` comes back as

* ``knot.reply`` (ConfigRecord): protocol, client id, number of private examples,
  checkpoint hash, split names;
* ``knot.soft_labels`` (ArrayRecord): one float32 ``(N, K)`` array per transfer split;
* ``knot.bias`` (ArrayRecord): ``distribution`` and ``mean_probs``, ``(K,)`` each;
* ``knot.metrics`` (MetricRecord): the teacher's validation/test metrics.

No model parameters and no texts ever travel. A client that fails answers with a Flower
``Error`` message, which the server logs and excludes.

Settings: :func:`make_server_app` / :func:`make_client_app` take them as arguments (the
simulation of ``knot federated run``); the module-level apps of
:mod:`knot.federated.server_app` and :mod:`knot.federated.client_app` read them from the
run config (``config``: the experiment's YAML text, ``out``: the run directory,
``data-root``) and each SuperNode's node config (``domain``, ``data-root``, ``work-dir``;
without ``domain`` the node's ``partition-id`` picks the local domain).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from knot.federated.core import (
    TeacherReply,
    TeacherRequest,
    TransferRef,
    client_domain,
    handle_request,
    run_server,
)
from knot.layout import RunLayout
from knot.locking import run_lock

__all__ = [
    "MESSAGE_TYPE",
    "request_to_record",
    "record_to_request",
    "reply_to_record",
    "record_to_reply",
    "FlowerTransport",
    "make_client_app",
    "make_server_app",
    "run_simulation",
]

log = logging.getLogger(__name__)

#: Flower message type of a round's request (a query: clients return data, not weights).
MESSAGE_TYPE = "query.knot_teacher"
#: Error code of a client's failure reply.
CLIENT_FAILED = 1
#: Flower's default message time-to-live, seconds (``flwr.app.DEFAULT_TTL`` in recent versions).
_FLOWER_TTL = 43200.0
#: Test hook, inert unless :data:`TEST_HOOKS_ENV` is ``1`` in the ClientApp's environment:
#: ``KNOT_TEST_FAULT=hang`` makes the ClientApp never answer (a stuck client), so tests can
#: exercise the round's timeout with real processes (tests/test_federated_local.py).
TEST_FAULT_ENV = "KNOT_TEST_FAULT"
TEST_HOOKS_ENV = "KNOT_TEST_HOOKS"


# ---------------------------------------------------------------------------
# converters
# ---------------------------------------------------------------------------


def request_to_record(request: TeacherRequest) -> RecordDict:
    """A request as Flower records (one ConfigRecord, ``knot.request``)."""
    t = request.transfer
    return RecordDict(
        {
            "knot.request": ConfigRecord(
                {
                    "protocol": request.protocol,
                    "round": int(request.round),
                    "config": json.dumps(request.config, sort_keys=True),
                    "transfer.domain": t.domain,
                    "transfer.splits": list(t.splits),
                    "transfer.num_examples": [int(n) for n in t.num_examples],
                    "transfer.texts_sha256": list(t.texts_sha256),
                    "transfer.data_hash": t.data_hash or "",
                }
            )
        }
    )


def _get(record: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in record:
        raise ValueError(f"{what}: missing {key!r}")
    return record[key]


def record_to_request(content: RecordDict) -> TeacherRequest:
    """The request in a message's content; ``ValueError`` naming what is missing or malformed."""
    if "knot.request" not in content:
        raise ValueError(f"message has no 'knot.request' record (records: {', '.join(content) or 'none'})")
    rec = content["knot.request"]
    what = "knot.request"
    try:
        config = json.loads(_get(rec, "config", what))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: config is not valid JSON ({exc.msg})") from None
    transfer = TransferRef(
        domain=str(_get(rec, "transfer.domain", what)),
        splits=list(_get(rec, "transfer.splits", what)),
        num_examples=list(_get(rec, "transfer.num_examples", what)),
        texts_sha256=list(_get(rec, "transfer.texts_sha256", what)),
        data_hash=str(rec.get("transfer.data_hash") or "") or None,
    )
    return TeacherRequest(
        round=int(_get(rec, "round", what)),
        config=config,
        transfer=transfer,
        protocol=str(_get(rec, "protocol", what)),
    )


def reply_to_record(reply: TeacherReply) -> RecordDict:
    """A reply as Flower records (see the module docstring)."""
    records: dict[str, Any] = {
        "knot.reply": ConfigRecord(
            {
                "protocol": reply.protocol,
                "client_id": reply.client_id,
                "num_examples": int(reply.num_examples),
                "checkpoint_sha256": reply.checkpoint_sha256 or "",
                "splits": list(reply.soft_labels),
            }
        ),
        "knot.soft_labels": ArrayRecord(
            {s: Array(np.ascontiguousarray(a)) for s, a in reply.soft_labels.items()}
        ),
        "knot.metrics": MetricRecord(
            {k: float(v) for k, v in reply.metrics.items() if isinstance(v, (int, float, np.number))}
        ),
    }
    if reply.bias is not None:
        records["knot.bias"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in reply.bias.items()})
    return RecordDict(records)


def record_to_reply(content: RecordDict) -> TeacherReply:
    """The reply in a message's content; ``ValueError`` naming what is missing or malformed.

    Arrays are returned as sent (shape and dtype); checking them is
    :func:`knot.federated.core.validate_reply`'s job.
    """
    for name in ("knot.reply", "knot.soft_labels"):
        if name not in content:
            raise ValueError(f"reply has no {name!r} record (records: {', '.join(content) or 'none'})")
    rec = content["knot.reply"]
    arrays = content["knot.soft_labels"]
    splits = list(_get(rec, "splits", "knot.reply"))
    missing = [s for s in splits if s not in arrays]
    if missing:
        raise ValueError(f"knot.soft_labels: no array for split(s) {missing}")
    bias = None
    if "knot.bias" in content:
        bias = {k: a.numpy() for k, a in content["knot.bias"].items()}
    metrics = dict(content["knot.metrics"]) if "knot.metrics" in content else {}
    return TeacherReply(
        client_id=str(_get(rec, "client_id", "knot.reply")),
        num_examples=_get(rec, "num_examples", "knot.reply"),
        soft_labels={s: arrays[s].numpy() for s in splits},
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        bias=bias,
        checkpoint_sha256=str(rec.get("checkpoint_sha256") or "") or None,
        protocol=str(_get(rec, "protocol", "knot.reply")),
    )


# ---------------------------------------------------------------------------
# server side
# ---------------------------------------------------------------------------


class FlowerTransport:
    """:class:`~knot.federated.core.Transport` over a Flower ``Grid``.

    ``nodes()`` waits up to ``connect_timeout`` seconds for ``expected`` SuperNodes to be
    connected (fewer is fine when time is up: the round decides if they are enough).
    """

    def __init__(self, grid: Grid, expected: int, connect_timeout: float, poll: float = 0.5):
        self.grid = grid
        self.expected = int(expected)
        self.connect_timeout = float(connect_timeout)
        self.poll = poll
        self._nodes: list[int] | None = None

    def nodes(self) -> list[str]:
        deadline = time.monotonic() + self.connect_timeout
        ids = sorted(self.grid.get_node_ids())
        while len(ids) < self.expected and time.monotonic() < deadline:
            time.sleep(self.poll)
            ids = sorted(self.grid.get_node_ids())
        if len(ids) < self.expected:
            log.warning("%d of %d client(s) connected within %g s", len(ids), self.expected, self.connect_timeout)
        self._nodes = ids
        return [str(i) for i in ids]

    def exchange(self, request: TeacherRequest, timeout: float | None) -> list[tuple[str, Any]]:
        """Push the request to every node, then pull replies every ``poll`` seconds until
        each node answered or ``timeout`` is up; returns ``(node, answer)`` pairs in arrival
        order (a node that answers twice appears twice; :func:`~knot.federated.core.run_round`
        keeps its first answer). A node that is stuck or was killed mid-round simply has
        no pair (silent), unless the SuperLink already declared it offline: that comes
        back as Flower's error reply, an Exception here."""
        ids = self._nodes if self._nodes is not None else sorted(self.grid.get_node_ids())
        content = request_to_record(request)
        # a message expires after its TTL (Flower's default: 12 h); keep it alive for the whole wait
        ttl = timeout + 60.0 if timeout is not None and timeout + 60.0 > _FLOWER_TTL else None
        messages = [Message(content, dst_node_id=i, message_type=MESSAGE_TYPE, ttl=ttl) for i in ids]
        pending = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        answers: list[tuple[str, Any]] = []
        seen: set[str] = set()
        while True:
            # only the unanswered requests: Flower's SuperLink stores one reply per request
            # and answers for a node it has declared offline with an error reply
            for msg in self.grid.pull_messages(sorted(pending)):
                if msg.metadata.message_id in seen:  # the same reply delivered again: not a new answer
                    continue
                seen.add(msg.metadata.message_id)
                pending.discard(msg.metadata.reply_to_message_id)
                answers.append((str(msg.metadata.src_node_id), _answer(msg)))
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                return answers
            time.sleep(self.poll if deadline is None else max(0.0, min(self.poll, deadline - time.monotonic())))


def _answer(msg: Message) -> Any:
    """A reply message as a :class:`~knot.federated.core.TeacherReply`, or the Exception
    that says why it is not one (the client's error, a malformed reply)."""
    if msg.has_error():
        return RuntimeError(msg.error.reason or f"error code {msg.error.code}")
    try:
        return record_to_reply(msg.content)
    except (ValueError, TypeError, KeyError) as exc:
        return ValueError(f"malformed reply: {exc}")


def _load_run_config(run_config: Mapping[str, Any]):
    """Experiment config from a run config's ``config`` (YAML text, or a path to a YAML file)."""
    import yaml

    from knot.config import ConfigError, ExperimentConfig, load_config

    text = str(run_config.get("config") or "")
    if not text.strip():
        raise ConfigError("run config: `config` (the experiment's YAML, or a path to it) is empty")
    if "\n" not in text and Path(text).expanduser().is_file():
        return load_config(Path(text).expanduser())
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"run config `config`: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("run config `config`: expected a YAML mapping (or a path to a YAML file)")
    return ExperimentConfig.from_dict(raw)


def make_server_app(
    cfg: Any = None,
    out: str | os.PathLike | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    expected_clients: int | None = None,
) -> ServerApp:
    """The ServerApp: one KNOT round over the grid, then soft labels, students, evaluation.

    With ``cfg`` and ``out`` given (the simulation), those are used; otherwise they come
    from the run config (``config``, ``out``, ``data-root``). The round waits (up to
    ``federated.connect_timeout``) for ``expected_clients`` SuperNodes (default: one per
    local domain).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = dict(context.run_config)
        config = cfg if cfg is not None else _load_run_config(run_cfg)
        run_dir = out if out is not None else run_cfg.get("out") or str(Path("runs") / config.name)
        root = data_root if data_root is not None else (run_cfg.get("data-root") or None)
        expected = expected_clients if expected_clients is not None else int(run_cfg.get("expected-clients") or 0)
        expected = expected or len(config.domains("local"))
        transport = FlowerTransport(grid, expected=expected,
                                    connect_timeout=config.federated.connect_timeout)
        # the run folder's lock, for the server's whole life, unless the command that
        # started these processes (`knot federated run|local`) holds it for the run
        with contextlib.ExitStack() as stack:
            if not run_cfg.get("launcher-holds-lock"):
                stack.enter_context(run_lock(run_dir))
            run_server(config, RunLayout(Path(run_dir)), transport, data_root=root)

    return app


# ---------------------------------------------------------------------------
# client side
# ---------------------------------------------------------------------------


def make_client_app(
    *,
    data_root: str | os.PathLike | None = None,
    client_root: str | os.PathLike | None = None,
) -> ClientApp:
    """The ClientApp: answers :data:`MESSAGE_TYPE` with :func:`~knot.federated.core.handle_request`.

    Node config (per SuperNode) first, then these arguments, then the run config's
    simulation keys (``client-data-root``, ``client-root``; empty for real deployments):
    ``domain`` (else ``partition-id`` picks the local domain), ``data-root`` (else the
    client's ``KNOT_DATA``, else the config's ``data.root``; never the server's data root)
    and ``work-dir`` (else ``client-root/<domain>``, else
    ``~/.cache/knot/federated/<name>/<domain>``).
    """
    app = ClientApp()

    @app.query("knot_teacher")
    def query(msg: Message, context: Context) -> Message:
        node = dict(context.node_config)
        run_cfg = dict(context.run_config)
        try:
            _test_fault()
            request = record_to_request(msg.content)
            cfg = request.experiment()
            pid = node.get("partition-id")
            domain = client_domain(cfg, domain=node.get("domain") or None,
                                   partition_id=int(pid) if pid is not None else None)
            root = node.get("data-root") or data_root or run_cfg.get("client-data-root") or None
            work = node.get("work-dir")
            if not work:
                base = client_root or run_cfg.get("client-root") or None
                base = Path(base) if base else Path.home() / ".cache" / "knot" / "federated" / cfg.name
                work = Path(base) / domain
            reply = handle_request(request, domain=domain, work_dir=Path(work), data_root=root)
            return Message(reply_to_record(reply), reply_to=msg)
        except Exception as exc:  # reported to the server, which excludes this client
            log.exception("client failed")
            return Message(Error(code=CLIENT_FAILED, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)

    return app


def _test_fault() -> None:
    """Act out :data:`TEST_FAULT_ENV` when the test hooks are on (:data:`TEST_HOOKS_ENV`);
    otherwise do nothing."""
    if os.environ.get(TEST_HOOKS_ENV) != "1" or not os.environ.get(TEST_FAULT_ENV):
        return
    fault = os.environ[TEST_FAULT_ENV]
    if fault != "hang":
        raise ValueError(f"{TEST_FAULT_ENV}={fault!r}: unknown test fault (known: hang)")
    log.warning("test hook %s=hang: this client never answers", TEST_FAULT_ENV)
    while True:  # until the process is killed
        time.sleep(60)


# ---------------------------------------------------------------------------
# simulation
# ---------------------------------------------------------------------------


def run_simulation(
    cfg: Any,
    out: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    client_root: str | os.PathLike | None = None,
    num_clients: int | None = None,
    holds_lock: bool = False,
) -> dict[str, Any]:
    """Run the federated experiment on Flower's Simulation Runtime the way Flower now
    recommends (``flwr run`` against a simulation SuperLink; ``flwr.simulation.run_simulation``
    is deprecated): :func:`knot.federated.local.run_local` with ``simulation=True``, one
    simulated SuperNode per local domain, each a Ray worker with ``federated.client_cpus``
    cores (rounded up) and one torch thread. The SuperLink serves TLS on loopback with a
    throwaway certificate made for the run (``RUN/federated/local/certs``).

    Node ``i`` owns the ``i``-th local domain; with ``num_clients`` above the number of
    local domains, the extra nodes own none, answer with an error and are excluded.
    Clients work in ``client_root/<domain>`` (default ``RUN/federated/clients``).

    Returns the run's status (``RUN/federated/status.json``). Raises
    :class:`~knot.federated.core.FederatedError` when the run did not finish with status
    ``ok``.
    """
    from knot.federated.local import run_local, write_certs

    work = RunLayout(Path(out)).federated / "local"
    certs = write_certs(work / "certs")["ca"].parent
    return run_local(cfg, out, data_root=data_root, client_root=client_root, clients=num_clients, certs=certs,
                     simulation=True, work=work, holds_lock=holds_lock)

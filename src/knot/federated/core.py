"""Federated teachers without an engine: messages, the client handler, the server round.

KNOT's setting is federated: each local teacher belongs to an owner who never shares
data or parameters. One round goes like this:

1. the server prepares the public transfer set and sends every client a
   :class:`TeacherRequest` (the round, the experiment's hyperparameters and a
   :class:`TransferRef`: which transfer splits to label, their sizes and text hashes);
2. each client (:func:`handle_request`) prepares its own private domain and the public
   transfer set from its own data root, trains (or reloads) its teacher with the same
   :func:`knot.teachers.train_teacher` as the in-process pipeline, and answers with a
   :class:`TeacherReply`: its client id (the local domain's name), the number of private
   training examples, soft labels ``(N, K)`` float32 for each transfer split, its
   distribution bias ``(K,)`` and metrics. Never parameters, never texts;
3. the server (:func:`run_round`) checks every reply (:func:`validate_reply`): a reply
   with the wrong shape, NaN or rows not summing to 1, or a number of private examples
   above ``federated.max_client_examples`` or other than the operator declared
   (``federated.client_examples``), is excluded and named in the log,
   a client that does not answer before the timeout is skipped, and the round fails
   with :class:`FederatedError` only when fewer than ``federated.min_clients`` valid
   replies arrive;
4. the server (:func:`run_server`) trains the global model, writes the same
   :class:`~knot.soft_labels.SoftLabels` artefact and ``bias.json`` as the in-process
   soft-label and bias stages, and runs the unchanged distillation and evaluation stages.

Nothing here imports Flower. The transport is a small protocol (:class:`Transport`):
:class:`InProcessTransport` calls the handlers directly (:func:`run_in_process`), and
:mod:`knot.federated.flower` sends the same request and replies as Flower messages.

Files in the run directory besides the usual stage outputs::

    RUN/federated/status.json     running | ok | failed, with the error; the clients used
                                  and every node excluded or silent, with the reason
    RUN/federated/round-1.json    who answered, who was excluded or silent and why, the
                                  clients' checked sizes and the teacher weights used
                                  (written with ``"status": "failed"`` when too few answered)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from knot.config import MAX_CLIENT_EXAMPLES, ExperimentConfig
from knot.data import load_split, read_manifest
from knot.data.prepare import run_prepare
from knot.features import encoding_delta, encoding_stats
from knot.distill import method_weights
from knot.layout import RunLayout
from knot.metrics import evaluate_probs
from knot.models import checkpoint_hash, load
from knot.run import RunContext, require_checkpoint, run_teachers, teacher_size, transfer_domain, transfer_hash
from knot.soft_labels import (
    SUM_TOL,
    SoftLabels,
    TeacherOutput,
    add_bias,
    assemble_soft_labels,
    bias_record,
    load_bias,
    predict_probs,
    teacher_bias,
    texts_hash,
)
from knot.teachers import train_teacher
from knot.utils import atomic_write_json, atomic_write_text, read_json, sha256_json

__all__ = [
    "PROTOCOL",
    "FederatedError",
    "TransferRef",
    "TeacherRequest",
    "TeacherReply",
    "RoundResult",
    "Transport",
    "InProcessTransport",
    "client_domain",
    "handle_request",
    "make_request",
    "model_sizes",
    "request_nbytes",
    "reply_nbytes",
    "communication_record",
    "validate_reply",
    "run_round",
    "write_soft_labels",
    "teacher_weight_record",
    "run_server",
    "local_handlers",
    "run_in_process",
    "read_status",
]

log = logging.getLogger(__name__)

#: Version tag carried by every request and reply; a mismatch excludes the reply.
PROTOCOL = "knot.federated/1"
STATUS_FORMAT = "knot.federated_status"
ROUND_FORMAT = "knot.federated_round"


class FederatedError(RuntimeError):
    """A federated round failed (too few valid replies, or the server stage failed).

    ``result``: the failed round's :class:`RoundResult` (who answered, who was excluded
    or silent and why), when the round itself failed.
    """

    def __init__(self, message: str, result: "RoundResult | None" = None):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------


@dataclass
class TransferRef:
    """Which public transfer texts the teachers label (a reference: never the texts).

    Parameters
    ----------
    domain : str
        The transfer domain's name in the experiment config.
    splits : list of str
        Its prepared splits to label, in order (``soft_labels.splits``).
    num_examples : list of int
        Number of texts per split (same order).
    texts_sha256 : list of str
        :func:`knot.soft_labels.texts_hash` of each split's texts, so a client can check
        it prepared exactly the server's texts.
    data_hash : str, optional
        Hash of the server's manifest entry for the transfer domain.
    """

    domain: str
    splits: list[str]
    num_examples: list[int]
    texts_sha256: list[str]
    data_hash: str | None = None

    def __post_init__(self) -> None:
        self.splits = [str(s) for s in self.splits]
        self.num_examples = [int(n) for n in self.num_examples]
        self.texts_sha256 = [str(h) for h in self.texts_sha256]
        if not (len(self.splits) == len(self.num_examples) == len(self.texts_sha256)):
            raise ValueError(
                f"transfer reference: {len(self.splits)} splits, {len(self.num_examples)} sizes and "
                f"{len(self.texts_sha256)} hashes (expected one of each per split)"
            )

    def size(self, split: str) -> int:
        return self.num_examples[self.splits.index(split)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TeacherRequest:
    """What the server asks every client in one round.

    Parameters
    ----------
    round : int
        Round number (1 for KNOT's single round).
    config : dict
        The experiment config as plain data (:meth:`knot.config.ExperimentConfig.to_dict`):
        the hyperparameters (``model``, ``local``, ``task``, ``seed``, ...) and the domain
        specifications each client reads its own data with.
    transfer : TransferRef
    protocol : str
    """

    round: int
    config: dict[str, Any]
    transfer: TransferRef
    protocol: str = PROTOCOL

    def experiment(self):
        """The validated :class:`~knot.config.ExperimentConfig` of this request."""
        return ExperimentConfig.from_dict(self.config)


@dataclass
class TeacherReply:
    """A client's answer: soft labels on the transfer texts, sizes and metrics only.

    Parameters
    ----------
    client_id : str
        The client's local domain (its teacher's name).
    num_examples : int
        Size of its private training split (for ``size`` teacher weights).
    soft_labels : dict of str -> ndarray, shape (N_split, K), float32
        One array per requested transfer split; row ``n`` is the teacher's class
        distribution for text ``n`` of that split.
    metrics : dict of str -> float
        The teacher's validation metrics (``val_*``) and metrics on its own test split
        (``test_*``), for the round's log.
    bias : dict of str -> ndarray, shape (K,), optional
        Distribution bias (``distribution``, ``mean_probs``) on random-token inputs, as
        :func:`knot.soft_labels.predicted_class_distribution` measures it.
    checkpoint_sha256 : str, optional
        sha256 of the teacher's weights file (identifies the teacher; not the weights).
    protocol : str
    """

    client_id: str
    num_examples: int
    soft_labels: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)
    bias: dict[str, np.ndarray] | None = None
    checkpoint_sha256: str | None = None
    protocol: str = PROTOCOL


# ---------------------------------------------------------------------------
# client side
# ---------------------------------------------------------------------------


def client_domain(cfg, *, domain: str | None = None, partition_id: int | None = None) -> str:
    """The local domain a client owns: ``domain`` when given, else the ``partition_id``-th
    local domain of the config (Flower's simulation numbers its nodes 0..n-1).

    Raises ``ValueError`` for an unknown domain or an out-of-range partition.
    """
    names = [d.name for d in cfg.domains("local")]
    if domain:
        if domain not in names:
            raise ValueError(f"client domain {domain!r} is not a local domain of the config ({', '.join(names)})")
        return domain
    if partition_id is None:
        raise ValueError("client: no domain given (node config `domain`) and no partition id")
    if not 0 <= int(partition_id) < len(names):
        raise ValueError(
            f"client: partition {partition_id} has no local domain (the config has {len(names)}: {', '.join(names)})"
        )
    return names[int(partition_id)]


def _only_domains(cfg, keep: Callable[[Any], bool]):
    """A copy of ``cfg`` whose data section keeps the domains for which ``keep(d)``."""
    data = dataclasses.replace(cfg.data, domains=[d for d in cfg.data.domains if keep(d)])
    return dataclasses.replace(cfg, data=data)


def _client_config(cfg, domain: str):
    """The client's view: its own local domain and the transfer domain, nothing else."""
    return _only_domains(cfg, lambda d: d.name == domain or d.role == "transfer")


def _client_fingerprint(cfg, domain: str) -> str:
    # "model" carries encoder_mode, head and pooled_units whenever they are not the
    # defaults, so switching a client to frozen mode (or another head) retrains its teacher
    d = cfg.to_dict()
    own = next(x for x in d["data"]["domains"] if x["name"] == domain)
    data = {k: v for k, v in d["data"].items() if k not in ("domains", "root")}
    return sha256_json(
        {k: d[k] for k in ("seed", "device", "task", "model", "local")} | {"data": data, "domain": own}
    )


def _numbers(prefix: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def handle_request(
    request: TeacherRequest,
    *,
    domain: str,
    work_dir: str | Path,
    data_root: str | Path | None = None,
) -> TeacherReply:
    """Client side of a round: train (or reload) this client's teacher, label the transfer set.

    Parameters
    ----------
    request : TeacherRequest
    domain : str
        The local domain this client owns (its private data; see :func:`client_domain`).
    work_dir : path
        The client's own run directory (prepared data, teacher checkpoint, token cache).
        A teacher trained there for the same settings and data is resumed (a no-op when
        finished) rather than retrained.
    data_root : path, optional
        Where the client's private data and the public transfer set are read from (else
        ``KNOT_DATA``, else the config's ``data.root``).

    Returns
    -------
    TeacherReply

    Raises
    ------
    ValueError
        The request's protocol or config is invalid, ``domain`` is not a local domain, or
        the client's transfer texts differ from the server's (hash mismatch).
    """
    if request.protocol != PROTOCOL:
        raise ValueError(f"request protocol {request.protocol!r}; this client speaks {PROTOCOL!r}")
    cfg = request.experiment()
    domain = client_domain(cfg, domain=domain)
    transfer = request.transfer
    if transfer.domain not in [d.name for d in cfg.domains("transfer")]:
        raise ValueError(f"request: {transfer.domain!r} is not the config's transfer domain")
    ccfg = _client_config(cfg, domain)
    layout = RunLayout(Path(work_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.config, ccfg.to_yaml())

    start = time.time()
    encoding_before = encoding_stats()
    _, reasons = run_prepare(ccfg, layout, data_root)
    stamp_file = layout.root / "federated-client.json"
    fingerprint = _client_fingerprint(cfg, domain)
    stamp = {}
    if stamp_file.is_file():
        try:
            stamp = json.loads(stamp_file.read_text(encoding="utf-8"))
        except ValueError:
            stamp = {}
    resume = not reasons and stamp.get("fingerprint") == fingerprint
    log.info("client %s: %s teacher in %s", domain, "resuming" if resume else "training", layout.teacher(domain))
    run = RunContext(ccfg, layout, data_root=data_root)
    trained = train_teacher(run, role="local", domain=domain, resume=resume)["models"][domain]
    atomic_write_json(stamp_file, {"domain": domain, "fingerprint": fingerprint})

    device, geometry = run.device, run.geometry
    # frozen mode: features go to the client's own cache (its work dir's features/, or
    # its KNOT_CACHE), which only ever holds this client's texts and the public ones
    model = load(layout.teacher(domain), device=device, feature_cache=run.feature_cache)
    soft: dict[str, np.ndarray] = {}
    for split, n, digest in zip(transfer.splits, transfer.num_examples, transfer.texts_sha256):
        texts = [e.text for e in load_split(layout.data, transfer.domain, split)]
        if len(texts) != n or texts_hash(texts) != digest:
            raise ValueError(
                f"client {domain}: transfer split {transfer.domain}/{split} differs from the server's "
                f"({len(texts)} texts here, {n} there, or other texts); check the client's data root and "
                "that both sides use the same config"
            )
        soft[split] = predict_probs(
            model, texts, batch_size=ccfg.soft_labels.batch_size, device=device, desc=f"{domain} -> {split}"
        )
    res = teacher_bias(model, ccfg, device, domain)
    bias = {k: np.asarray(res[k], dtype=np.float64) for k in ("distribution", "mean_probs")}

    metrics = {"n_val": float(trained.get("n_val", 0)), "best_epoch": float(trained.get("best_epoch", 0))}
    metrics |= _numbers("val_", trained.get("best_metrics") or {})
    test = load_split(layout.data, domain, "test")
    if test and all(e.label is not None for e in test):
        probs = predict_probs(model, [e.text for e in test], batch_size=ccfg.evaluate.batch_size, device=device,
                              desc=f"{domain} test")
        gold = np.asarray([geometry.index(e.label) for e in test])
        metrics |= _numbers("test_", evaluate_probs(probs, gold, geometry))
    metrics |= {k: float(v) for k, v in model_sizes(model).items()}
    if ccfg.model.frozen:
        enc = encoding_delta(encoding_before)
        metrics |= {"encoded_texts": float(enc["texts_encoded"]), "encode_seconds": float(enc["seconds"])}
    metrics["seconds"] = round(time.time() - start, 3)
    reply = TeacherReply(
        client_id=domain,
        num_examples=int(trained["n_train"]),
        soft_labels=soft,
        metrics=metrics,
        bias=bias,
        checkpoint_sha256=checkpoint_hash(layout.teacher(domain)),
    )
    log.info("client %s: %d private examples, soft labels for %s", domain, reply.num_examples,
             ", ".join(f"{s} {a.shape}" for s, a in soft.items()))
    return reply


def _param_bytes(module) -> int:
    return int(sum(p.numel() * p.element_size() for p in module.parameters()))


def model_sizes(model) -> dict[str, int]:
    """What a parameter-sharing method (FedAvg) would send for ``model``, in bytes:
    ``model_bytes`` (encoder + head) and ``head_bytes`` (the head alone: all that trains in
    frozen mode)."""
    if getattr(model, "frozen", False):
        head = _param_bytes(model.head)
        return {"model_bytes": _param_bytes(model.frozen_encoder()[0]) + head, "head_bytes": head}
    total = _param_bytes(model)
    encoder = getattr(model, "encoder", None)
    return {"model_bytes": total, "head_bytes": total - (_param_bytes(encoder) if encoder is not None else 0)}


def request_nbytes(request: TeacherRequest) -> int:
    """Bytes of a request's content as JSON text (config and transfer reference; no arrays).

    >>> request_nbytes(TeacherRequest(1, {"a": 1}, TransferRef("t", ["train"], [2], ["h"])))
    177
    """
    body = {"protocol": request.protocol, "round": request.round, "config": request.config,
            "transfer": request.transfer.to_dict()}
    return len(json.dumps(body, sort_keys=True).encode("utf-8"))


def reply_nbytes(reply: TeacherReply) -> dict[str, int]:
    """Bytes of a reply's content: ``soft_labels`` (the ``(N, K)`` arrays' raw bytes,
    N x K x 4 for float32), ``arrays`` (those plus the bias vectors), ``metadata`` (the
    rest as JSON text: ids, sizes, hash, metrics) and ``total`` (arrays + metadata).

    >>> r = TeacherReply("a", 3, {"train": np.zeros((10, 5), np.float32)}, bias={"distribution": np.zeros(5)})
    >>> reply_nbytes(r)
    {'soft_labels': 200, 'arrays': 240, 'metadata': 130, 'total': 370}
    """
    soft = sum(int(np.asarray(a).nbytes) for a in reply.soft_labels.values())
    arrays = soft + sum(int(np.asarray(a).nbytes) for a in (reply.bias or {}).values())
    meta = {"protocol": reply.protocol, "client_id": reply.client_id, "num_examples": int(reply.num_examples),
            "checkpoint_sha256": reply.checkpoint_sha256 or "", "splits": list(reply.soft_labels),
            "metrics": {k: float(v) for k, v in reply.metrics.items()}}
    metadata = len(json.dumps(meta, sort_keys=True).encode("utf-8"))
    return {"soft_labels": soft, "arrays": arrays, "metadata": metadata, "total": arrays + metadata}


def communication_record(request: TeacherRequest, reply: TeacherReply) -> dict[str, Any]:
    """One client's bill for the round: bytes received (the request) and sent (the reply),
    beside what FedAvg would send each way per round (``model_bytes``, or ``head_bytes``
    when only the head trains), from the client's own model sizes."""
    sent = reply_nbytes(reply)
    out: dict[str, Any] = {"basis": "raw array bytes + JSON metadata", "received_bytes": request_nbytes(request),
                           "sent_bytes": sent["total"], "soft_label_bytes": sent["soft_labels"],
                           "metadata_bytes": sent["metadata"]}
    for key in ("model_bytes", "head_bytes"):
        if key in reply.metrics:
            out[f"fedavg_{key}"] = int(reply.metrics[key])
    return out


# ---------------------------------------------------------------------------
# server side: request, validation, round
# ---------------------------------------------------------------------------


def make_request(cfg, layout, round: int = 1) -> TeacherRequest:
    """The round's request, from the config and the server's prepared transfer splits."""
    transfer = transfer_domain(cfg)
    splits = list(cfg.soft_labels.splits)
    sizes, hashes = [], []
    for split in splits:
        texts = [e.text for e in load_split(layout.data, transfer.name, split)]
        if not texts:
            raise ValueError(f"transfer domain {transfer.name!r}: split {split!r} is empty")
        sizes.append(len(texts))
        hashes.append(texts_hash(texts))
    manifest = read_manifest(layout.data)
    ref = TransferRef(
        domain=transfer.name,
        splits=splits,
        num_examples=sizes,
        texts_sha256=hashes,
        data_hash=transfer_hash(manifest, transfer.name),
    )
    config = cfg.to_dict()
    config["federated"].pop("client_examples", None)  # the operator's declared sizes stay on the server
    return TeacherRequest(round=round, config=config, transfer=ref)


def _check_distribution(a: Any, shape: tuple[int, ...], what: str) -> tuple[np.ndarray | None, str | None]:
    """``(array as float32/64, None)`` when ``a`` is finite, non-negative, rows summing to 1."""
    if not isinstance(a, np.ndarray):
        return None, f"{what} is not an array ({type(a).__name__})"
    if a.shape != shape:
        return None, f"{what} has shape {tuple(a.shape)}, expected {shape}"
    if not np.issubdtype(a.dtype, np.floating):
        return None, f"{what} has dtype {a.dtype}, expected float32"
    finite = np.isfinite(a).all(axis=-1)
    if not finite.all():
        row = int(np.argmin(finite.reshape(-1)))
        return None, f"{what} contains NaN or inf ({int((~finite).sum())} bad row(s), first: row {row})"
    if (a < 0).any():
        row = int(np.argmax((a < 0).any(axis=-1).reshape(-1)))
        return None, f"{what} has negative probabilities (first: row {row})"
    sums = a.astype(np.float64).sum(axis=-1)
    bad = np.abs(sums - 1.0) > SUM_TOL
    if bad.any():
        flat = bad.reshape(-1)
        row = int(np.argmax(flat))
        return None, (
            f"{what}: {int(flat.sum())} row(s) do not sum to 1 (tolerance {SUM_TOL:g}; "
            f"first: row {row} sums to {float(sums.reshape(-1)[row]):.6g})"
        )
    return a, None


def validate_reply(
    reply: Any,
    request: TeacherRequest,
    num_labels: int,
    *,
    max_examples: int = MAX_CLIENT_EXAMPLES,
    declared: Mapping[str, int] | None = None,
) -> str | None:
    """Why ``reply`` cannot be used for ``request``, or None when it is valid.

    Checks the protocol, the client id (a local domain of the request's config), the
    number of private examples (an integer from 1 to ``max_examples``, and equal to
    ``declared[client_id]`` when the operator declared that client's size), one
    ``(N_split, K)`` float array per requested split with finite, non-negative rows
    summing to 1 (:data:`knot.soft_labels.SUM_TOL`), and the distribution bias (``(K,)``
    each).

    >>> ref = TransferRef("t", ["train"], [2], ["h"])
    >>> cfg = {"data": {"domains": [{"name": "a", "sources": [{"reader": "jsonl", "path": "a"}]}]}}
    >>> req = TeacherRequest(1, cfg, ref)
    >>> good = np.array([[0.5, 0.5], [1.0, 0.0]], dtype=np.float32)
    >>> bias = {"distribution": np.array([0.5, 0.5]), "mean_probs": np.array([0.5, 0.5])}
    >>> validate_reply(TeacherReply("a", 10, {"train": good}, bias=bias), req, 2) is None
    True
    >>> validate_reply(TeacherReply("a", 10, {"train": good * 2}, bias=bias), req, 2)
    "soft labels 'train': 2 row(s) do not sum to 1 (tolerance 0.001; first: row 0 sums to 2)"
    >>> validate_reply(TeacherReply("a", 10**12, {"train": good}, bias=bias), req, 2)
    'claims 1000000000000 private examples, above federated.max_client_examples (10000000)'
    >>> validate_reply(TeacherReply("a", 10, {"train": good}, bias=bias), req, 2, declared={"a": 12})
    'claims 10 private examples, federated.client_examples declares 12 for client a'
    """
    if not isinstance(reply, TeacherReply):
        return f"not a teacher reply ({type(reply).__name__})"
    if reply.protocol != PROTOCOL:
        return f"protocol {reply.protocol!r}, expected {PROTOCOL!r}"
    locals_ = [d["name"] for d in request.config.get("data", {}).get("domains", []) if d.get("role", "local") == "local"]
    if reply.client_id not in locals_:
        return f"client id {reply.client_id!r} is not a local domain ({', '.join(locals_)})"
    n = reply.num_examples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        return f"number of private examples {n!r}, expected a positive integer"
    if n > max_examples:
        return f"claims {n} private examples, above federated.max_client_examples ({max_examples})"
    if declared and reply.client_id in declared and n != declared[reply.client_id]:
        return (f"claims {n} private examples, federated.client_examples declares "
                f"{declared[reply.client_id]} for client {reply.client_id}")
    splits = list(request.transfer.splits)
    got = list(reply.soft_labels) if isinstance(reply.soft_labels, Mapping) else None
    if got is None or sorted(got) != sorted(splits):
        return f"soft labels for splits {got}, expected {splits}"
    for split in splits:
        _, why = _check_distribution(
            reply.soft_labels[split], (request.transfer.size(split), num_labels), f"soft labels {split!r}"
        )
        if why:
            return why
    if reply.bias is None:
        return "no distribution bias"
    for key in ("distribution", "mean_probs"):
        if key not in reply.bias:
            return f"distribution bias without {key!r}"
        _, why = _check_distribution(reply.bias[key], (num_labels,), f"bias {key!r}")
        if why:
            return why
    return None


def exclusions(excluded: list[dict[str, Any]], silent: list[str], timeout: float | None = None) -> list[dict[str, Any]]:
    """Every node whose reply is not used, with the reason: the excluded replies, then the
    silent nodes (``"no answer within TIMEOUT s"``), as a round record lists them."""
    limit = "the timeout" if timeout is None else f"{timeout:g} s"
    return [*excluded, *({"node": n, "client": None, "reason": f"no answer within {limit}"} for n in silent)]


@dataclass
class RoundResult:
    """Outcome of one round.

    ``valid``: client id -> reply, in the config's local-domain order. ``excluded``: one
    ``{"node", "client", "reason"}`` per rejected reply or failed client. ``silent``: nodes
    that did not answer before the timeout.
    """

    round: int
    valid: dict[str, TeacherReply]
    excluded: list[dict[str, Any]]
    silent: list[str]
    nodes: list[str]
    seconds: float
    node_of: dict[str, str] = field(default_factory=dict)
    request: TeacherRequest | None = None

    def size_weights(self) -> dict[str, float]:
        """Each valid client's share of the clients' size weight (its checked number of
        private examples over their sum): what ``size`` teacher weights give the clients
        relative to one another."""
        sizes = {cid: int(r.num_examples) for cid, r in self.valid.items()}
        total = sum(sizes.values())
        return {cid: n / total for cid, n in sizes.items()} if total else {}

    def exclusions(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every node whose reply is not used, with the reason (:func:`exclusions`)."""
        return exclusions(self.excluded, self.silent, timeout)

    def to_dict(self) -> dict[str, Any]:
        shares = self.size_weights()
        return {
            "round": self.round,
            "nodes": self.nodes,
            "clients": {
                cid: {
                    "node": self.node_of.get(cid),
                    "num_examples": int(r.num_examples),
                    "size_weight": round(shares[cid], 6),
                    "checkpoint_sha256": r.checkpoint_sha256,
                    "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.metrics.items()},
                    **({"communication": communication_record(self.request, r)} if self.request is not None else {}),
                }
                for cid, r in self.valid.items()
            },
            "excluded": self.excluded,
            "silent": self.silent,
            "seconds": round(self.seconds, 3),
        }


class Transport(Protocol):
    """How the server reaches its clients (in-process handlers, Flower, ...)."""

    def nodes(self) -> list[str]:
        """The clients the request will be sent to (labels for the log)."""

    def exchange(
        self, request: TeacherRequest, timeout: float | None
    ) -> Mapping[str, Any] | Sequence[tuple[str, Any]]:
        """Send ``request`` to every node; return the answers that arrived within ``timeout``
        seconds, a ``TeacherReply`` or an Exception (a client failure) each: either
        ``{node: answer}``, or ``(node, answer)`` pairs in arrival order, where a node that
        answered twice appears twice (:func:`run_round` counts its first answer only)."""


def run_round(
    request: TeacherRequest,
    transport: Transport,
    *,
    local_domains: Sequence[str],
    num_labels: int,
    min_clients: int,
    timeout: float | None = None,
    max_examples: int = MAX_CLIENT_EXAMPLES,
    declared: Mapping[str, int] | None = None,
) -> RoundResult:
    """Send the request, keep the valid replies, name the rest, enforce ``min_clients``.

    Parameters
    ----------
    request : TeacherRequest
    transport : Transport
    local_domains : sequence of str
        The config's local domains, in order (the order of the valid replies).
    num_labels : int
        K, the number of classes.
    min_clients : int
        Fewest valid replies for the round to succeed.
    timeout : float, optional
        Seconds to wait for the replies (None: no limit).
    max_examples, declared
        Bound on, and operator-declared values of, the clients' numbers of private
        examples (``federated.max_client_examples``, ``federated.client_examples``); see
        :func:`validate_reply`.

    Returns
    -------
    RoundResult

    Raises
    ------
    FederatedError
        Fewer than ``min_clients`` valid replies; the message lists every excluded and
        silent client with the reason, and its ``result`` is the round's outcome.

    Notes
    -----
    A node's first answer is its answer; any later one from the same node is excluded as
    a duplicate (named in ``excluded``), as is a second node answering for a client that
    already answered. A node that has not answered at the timeout (stuck, or killed
    mid-round) is ``silent``; one the engine reports as gone answers with an error and is
    excluded with it.
    """
    start = time.time()
    nodes = [str(n) for n in transport.nodes()]
    log.info("round %d: asking %d client(s) (%s) for soft labels on %s %s", request.round, len(nodes),
             ", ".join(nodes), request.transfer.domain, "/".join(request.transfer.splits))
    answers = transport.exchange(request, timeout)
    if isinstance(answers, Mapping):
        pairs = [(node, answers[node]) for node in nodes if node in answers]
    else:  # arrival order: a node's first answer counts
        pairs = [(str(node), answer) for node, answer in answers if str(node) in nodes]
    valid: dict[str, TeacherReply] = {}
    node_of: dict[str, str] = {}
    excluded: list[dict[str, Any]] = []
    answered: set[str] = set()
    for node, answer in pairs:
        client = getattr(answer, "client_id", None)
        if node in answered:
            reason = f"duplicate reply from node {node} (its first reply counts)"
        elif isinstance(answer, BaseException):
            reason = f"client failed: {answer}"
        else:
            reason = validate_reply(answer, request, num_labels, max_examples=max_examples, declared=declared)
            if reason is None and client in valid:
                reason = f"duplicate client id {client!r} (already answered by node {node_of[client]})"
        answered.add(node)
        if reason is not None:
            who = f"client {client!r} (node {node})" if client else f"node {node}"
            log.warning("round %d: %s excluded: %s", request.round, who, reason)
            excluded.append({"node": node, "client": client, "reason": reason})
            continue
        answer.soft_labels = {s: np.ascontiguousarray(a, dtype=np.float32) for s, a in answer.soft_labels.items()}
        valid[client] = answer
        node_of[client] = node
    silent = [n for n in nodes if n not in answered]
    for node in silent:
        limit = "the timeout" if timeout is None else f"{timeout:g} s"
        log.warning("round %d: node %s did not answer within %s; skipped", request.round, node, limit)
    order = [d for d in local_domains if d in valid]
    result = RoundResult(
        round=request.round,
        valid={d: valid[d] for d in order},
        excluded=excluded,
        silent=silent,
        nodes=nodes,
        seconds=time.time() - start,
        node_of=node_of,
        request=request,
    )
    missing = [d for d in local_domains if d not in valid]
    log.info("round %d: %d valid repl%s (%s)%s", request.round, len(order), "y" if len(order) == 1 else "ies",
             ", ".join(order) or "none", f"; no teacher for {', '.join(missing)}" if missing else "")
    if len(order) < min_clients:
        problems = [f"{e['client'] or 'node ' + e['node']}: {e['reason']}" for e in result.exclusions(timeout)]
        if not nodes:
            problems.append("no client connected")
        raise FederatedError(
            f"round {request.round}: {len(order)} valid repl{'y' if len(order) == 1 else 'ies'} "
            f"({', '.join(order) or 'none'}), federated.min_clients is {min_clients}"
            + (": " + "; ".join(problems) if problems else ""),
            result=result,
        )
    return result


# ---------------------------------------------------------------------------
# server side: soft labels, stages, status
# ---------------------------------------------------------------------------


def write_soft_labels(run: RunContext, request: TeacherRequest, replies: Mapping[str, TeacherReply]) -> dict[str, Any]:
    """Write the SoftLabels artefact and ``bias.json`` from the clients' replies.

    ``run.cfg`` names exactly the teachers to include (its local domains must all have a
    reply); the global model (``run.layout.global_model``) is run here on the server. The
    files are those of :func:`knot.soft_labels.produce_soft_labels` and
    :func:`knot.soft_labels.distribution_bias`, so the distillation and evaluation stages
    read them unchanged. Returns a summary like ``produce_soft_labels``.
    """
    cfg, layout, device, geometry = run.cfg, run.layout, run.device, run.geometry
    refs = run.teachers()
    transfer = request.transfer
    manifest = read_manifest(layout.data)
    examples = {s: load_split(layout.data, transfer.domain, s) for s in transfer.splits}
    bias = bias_record(cfg, refs, geometry.labels)
    bias["federated"] = {"round": request.round, "clients": [r.name for r in refs if r.role == "local"]}

    def teacher_output(ref) -> TeacherOutput:
        if ref.role == "local":
            reply = replies[ref.name]
            out = TeacherOutput(
                {s: reply.soft_labels[s] for s in transfer.splits}, int(reply.num_examples), reply.checkpoint_sha256 or ""
            )
            res = reply.bias or {}
        else:  # the global model lives on the server
            require_checkpoint(ref)
            model = load(ref.path, device=device, feature_cache=run.feature_cache)
            probs = {
                s: predict_probs(model, [e.text for e in ex], batch_size=cfg.soft_labels.batch_size,
                                 device=device, desc=f"{ref.name} -> {s}")
                for s, ex in examples.items()
            }
            res = teacher_bias(model, cfg, device, ref.name)
            del model
            out = TeacherOutput(probs, teacher_size(ref, manifest), checkpoint_hash(ref.path))
        add_bias(bias, ref.name, res, out.checkpoint_sha256)
        return out

    summary = assemble_soft_labels(layout.soft_labels, refs, geometry, transfer.domain, examples, teacher_output,
                                   manifest=manifest, extra={"federated": {"round": request.round}})
    atomic_write_json(layout.bias, bias)
    log.info("soft labels from %d teacher(s) (%s) written to %s", len(refs), ", ".join(r.name for r in refs),
             layout.soft_labels)
    return summary


def teacher_weight_record(cfg, layout) -> dict[str, dict[str, float]]:
    """The teacher weights each distillation method of ``cfg`` uses on the transfer train
    split (:func:`knot.distill.method_weights`), as ``{method: {teacher: weight}}``; for
    per-example (``bias``) weights, their mean over the examples."""
    sl = SoftLabels.load(layout.soft_labels, "train")
    methods = cfg.distill.methods
    bias = load_bias(layout.soft_labels, sl.teacher_names) if any(m.weights == "bias" for m in methods) else None
    global_name = next((r.name for r in run_teachers(cfg, layout) if r.kind == "global"), None)
    out = {}
    for m in methods:
        w = np.asarray(method_weights(m, sl, bias, global_name), dtype=np.float64)  # (T,) or (N, T)
        w = w.reshape(-1, len(sl.teacher_names)).mean(axis=0)
        out[m.name] = {t: round(float(x), 6) for t, x in zip(sl.teacher_names, w)}
    return out


def _effective_config(cfg, kept: Sequence[str]):
    """``cfg`` with only the local domains in ``kept``; explicit teacher weights follow."""
    locals_ = [d.name for d in cfg.domains("local")]
    out = _only_domains(cfg, lambda d: d.role != "local" or d.name in kept)
    if list(kept) == locals_:
        return out
    drop = [i for i, name in enumerate(locals_) if name not in kept]
    methods = []
    for m in cfg.distill.methods:
        w = m.explicit_weights
        if w is not None and len(w) >= len(locals_):
            w = [x for i, x in enumerate(w) if i not in drop]
            m = dataclasses.replace(m, explicit_weights=w)
        methods.append(m)
    return dataclasses.replace(out, distill=dataclasses.replace(cfg.distill, methods=methods))


def _write_status(layout, status: str, **info: Any) -> None:
    path = layout.federated_status
    old = {}
    if path.is_file():
        try:
            old = read_status(layout.root)
        except ValueError:
            old = {}
    record = {
        "format": STATUS_FORMAT,
        "status": status,
        "started": old.get("started") if status != "running" else time.strftime("%Y-%m-%dT%H:%M:%S"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **info,
    }
    atomic_write_json(path, record)


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The federated status of a run directory (``RUN/federated/status.json``).

    Raises ``FileNotFoundError`` when the run has no federated status and ``ValueError``
    when the file is corrupt.
    """
    return read_json(RunLayout(run_dir).federated_status, STATUS_FORMAT, what="knot federated status",
                     missing="no federated run status here")


def run_server(cfg, layout, transport: Transport, *, data_root: Any = None, round: int = 1) -> dict[str, Any]:
    """The server's whole job, as the stages of ``knot run`` on a :class:`knot.pipeline.Run`:
    prepare -> global model -> *the federated round* -> students -> evaluation -> report.

    The round (stage ``federated``, group ``soft-labels``) takes the place of the local
    teachers, the soft-label and the bias stages: the clients train their teachers and
    reply with soft labels and bias, the server adds its global model's, and writes the
    same files. Every stage is recorded in ``RUN/stages.json`` as in ``knot run``: rerun,
    the finished stages are skipped (the round too: its replies are on disk), and the
    students and evaluation use the round's valid clients (from its record).

    Parameters
    ----------
    cfg : knot.config.ExperimentConfig
        ``cfg.federated`` sets ``min_clients``, ``timeout`` and ``evaluate_local``.
    layout : knot.layout.RunLayout
        The server's run directory; ``RUN/teachers`` stays empty (teachers stay with their
        owners), everything else is where the in-process pipeline puts it.
    transport : Transport
    data_root : path, optional
        The server's data root (transfer, global and test domains; local ones too when
        ``federated.evaluate_local``).

    Returns
    -------
    dict: ``{"round": the round record, "soft_labels", "distill", "results", "stages"}``.

    Raises
    ------
    FederatedError
        Too few valid replies (``round-1.json`` then records the failed round). Other
        stage errors propagate. Either way ``RUN/federated/status.json`` says ``failed``
        with the error (and, when the round failed, ``excluded``: each node not used and why).
    """
    from knot.pipeline import Run, Stage, config_sections, evaluate_stage, prepare_stage, report_stage, run_stages
    from knot.pipeline import student_stages, teacher_stage

    layout.root.mkdir(parents=True, exist_ok=True)
    _write_status(layout, "running")
    try:
        locals_ = [d.name for d in cfg.domains("local")]
        if not locals_:
            raise ValueError("data.domains: a federated run needs at least one domain with role 'local' (one per client)")
        transfer_domain(cfg)
        fed = cfg.federated
        min_clients = fed.min_clients if fed.min_clients is not None else len(locals_)
        if min_clients > len(locals_):
            raise ValueError(
                f"federated.min_clients: {min_clients} but the config has only {len(locals_)} local domain(s)"
            )
        declared = dict(fed.client_examples or {})
        unknown = [name for name in declared if name not in locals_]
        if unknown:
            raise ValueError(
                f"federated.client_examples: {', '.join(map(repr, unknown))} not a local domain ({', '.join(locals_)})"
            )
        atomic_write_text(layout.config, cfg.to_yaml())
        server = Run(cfg if fed.evaluate_local else _only_domains(cfg, lambda d: d.role != "local"), layout,
                     data_root=data_root)
        round_file = layout.federated_round(round)

        def effective() -> Run:
            """The run over the round's valid clients (read from its record)."""
            return server.with_config(_effective_config(cfg, list(read_json(round_file)["clients"])))

        def evaluated() -> Run:
            eff = effective()
            return eff if fed.evaluate_local else eff.with_config(_only_domains(eff.cfg, lambda d: d.role != "local"))

        def federated_round() -> dict[str, Any]:
            request = make_request(cfg, layout, round)
            record = {"format": ROUND_FORMAT, "transfer": request.transfer.to_dict(),
                      "config_sha256": sha256_json(request.config), "min_clients": min_clients,
                      "timeout": fed.timeout, "max_client_examples": fed.max_client_examples,
                      "client_examples": declared}
            try:
                result = run_round(
                    request, transport, local_domains=locals_, num_labels=server.geometry.num_labels,
                    min_clients=min_clients, timeout=fed.timeout, max_examples=fed.max_client_examples,
                    declared=declared,
                )
            except FederatedError as exc:
                if exc.result is not None:  # who answered and who did not, for the operator
                    # beside the round file, so a rerun asks the clients again (the stage is not done)
                    atomic_write_json(round_file, record | exc.result.to_dict() | {"status": "failed"})
                raise
            record |= result.to_dict()
            atomic_write_json(round_file, record)
            eff = effective()
            soft = write_soft_labels(eff, request, result.valid)
            weights = teacher_weight_record(eff.cfg, layout)
            atomic_write_json(round_file, record | {"teacher_weights": weights})
            return soft

        has_global = bool(cfg.domains("global"))
        teachers = [teacher_stage(server, "global")] if has_global else []
        federated = Stage(
            "federated",
            "soft-labels",
            {**config_sections(cfg, "soft_labels", "bias", "federated"), "round": round},
            ["prepare", *(t.name for t in teachers)],
            federated_round,
            lambda: round_file.is_file() and layout.bias.is_file()
            and all((layout.soft_labels / f"{s}.json").is_file() for s in cfg.soft_labels.splits),
        )
        deps = ["federated"] + (["global"] if has_global and cfg.distill.init == "global" else [])
        students = student_stages(server.with_config(cfg), deps, effective)
        stages = [
            prepare_stage(server),
            *teachers,
            federated,
            *students,
            evaluate_stage(server.with_config(cfg), ["prepare", "federated", *(t.name for t in teachers),
                                                     *(s.name for s in students)], evaluated),
            report_stage(server.with_config(cfg)),
        ]
        log_ = run_stages(server, stages)
        record = read_json(round_file)
    except BaseException as exc:
        failed = getattr(exc, "result", None)
        extra = {} if not isinstance(failed, RoundResult) else {
            "clients": list(failed.valid), "excluded": failed.exclusions(cfg.federated.timeout),
            "silent": failed.silent}
        _write_status(layout, "failed", error=f"{type(exc).__name__}: {exc}", **extra)
        raise
    _write_status(
        layout, "ok", error=None, clients=list(record["clients"]),
        excluded=exclusions(record["excluded"], record["silent"], fed.timeout), silent=record["silent"],
        size_weights={cid: c["size_weight"] for cid, c in record["clients"].items()},
        teacher_weights=record["teacher_weights"],
    )
    students_summary = {}
    for s in students:
        students_summary.update((log_.get(s.name, {}).get("summary") or {}).get("students", {}))
    return {"round": record, "soft_labels": log_.get("federated", {}).get("summary"),
            "distill": {"students": students_summary}, "results": read_json(layout.results_json), "stages": log_}


# ---------------------------------------------------------------------------
# in-process runner
# ---------------------------------------------------------------------------


class InProcessTransport:
    """Calls client handlers directly, one after the other (teacher training is seeded and
    uses the global torch RNG, so clients never run side by side in one process).

    ``handlers`` maps a node label to ``handler(request) -> TeacherReply``. With a
    timeout, each handler runs in a worker thread and the round's deadline is shared: a
    handler still busy at the deadline is reported silent (its thread is left to finish
    on its own), as are the handlers not started before it.
    """

    def __init__(self, handlers: Mapping[str, Callable[[TeacherRequest], TeacherReply]]):
        self.handlers = dict(handlers)

    def nodes(self) -> list[str]:
        return list(self.handlers)

    def exchange(self, request: TeacherRequest, timeout: float | None) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        for node, handler in self.handlers.items():
            if deadline is None:
                try:
                    answers[node] = handler(request)
                except Exception as exc:  # a failing client is excluded, not fatal
                    log.debug("client %s failed", node, exc_info=True)
                    answers[node] = exc
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            box: dict[str, Any] = {}

            def call(h=handler, b=box) -> None:
                try:
                    b["reply"] = h(request)
                except Exception as exc:
                    b["reply"] = exc

            worker = threading.Thread(target=call, name=f"knot-client-{node}", daemon=True)
            worker.start()
            worker.join(left)
            if "reply" in box:
                answers[node] = box["reply"]
        return answers


def local_handlers(cfg, client_root: str | Path, data_root: Any = None) -> dict[str, Callable[[TeacherRequest], TeacherReply]]:
    """One :func:`handle_request` per local domain, each with its own work dir under
    ``client_root`` (``client_root/<domain>``)."""
    import functools

    return {
        d.name: functools.partial(handle_request, domain=d.name, work_dir=Path(client_root) / d.name,
                                  data_root=data_root)
        for d in cfg.domains("local")
    }


def run_in_process(
    cfg,
    layout,
    *,
    data_root: Any = None,
    client_root: str | Path | None = None,
    handlers: Mapping[str, Callable[[TeacherRequest], TeacherReply]] | None = None,
) -> dict[str, Any]:
    """A whole federated run in one process: the handlers are called directly.

    Clients work in ``client_root/<domain>`` (default ``RUN/federated/clients``) and read
    ``data_root``. ``handlers`` replaces the real clients (tests, custom clients).
    """
    if handlers is None:
        root = Path(client_root) if client_root is not None else layout.federated / "clients"
        handlers = local_handlers(cfg, root, data_root)
    return run_server(cfg, layout, InProcessTransport(handlers), data_root=data_root)

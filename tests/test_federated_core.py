"""Federated teachers without Flower: reply validation, the round, the in-process runner.

The round is exercised with fake client handlers (good, NaN, wrong shape, silent,
failing); the in-process runner with real handlers on a tiny synthetic task must give
the same soft labels and student results as the in-process pipeline (`knot run`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from knot.config import ExperimentConfig
from knot.federated.core import (
    PROTOCOL,
    FederatedError,
    InProcessTransport,
    TeacherReply,
    TeacherRequest,
    TransferRef,
    _effective_config,
    client_domain,
    make_request,
    read_status,
    run_in_process,
    run_round,
    validate_reply,
)
from knot.layout import RunLayout

# ---------------------------------------------------------------------------
# a tiny synthetic task (shared with test_federated_flower.py)
# ---------------------------------------------------------------------------

from helpers import LABELS3, synthetic_rows, write_jsonl

LABELS = LABELS3
DOMAINS = {"books": ("local", 30), "games": ("local", 30), "tools": ("local", 30), "shop": ("global", 45),
           "public": ("transfer", 60)}


def write_data(root) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, (_, n)) in enumerate(DOMAINS.items()):
        rows = synthetic_rows(n, 100 + i)
        write_jsonl(root / f"{name}.jsonl", rows)


def tiny_config(**federated) -> ExperimentConfig:
    """Three local clients, a global domain and a transfer set; the `tiny` encoder."""
    return ExperimentConfig.from_dict(
        {
            "name": "tinyfed",
            "seed": 7,
            "device": "cpu",
            "task": {"geometry": {"neg": [-1.0], "neu": [0.0], "pos": [1.0]}},
            "data": {
                "seed": 7,
                "domains": [
                    {"name": n, "role": r, "split": "random",
                     "sources": [{"reader": "jsonl", "path": f"{n}.jsonl", "text": "text", "label": "label"}]}
                    for n, (r, _) in DOMAINS.items()
                ],
            },
            "model": {"encoder": "tiny", "max_length": 32, "dropout": 0.0},
            "local": {"epochs": 1, "batch_size": 16, "lr": 2e-3},
            "global_model": {"epochs": 1, "batch_size": 16, "lr": 2e-3},
            "soft_labels": {"batch_size": 64},
            "bias": {"n_samples": 16, "length": 8},
            "distill": {"train": {"epochs": 1, "batch_size": 16, "lr": 2e-3},
                        "methods": [{"name": "ot", "loss": "ot"}]},
            "evaluate": {"batch_size": 64},
            "federated": federated,
        }
    )


# ---------------------------------------------------------------------------
# fakes
# ---------------------------------------------------------------------------

SIZES = {"train": 4, "val": 2}
K = 3


def fake_request() -> TeacherRequest:
    cfg = tiny_config().to_dict()
    ref = TransferRef("public", list(SIZES), list(SIZES.values()), ["h-train", "h-val"])
    return TeacherRequest(round=1, config=cfg, transfer=ref)


def good_reply(client: str, n: int = 20) -> TeacherReply:
    rng = np.random.default_rng(len(client))
    soft = {}
    for split, size in SIZES.items():
        p = rng.random((size, K)).astype(np.float32)
        soft[split] = p / p.sum(axis=1, keepdims=True)
    bias = {"distribution": np.array([0.5, 0.25, 0.25]), "mean_probs": np.array([0.4, 0.3, 0.3])}
    return TeacherReply(client, n, soft, metrics={"val_accuracy": 1.0}, bias=bias, checkpoint_sha256="abc")


def spoiled(client: str, split: str, fn) -> TeacherReply:
    r = good_reply(client)
    r.soft_labels[split] = fn(r.soft_labels[split].copy())
    return r


def with_nan(a):
    a[1, 0] = np.nan
    return a


def with_inf(a):
    a[0, 2] = np.inf
    return a


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def test_a_good_reply_is_valid():
    assert validate_reply(good_reply("books"), fake_request(), K) is None


@pytest.mark.parametrize(
    "reply, reason",
    [
        (spoiled("books", "train", with_nan), "contains NaN"),
        (spoiled("books", "val", lambda a: a[:1]), "shape (1, 3), expected (2, 3)"),
        (spoiled("books", "train", lambda a: a[:, :2]), "shape (4, 2), expected (4, 3)"),
        (spoiled("books", "train", lambda a: a * 1.5), "do not sum to 1"),
        (spoiled("books", "train", lambda a: a - 0.5), "negative"),
        (spoiled("books", "train", lambda a: (a * 100).astype(np.int64)), "dtype int64"),
        (TeacherReply("books", 20, {"train": good_reply("x").soft_labels["train"]}, bias=good_reply("x").bias),
         "soft labels for splits ['train'], expected ['train', 'val']"),
        (good_reply("shop"), "client id 'shop' is not a local domain"),
        (good_reply("books", n=0), "number of private examples 0"),
        (good_reply("books", n=-3), "number of private examples -3"),
        (good_reply("books", n=True), "number of private examples True"),
        (good_reply("books", n=20.0), "number of private examples 20.0"),
        (good_reply("books", n=float("inf")), "number of private examples inf"),
        (good_reply("books", n=np.float64("nan")), "expected a positive integer"),
        (good_reply("books", n=10**12), "claims 1000000000000 private examples, above federated.max_client_examples"),
        (spoiled("books", "val", with_inf), "contains NaN or inf"),
        (TeacherReply("books", 20, good_reply("b").soft_labels, bias=None), "no distribution bias"),
        (TeacherReply("books", 20, good_reply("b").soft_labels, bias={"distribution": np.ones(3) / 3}),
         "without 'mean_probs'"),
        (TeacherReply("books", 20, good_reply("b").soft_labels, bias=good_reply("b").bias, protocol="other/0"),
         "protocol 'other/0'"),
    ],
)
def test_bad_replies_say_why(reply, reason):
    why = validate_reply(reply, fake_request(), K)
    assert why is not None and reason in why


def test_a_claimed_size_is_bounded_and_must_match_the_declared_one():
    request = fake_request()
    assert validate_reply(good_reply("books", n=500), request, K, max_examples=500) is None
    assert "above federated.max_client_examples (499)" in validate_reply(good_reply("books", n=500), request, K,
                                                                         max_examples=499)
    declared = {"books": 20}
    assert validate_reply(good_reply("books", n=20), request, K, declared=declared) is None
    assert validate_reply(good_reply("games", n=99), request, K, declared=declared) is None  # undeclared: bound only
    why = validate_reply(good_reply("books", n=21), request, K, declared=declared)
    assert why == "claims 21 private examples, federated.client_examples declares 20 for client books"


# ---------------------------------------------------------------------------
# the round
# ---------------------------------------------------------------------------


@pytest.fixture
def release():
    """An event the silent fake client waits on; set at teardown so its thread ends."""
    event = threading.Event()
    yield event
    event.set()


def test_round_keeps_valid_replies_and_names_the_rest(release, caplog):
    def silent(request):
        release.wait(30)
        return good_reply("tools")

    handlers = {
        "node-books": lambda request: good_reply("books"),
        "node-games": lambda request: spoiled("games", "train", with_nan),
        "node-tools": silent,
    }
    with caplog.at_level("WARNING", logger="knot.federated.core"):
        result = run_round(fake_request(), InProcessTransport(handlers), local_domains=["books", "games", "tools"],
                           num_labels=K, min_clients=1, timeout=1.0)

    assert list(result.valid) == ["books"]
    assert result.silent == ["node-tools"]
    assert [(e["client"], e["node"]) for e in result.excluded] == [("games", "node-games")]
    assert "NaN" in result.excluded[0]["reason"]
    log = caplog.text
    assert "client 'games' (node node-games) excluded" in log and "NaN" in log
    assert "node node-tools did not answer within 1 s" in log
    assert result.valid["books"].soft_labels["train"].dtype == np.float32


def test_valid_replies_follow_the_config_order_not_the_answer_order():
    handlers = {"n1": lambda r: good_reply("tools"), "n2": lambda r: good_reply("books")}
    result = run_round(fake_request(), InProcessTransport(handlers), local_domains=["books", "games", "tools"],
                       num_labels=K, min_clients=2)
    assert list(result.valid) == ["books", "tools"]
    assert result.to_dict()["clients"]["tools"]["node"] == "n1"


def test_too_few_valid_replies_fail_with_every_reason():
    def crash(request):
        raise OSError("disk full")

    handlers = {
        "n1": lambda r: good_reply("books"),
        "n2": crash,
        "n3": lambda r: good_reply("books"),  # a second client claiming the same domain
    }
    with pytest.raises(FederatedError) as info:
        run_round(fake_request(), InProcessTransport(handlers), local_domains=["books", "games", "tools"],
                  num_labels=K, min_clients=2)
    msg = str(info.value)
    assert "1 valid reply (books), federated.min_clients is 2" in msg
    assert "client failed: disk full" in msg
    assert "duplicate client id 'books' (already answered by node n1)" in msg


def test_a_hostile_size_claim_is_excluded_and_the_weights_recorded():
    handlers = {
        "n1": lambda r: good_reply("books", n=30),
        "n2": lambda r: good_reply("games", n=10**12),  # would take almost all the size weight
        "n3": lambda r: good_reply("tools", n=10),
    }
    result = run_round(fake_request(), InProcessTransport(handlers), local_domains=["books", "games", "tools"],
                       num_labels=K, min_clients=2, max_examples=1000)
    record = result.to_dict()
    assert list(result.valid) == ["books", "tools"]
    assert record["excluded"][0]["client"] == "games" and "max_client_examples (1000)" in record["excluded"][0]["reason"]
    assert {c: v["size_weight"] for c, v in record["clients"].items()} == {"books": 0.75, "tools": 0.25}


def test_a_size_differing_from_the_declared_one_fails_a_round_left_too_small():
    handlers = {"n1": lambda r: good_reply("books", n=30), "n2": lambda r: good_reply("games", n=31)}
    with pytest.raises(FederatedError) as info:
        run_round(fake_request(), InProcessTransport(handlers), local_domains=["books", "games", "tools"],
                  num_labels=K, min_clients=2, declared={"books": 30, "games": 40})
    assert "1 valid reply (books), federated.min_clients is 2" in str(info.value)
    assert "games: claims 31 private examples, federated.client_examples declares 40 for client games" in str(info.value)


class ArrivalTransport:
    """A transport whose answers arrive as ``(node, answer)`` pairs, duplicates included
    (what a real engine may deliver); ``nodes`` are the nodes asked."""

    def __init__(self, nodes, arrivals):
        self._nodes, self.arrivals = list(nodes), list(arrivals)

    def nodes(self):
        return self._nodes

    def exchange(self, request, timeout):
        return self.arrivals


def test_a_node_answering_twice_counts_once_and_the_duplicate_is_named():
    first, again = good_reply("books", n=30), good_reply("books", n=99)
    transport = ArrivalTransport(["n1", "n2"], [("n1", first), ("n2", good_reply("games")), ("n1", again)])
    result = run_round(fake_request(), transport, local_domains=["books", "games", "tools"], num_labels=K,
                       min_clients=2)

    assert list(result.valid) == ["books", "games"] and result.valid["books"].num_examples == 30  # the first
    assert result.excluded == [{"node": "n1", "client": "books",
                                "reason": "duplicate reply from node n1 (its first reply counts)"}]
    assert result.silent == []


def test_a_node_silent_at_the_timeout_is_named_and_a_round_left_too_small_fails_with_it(tmp_path, release):
    def stuck(request):
        release.wait(30)
        return good_reply("games")

    write_data(tmp_path / "data")
    layout = RunLayout(tmp_path / "run")
    # in-process clients answer one after the other: n3 starts last and holds the round to its timeout
    handlers = {"n1": lambda r: fitting_reply(r, "books", 1), "n2": lambda r: fitting_reply(r, "books", 2), "n3": stuck}
    start = time.monotonic()
    with pytest.raises(FederatedError) as info:
        run_in_process(tiny_config(min_clients=2, timeout=0.5), layout, data_root=tmp_path / "data",
                       handlers=handlers)

    assert time.monotonic() - start < 10  # the round did not wait for the stuck client
    assert "1 valid reply (books)" in str(info.value) and "node n3: no answer within 0.5 s" in str(info.value)
    # status.json and round-1.json name every node not used, and why
    why = {"node": "n3", "client": None, "reason": "no answer within 0.5 s"}
    dup = {"node": "n2", "client": "books", "reason": "duplicate client id 'books' (already answered by node n1)"}
    status = read_status(layout.root)
    assert status["status"] == "failed" and status["clients"] == ["books"]
    assert status["excluded"] == [dup, why] and status["silent"] == ["n3"]
    record = json.loads(layout.federated_round(1).read_text())
    assert record["status"] == "failed" and record["silent"] == ["n3"] and record["excluded"] == [dup]
    assert list(record["clients"]) == ["books"] and record["timeout"] == 0.5


def test_no_client_at_all_fails():
    with pytest.raises(FederatedError, match="no client connected"):
        run_round(fake_request(), InProcessTransport({}), local_domains=["books"], num_labels=K, min_clients=1)


# ---------------------------------------------------------------------------
# config helpers
# ---------------------------------------------------------------------------


def test_the_round_record_states_each_clients_bytes_beside_its_model():
    reply = good_reply("books")
    reply.metrics |= {"model_bytes": 90_000_000.0, "head_bytes": 50_000.0}
    result = run_round(fake_request(), InProcessTransport({"n1": lambda request: reply}), local_domains=["books"],
                       num_labels=K, min_clients=1)

    bill = result.to_dict()["clients"]["books"]["communication"]
    n = sum(SIZES.values())
    assert bill["soft_label_bytes"] == n * K * 4  # N x K float32 probabilities
    assert bill["sent_bytes"] == n * K * 4 + 2 * K * 8 + bill["metadata_bytes"]  # + two float64 bias vectors
    assert 0 < bill["metadata_bytes"] < 1000 and bill["received_bytes"] > 0
    assert (bill["fedavg_model_bytes"], bill["fedavg_head_bytes"]) == (90_000_000, 50_000)


def test_client_domain_by_name_or_partition():
    cfg = tiny_config()
    assert client_domain(cfg, domain="games") == "games"
    assert client_domain(cfg, partition_id=2) == "tools"
    with pytest.raises(ValueError, match="'shop' is not a local domain"):
        client_domain(cfg, domain="shop")
    with pytest.raises(ValueError, match="partition 3 has no local domain"):
        client_domain(cfg, partition_id=3)


def test_declared_sizes_are_checked_against_the_bound():
    assert tiny_config(client_examples={"books": 30}).federated.client_examples == {"books": 30}
    with pytest.raises(ValueError, match=r"federated\.client_examples\.books: expected 1 to max_client_examples \(50\)"):
        tiny_config(client_examples={"books": 60}, max_client_examples=50)
    with pytest.raises(ValueError, match=r"federated\.client_examples\.books: expected an integer, got 3\.5"):
        tiny_config(client_examples={"books": 3.5})


def test_effective_config_drops_missing_teachers_and_their_explicit_weights():
    cfg = tiny_config()
    cfg.distill.methods[0].weights = "explicit"
    cfg.distill.methods[0].explicit_weights = [1.0, 2.0, 3.0, 4.0]  # books, games, tools, global
    eff = _effective_config(cfg, ["books", "tools"])
    assert [d.name for d in eff.domains("local")] == ["books", "tools"]
    assert eff.distill.methods[0].explicit_weights == [1.0, 3.0, 4.0]
    assert [d.name for d in cfg.domains("local")] == ["books", "games", "tools"]  # cfg untouched


# ---------------------------------------------------------------------------
# the server: failure status, and equality with the in-process pipeline
# ---------------------------------------------------------------------------


def test_a_failed_round_is_recorded_as_failed(tmp_path):
    write_data(tmp_path / "data")
    cfg = tiny_config(min_clients=2)
    layout = RunLayout(tmp_path / "run")
    handlers = {"n1": lambda r: good_reply("books")}
    with pytest.raises(FederatedError, match="min_clients is 2"):
        run_in_process(cfg, layout, data_root=tmp_path / "data", handlers=handlers)
    status = read_status(layout.root)
    assert status["status"] == "failed" and "min_clients is 2" in status["error"]
    assert not (layout.root / "students").exists()


def test_declared_sizes_must_name_local_domains(tmp_path):
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(ValueError, match="federated.client_examples: 'shop' not a local domain"):
        run_in_process(tiny_config(client_examples={"shop": 5}), layout, handlers={})
    assert read_status(layout.root)["status"] == "failed"


def test_a_request_carries_references_not_texts(tmp_path):
    from knot.data import load_split, prepare_data
    from knot.federated.core import make_request

    write_data(tmp_path / "data")
    cfg = tiny_config(client_examples={"books": 17})
    layout = RunLayout(tmp_path / "run")
    prepare_data(cfg, layout, tmp_path / "data")
    request = make_request(cfg, layout)
    texts = [e.text for s in ("train", "val") for e in load_split(layout.data, "public", s)]
    blob = json.dumps({"config": request.config, "transfer": request.transfer.to_dict()})
    assert request.protocol == PROTOCOL
    assert "client_examples" not in request.config["federated"]  # the operator's declared sizes stay on the server
    assert request.transfer.num_examples == [len(load_split(layout.data, "public", s)) for s in ("train", "val")]
    assert not any(t in blob for t in texts)


def compare_runs(reference, federated, atol: float, teachers=("books", "games", "tools", "global"),
                 rows_expected: int = 2 * 5) -> None:
    """Same soft labels (every split) of ``teachers`` and the same student (and global)
    rows in results.json (``rows_expected`` of them)."""
    from knot.soft_labels import SoftLabels

    for split in ("train", "val"):
        a = SoftLabels.load(reference.soft_labels, split)
        b = SoftLabels.load(federated.soft_labels, split)
        assert b.teacher_names == a.teacher_names == list(teachers)
        assert b.teacher_sizes == a.teacher_sizes
        worst = {t: float(np.abs(b.probs[:, j] - a.probs[:, j]).max()) for j, t in enumerate(a.teacher_names)}
        assert max(worst.values()) <= atol, f"{split}: largest soft-label difference per teacher {worst}"
    ref = json.loads(reference.results_json.read_text())
    fed = json.loads(federated.results_json.read_text())

    def rows(results):
        return {(r["model"], r["test_set"]): r for r in results["rows"] if r["model"].startswith(("student", "global"))}

    ra, rb = rows(ref), rows(fed)
    assert ra.keys() == rb.keys() and len(ra) == rows_expected  # default: global + student on 3 local + global + union
    for key in ra:
        for metric in ("accuracy", "macro_f1", "semantic_distance", "expected_cost"):
            assert rb[key][metric] == pytest.approx(ra[key][metric], abs=max(atol, 1e-9)), (key, metric)


#: One torch thread: thread counts change float rounding, so `knot run` and the federated
#: runs (whose clients use one thread each) are compared at the same count, bit for bit.
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def knot_cli(*args) -> subprocess.CompletedProcess:
    """``knot ARGS`` in a fresh process with one torch thread."""
    env = {**os.environ, **SINGLE_THREAD}
    return subprocess.run([sys.executable, "-m", "knot.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=900)


def pipeline_reference(tmp_path_factory):
    """`knot run` (without the report) on the tiny task, run once per test session and shared
    by both federated test files. Returns its folder (``data/``: the data root, ``run/``:
    the run directory, ``tiny.yaml``: the config)."""
    root = tmp_path_factory.getbasetemp() / "federated-reference"
    if not (root / "run" / "results.json").is_file():
        write_data(root / "data")
        (root / "tiny.yaml").write_text(tiny_config().to_yaml())
        done = knot_cli("run", root / "tiny.yaml", "--out", root / "run", "--data-root", root / "data",
                        "--stages", "prepare,local,global,soft-labels,bias,distill,evaluate")
        assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    return pipeline_reference(tmp_path_factory)


@pytest.mark.slow
def test_in_process_runner_equals_the_pipeline(pipeline_run, tmp_path):
    layout = RunLayout(tmp_path / "fed")
    done = knot_cli("federated", "run", pipeline_run / "tiny.yaml", "--in-process", "--out", layout.root,
                    "--data-root", pipeline_run / "data")

    assert done.returncode == 0, done.stderr[-3000:]
    assert "round 1: teachers from books, games, tools" in done.stdout
    assert read_status(layout.root)["status"] == "ok"
    assert not (layout.root / "teachers").exists()  # teachers stay with their owners
    clients = layout.root / "federated" / "clients"
    assert (clients / "books" / "teachers" / "books" / "best" / "model.safetensors").is_file()
    compare_runs(RunLayout(pipeline_run / "run"), layout, atol=0.0)
    bias_ref = json.loads((pipeline_run / "run" / "soft_labels" / "bias.json").read_text())
    bias_fed = json.loads((layout.soft_labels / "bias.json").read_text())
    assert bias_fed["distribution"] == bias_ref["distribution"]
    missing = {m["id"] for m in json.loads(layout.results_json.read_text())["missing"]}
    assert missing == {"teacher:books", "teacher:games", "teacher:tools"}

    # asked again, a client reuses its finished teacher instead of training it again
    from knot.federated.core import handle_request
    from knot.soft_labels import SoftLabels

    weights = clients / "books" / "teachers" / "books" / "best" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    reply = handle_request(make_request(tiny_config(), layout), domain="books", work_dir=clients / "books",
                           data_root=pipeline_run / "data")
    assert weights.stat().st_mtime_ns == before
    stored = SoftLabels.load(layout.soft_labels, "train").probs[:, 0]
    np.testing.assert_allclose(reply.soft_labels["train"], stored, atol=1e-5)  # this process may use 2 threads


def fitting_reply(request: TeacherRequest, client: str, seed: int) -> TeacherReply:
    """A well-formed reply for `request` (random soft labels of the requested shapes)."""
    rng = np.random.default_rng(seed)
    soft = {}
    for split, n in zip(request.transfer.splits, request.transfer.num_examples):
        p = rng.random((n, K)).astype(np.float32) + 0.1
        soft[split] = p / p.sum(axis=1, keepdims=True)
    bias = {"distribution": np.array([1.0, 0.0, 0.0]), "mean_probs": np.array([0.5, 0.3, 0.2])}
    return TeacherReply(client, 10 + seed, soft, bias=bias)


@pytest.mark.slow
def test_server_without_local_data_distils_from_the_valid_clients_only(tmp_path, caplog):
    write_data(tmp_path / "data")
    cfg = tiny_config(min_clients=2, evaluate_local=False)
    cfg.distill.methods[0].weights = "explicit"
    cfg.distill.methods[0].explicit_weights = [1.0, 2.0, 3.0, 4.0]  # books, games, tools, global
    layout = RunLayout(tmp_path / "run")
    handlers = {
        "n1": lambda r: fitting_reply(r, "books", 1),
        "n2": lambda r: spoiled_reply(fitting_reply(r, "games", 2)),
        "n3": lambda r: fitting_reply(r, "tools", 3),
    }
    with caplog.at_level("WARNING", logger="knot.federated.core"):
        out = run_in_process(cfg, layout, data_root=tmp_path / "data", handlers=handlers)

    assert "client 'games' (node n2) excluded" in caplog.text
    assert read_status(layout.root)["status"] == "ok"
    assert sorted(p.name for p in layout.data.iterdir() if p.is_dir()) == ["public", "shop"]  # no local data read
    from knot.soft_labels import SoftLabels

    sl = SoftLabels.load(layout.soft_labels, "train")
    assert sl.teacher_names == ["books", "tools", "global"] and sl.teacher_sizes[:2] == [11, 13]
    np.testing.assert_array_equal(sl.probs[:, 1], fitting_reply(make_request(cfg, layout), "tools", 3).soft_labels["train"])
    results = json.loads(layout.results_json.read_text())
    assert [t["name"] for t in results["test_sets"]] == ["shop"]
    assert {m["id"] for m in results["models"]} == {"global", "student:ot"}
    assert out["distill"]["students"]["ot"]["method"]["explicit_weights"] == [1.0, 3.0, 4.0]
    record = json.loads(layout.federated_round(1).read_text())
    assert record["teacher_weights"] == {"ot": {"books": 0.125, "tools": 0.375, "global": 0.5}}
    assert read_status(layout.root)["size_weights"] == {"books": round(11 / 24, 6), "tools": round(13 / 24, 6)}


def spoiled_reply(reply: TeacherReply) -> TeacherReply:
    reply.soft_labels["train"][0] = np.nan
    return reply


def test_a_federated_run_has_stage_hashes_a_report_and_resumes(tmp_path):
    """The server runs the pipeline's stages on a Run: stages.json records them (the round in
    place of the local teachers, soft labels and bias), report.md is written, and a rerun
    skips every finished stage, the round included (no client is asked again)."""
    write_data(tmp_path / "data")
    cfg = tiny_config(evaluate_local=False)
    layout = RunLayout(tmp_path / "run")
    asked = []

    def client(name, seed):
        return lambda r: (asked.append(name), fitting_reply(r, name, seed))[1]

    handlers = {"n1": client("books", 1), "n2": client("games", 2), "n3": client("tools", 3)}

    first = run_in_process(cfg, layout, data_root=tmp_path / "data", handlers=handlers)
    log = json.loads(layout.stages.read_text())
    weights = {p: p.stat().st_mtime_ns for p in layout.root.rglob("model.safetensors")}
    again = run_in_process(cfg, layout, data_root=tmp_path / "data", handlers=handlers)

    assert list(log) == ["prepare", "global", "federated", *(f"distill:{m.name}" for m in cfg.distill.methods),
                         "evaluate", "report"]
    assert layout.report.is_file() and first["results"]["rows"] == again["results"]["rows"]
    assert asked == ["books", "games", "tools"]  # asked once: the second run skipped the round
    assert {k: v["hash"] for k, v in json.loads(layout.stages.read_text()).items()} == {k: v["hash"] for k, v in log.items()}
    assert {p: p.stat().st_mtime_ns for p in layout.root.rglob("model.safetensors")} == weights
    assert read_status(layout.root)["status"] == "ok" and again["distill"]["students"] == first["distill"]["students"]

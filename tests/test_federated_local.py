"""Real Flower processes on loopback (:mod:`knot.federated.local`).

The slow test runs the quickstart's roles (three local teachers on the built-in VADER
data, frozen MiniLM) on a SuperLink with TLS and SuperNode authentication and one
SuperNode process per teacher, each with its own work dir and feature cache, and checks
that the result equals ``knot federated run --in-process`` and ``knot run``; that
intruders (a node with an unregistered key, a node without the CA, a node speaking plain
HTTP) are refused and never reach the round; that Flower logs no deprecation warning;
and that no process is left behind. Needs the ``flower`` extra.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason='Flower is not installed (pip install "knot[flower]")')
pytest.importorskip("cryptography")

from helpers import quickstart_fast_sets  # noqa: E402
from knot.config import load_config  # noqa: E402
from knot.federated.core import read_status  # noqa: E402
from knot.federated.flower import TEST_FAULT_ENV, TEST_HOOKS_ENV  # noqa: E402
from knot.federated.local import (  # noqa: E402
    LocalFederation,
    run_local,
    tagged_processes,
    write_certs,
    write_node_key,
)
from knot.layout import RunLayout  # noqa: E402
from test_federated_core import SINGLE_THREAD, compare_runs, knot_cli  # noqa: E402

pytestmark = pytest.mark.flower

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
#: The fault test's round timeout, seconds: a healthy node answers in about 20 s on 2 busy cores.
FAULT_TIMEOUT = 60.0


def test_certs_and_keys_are_made_for_loopback(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    paths = write_certs(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    cert.verify_directly_issued_by(ca)  # the server certificate chains to the CA
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert stat.S_IMODE(paths["key"].stat().st_mode) == 0o600

    priv, pub = write_node_key(tmp_path / "keys", "tweets")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    key = load_ssh_private_key(priv.read_bytes(), None)
    assert key.curve.name == "secp384r1"  # Flower accepts NIST curves only
    assert load_ssh_public_key(pub.read_bytes()).public_numbers() == key.public_key().public_numbers()


def test_a_federation_needs_certificates_unless_insecure(tmp_path):
    with pytest.raises(ValueError, match="certificates folder"):
        LocalFederation(tmp_path)
    with pytest.raises(FileNotFoundError, match="server.pem"):
        LocalFederation(tmp_path, certs=tmp_path)
    with pytest.raises(ValueError, match="needs TLS"):
        LocalFederation(tmp_path, insecure=True, node_auth=True)


def _intruders(tmp_path, seen: dict):
    """``before_submit``: three nodes that must be refused, each claiming a real domain."""

    def start(fed: LocalFederation) -> None:
        seen["tag"] = fed.tag
        stranger, _ = write_node_key(tmp_path / "stranger", "tweets")  # never registered
        spare, spare_pub = write_node_key(tmp_path / "spare", "spare")
        fed.register(spare_pub, name="spare")  # registered, but its node lacks the CA
        config = {"domain": "tweets", "work-dir": str(tmp_path / "intruder")}
        fed.start_supernode("intruder-unregistered-key", config, key=stranger, max_wait=30)
        fed.start_supernode("intruder-without-ca", config, key=spare, trust_ca=False, max_wait=30)
        fed.start_supernode("intruder-plain-http", config, insecure=True, max_wait=30)
        names = ["intruder-unregistered-key", "intruder-without-ca", "intruder-plain-http"]
        deadline = time.monotonic() + 60
        while any(fed.procs[n].poll() is None for n in names) and time.monotonic() < deadline:
            time.sleep(0.5)
        seen["refused"] = {n: (fed.procs[n].poll(), fed.tail(n, 20000)) for n in names}

    return start


@pytest.mark.slow
def test_real_processes_equal_in_process_and_knot_run_and_refuse_intruders(tmp_path, monkeypatch):
    for k, v in SINGLE_THREAD.items():  # the server of run_local inherits this environment
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("KNOT_CACHE", raising=False)
    sets = quickstart_fast_sets(len(load_config(QUICKSTART).data.domains))
    cfg = load_config(QUICKSTART, sets)
    cfg_file = tmp_path / "quickstart.yaml"
    cfg_file.write_text(cfg.to_yaml())
    done = knot_cli("run", cfg_file, "--out", tmp_path / "ref", "--stages",
                    "prepare,local,global,soft-labels,bias,distill,evaluate")
    assert done.returncode == 0, done.stderr[-3000:]
    done = knot_cli("federated", "run", cfg_file, "--in-process", "--out", tmp_path / "inproc")
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "real"
    seen: dict = {}
    certs = write_certs(tmp_path / "certs")["ca"].parent
    try:
        status = run_local(cfg, out, certs=certs, keys=tmp_path / "keys", before_submit=_intruders(tmp_path, seen))
    finally:
        left = tagged_processes(seen["tag"]) if "tag" in seen else []
    assert left == [], f"processes left behind: {left}"

    # the three authorised SuperNodes answered, each from its own work dir and feature cache
    assert status["status"] == "ok" and status["clients"] == ["tweets", "amazon", "nyt"]
    round_ = json.loads((out / "federated" / "round-1.json").read_text())
    assert len(round_["nodes"]) == 3 and round_["excluded"] == [] and round_["silent"] == []
    for domain in ("tweets", "amazon", "nyt"):
        work = out / "federated" / "clients" / domain
        assert (work / "teachers" / domain / "best" / "model.safetensors").is_file()
        assert any((work / "features").iterdir())
    # the intruders were refused by the SuperLink and none of their replies reached the run
    refused = seen["refused"]
    assert all(code not in (None, 0) for code, _ in refused.values()), {n: c for n, (c, _) in refused.items()}
    assert "Failed to activate SuperNode" in refused["intruder-unregistered-key"][1]
    assert "CERTIFICATE_VERIFY_FAILED" in refused["intruder-without-ca"][1]
    assert not (tmp_path / "intruder").exists()
    # same soft labels and students as `knot federated run --in-process` and `knot run`
    teachers = ("tweets", "amazon", "nyt", "global")
    rows = 5 * (1 + len(load_config(QUICKSTART).distill.methods))  # 3 local + global + union test sets
    compare_runs(RunLayout(tmp_path / "inproc"), RunLayout(out), atol=1e-6, teachers=teachers, rows_expected=rows)
    compare_runs(RunLayout(tmp_path / "ref"), RunLayout(out), atol=1e-6, teachers=teachers, rows_expected=rows)
    # Flower said nothing deprecated, in any process's log
    logs = "\n".join(p.read_text(errors="replace") for p in (out / "federated" / "local").glob("*.log"))
    assert "deprecat" not in logs.lower()
    assert read_status(out)["status"] == "ok"
    assert os.environ.get("KNOT_CACHE") is None


def _faults(tmp_path, out, seen: dict):
    """``before_submit``: two more SuperNodes, a second one for tweets (the same teacher
    answering twice) and one whose ClientApp never answers (the test hook), and a thread
    that kills nyt's SuperNode once it has started on the request."""

    def start(fed: LocalFederation) -> None:
        seen["tag"] = fed.tag
        for name, domain, env in (("tweets-twin", "tweets", None),
                                  ("stuck", "amazon", {TEST_HOOKS_ENV: "1", TEST_FAULT_ENV: "hang"})):
            key, pub = write_node_key(tmp_path / "keys", name)
            fed.register(pub, name=name)
            fed.start_supernode(f"supernode-{name}", {"domain": domain, "work-dir": str(tmp_path / name)},
                                key=key, env=env)

        def kill_nyt_mid_round() -> None:
            begun = out / "federated" / "clients" / "nyt" / "config.yaml"  # handle_request's first write
            deadline = time.monotonic() + 300
            while not begun.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            seen["nyt_began"] = begun.exists()
            fed.kill("supernode-nyt")

        seen["killer"] = threading.Thread(target=kill_nyt_mid_round, daemon=True)
        seen["killer"].start()

    return start


@pytest.mark.slow
def test_faulty_supernodes_are_excluded_and_too_few_answers_fail(tmp_path, monkeypatch):
    """Five SuperNodes, min_clients 2: nyt's is killed mid-round, a stuck one never answers,
    a second tweets node answers for a teacher that already answered; the round goes on
    with tweets and amazon and names the three others and why. Then two nodes against
    min_clients 3: the run fails with exit status 1 and says why."""
    for k, v in SINGLE_THREAD.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("KNOT_CACHE", raising=False)
    sets = quickstart_fast_sets(len(load_config(QUICKSTART).data.domains))
    cfg = load_config(QUICKSTART, [*sets, "federated.min_clients=2", f"federated.timeout={FAULT_TIMEOUT}"])
    out = tmp_path / "run"
    seen: dict = {}
    certs = write_certs(tmp_path / "certs")["ca"].parent
    start = time.monotonic()
    try:
        status = run_local(cfg, out, certs=certs, keys=tmp_path / "keys", expected_clients=5,
                           before_submit=_faults(tmp_path, out, seen))
    finally:
        left = tagged_processes(seen["tag"]) if "tag" in seen else []
    seconds = time.monotonic() - start
    assert left == [], f"processes left behind: {left}"
    assert seen["nyt_began"]

    # the round went on with the two healthy teachers and names every other node and why
    assert status["status"] == "ok" and status["clients"] == ["tweets", "amazon"]
    round_ = json.loads((out / "federated" / "round-1.json").read_text())
    nodes = set(round_["nodes"])
    assert len(nodes) == 5 and list(round_["clients"]) == ["tweets", "amazon"]
    used = {c["node"] for c in round_["clients"].values()}
    dups = [e for e in round_["excluded"] if "duplicate client id 'tweets'" in e["reason"]]
    assert len(dups) == 1 and dups[0]["client"] == "tweets"
    # the stuck node is silent at the timeout; the killed one too, or reported offline by the SuperLink
    others = [e for e in round_["excluded"] if e not in dups]
    assert 1 <= len(round_["silent"]) == 2 - len(others), round_
    assert used | {dups[0]["node"]} | {e["node"] for e in others} | set(round_["silent"]) == nodes
    assert sorted(e["node"] for e in status["excluded"]) == sorted(nodes - used)
    assert all(e["reason"] for e in status["excluded"])
    assert {e["reason"] for e in status["excluded"] if e["node"] in round_["silent"]} == \
        {f"no answer within {FAULT_TIMEOUT:g} s"}
    assert not (tmp_path / "stuck" / "teachers").exists()  # the hook held it before any work
    assert seconds < FAULT_TIMEOUT + 240, f"the faulty round took {seconds:.0f} s"

    # fewer nodes than min_clients: exit status 1, status.json `failed` with the reason;
    # the teachers are reused from the run above
    strict = tmp_path / "strict.yaml"
    strict.write_text(load_config(QUICKSTART, [*sets, "federated.min_clients=3"]).to_yaml())
    done = knot_cli("federated", "local", strict, "--out", out, "--clients", "2", "--certs", certs,
                    "--keys", tmp_path / "keys")
    assert tagged_processes(str(out / "federated" / "local" / "flwr-home"), variable="FLWR_HOME") == []
    assert done.returncode == 1, done.stderr[-3000:]
    failed = read_status(out)
    assert failed["status"] == "failed" and failed["clients"] == ["tweets", "amazon"]
    assert "2 valid replies (tweets, amazon), federated.min_clients is 3" in failed["error"]
    assert "error: federated run failed" in done.stderr and "min_clients is 3" in done.stderr
    assert json.loads((out / "federated" / "round-1.json").read_text())["status"] == "failed"

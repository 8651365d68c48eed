"""The Flower adapter: record converters, the app folder, status, and a real simulation.

Needs the ``flower`` extra; skipped (with the reason) without it. The simulation runs the
tiny task on Flower's Simulation Runtime with one SuperNode per local domain plus a spare
node that owns no domain (it answers with an error and must be excluded), and must give
the pipeline's soft labels and student results.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("flwr", reason='Flower is not installed (pip install "knot[flower]")')

from typer.testing import CliRunner  # noqa: E402

from knot.cli import app  # noqa: E402
from knot.federated.core import TeacherRequest, read_status  # noqa: E402
from knot.federated.flower import (  # noqa: E402
    record_to_reply,
    record_to_request,
    reply_to_record,
    request_to_record,
)
from knot.layout import RunLayout  # noqa: E402
from test_federated_core import (  # noqa: E402
    compare_runs,
    fake_request,
    good_reply,
    knot_cli,
    pipeline_reference,
    tiny_config,
)

pytestmark = pytest.mark.flower


# ---------------------------------------------------------------------------
# converters
# ---------------------------------------------------------------------------


def test_request_round_trips_through_records():
    request = fake_request()
    again = record_to_request(request_to_record(request))
    assert isinstance(again, TeacherRequest)
    assert again == request
    assert again.experiment().to_dict() == request.experiment().to_dict()


def test_reply_round_trips_through_records_nan_included():
    reply = good_reply("games", n=21)
    reply.soft_labels["val"][0, 1] = np.nan  # the server must see it to exclude the client
    again = record_to_reply(reply_to_record(reply))
    assert (again.client_id, again.num_examples, again.checkpoint_sha256) == ("games", 21, "abc")
    assert list(again.soft_labels) == ["train", "val"]
    for split, a in reply.soft_labels.items():
        assert again.soft_labels[split].dtype == np.float32
        np.testing.assert_array_equal(again.soft_labels[split], a)  # NaN == NaN here
    for key, a in reply.bias.items():
        np.testing.assert_array_equal(again.bias[key], a)
    assert again.metrics == {"val_accuracy": 1.0}


def test_records_carry_no_texts_and_no_parameters():
    content = reply_to_record(good_reply("books"))
    assert sorted(content) == ["knot.bias", "knot.metrics", "knot.reply", "knot.soft_labels"]
    assert sorted(content["knot.soft_labels"]) == ["train", "val"]


def test_malformed_records_are_named():
    from flwr.app import ConfigRecord, RecordDict

    with pytest.raises(ValueError, match="no 'knot.request' record"):
        record_to_request(RecordDict({"other": ConfigRecord({"a": 1})}))
    content = reply_to_record(good_reply("books"))
    del content["knot.soft_labels"]
    with pytest.raises(ValueError, match="no 'knot.soft_labels' record"):
        record_to_reply(content)


# ---------------------------------------------------------------------------
# app folder and status
# ---------------------------------------------------------------------------


def test_app_folder_is_a_valid_flower_app(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    from knot.federated.flower import _load_run_config

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(tiny_config().to_yaml())
    result = CliRunner().invoke(app, ["federated", "app", str(cfg_file), str(tmp_path / "app"),
                                      "--out", str(tmp_path / "run"), "--set", "local.epochs=3"])
    assert result.exit_code == 0, result.output
    config, *problems = load_and_validate(tmp_path / "app" / "pyproject.toml")  # Flower's own check
    assert config is not None, problems
    flwr_app = config["tool"]["flwr"]["app"]
    assert flwr_app["components"] == {"serverapp": "knot.federated.server_app:app",
                                      "clientapp": "knot.federated.client_app:app"}
    assert config["project"]["dependencies"] == []  # nothing to install at run time
    run_cfg = flwr_app["config"]
    assert run_cfg["out"] == str((tmp_path / "run").resolve())
    loaded = _load_run_config(run_cfg)
    assert loaded.local.epochs == 3 and loaded.to_dict() == tiny_config().to_dict() | {"local": loaded.local.to_dict()}


def test_status_command_exit_codes(tmp_path):
    from knot.federated.core import _write_status

    runner = CliRunner()
    layout = RunLayout(tmp_path / "run")
    assert runner.invoke(app, ["federated", "status", str(layout.root)]).exit_code == 2
    _write_status(layout, "running")
    start = time.monotonic()
    result = runner.invoke(app, ["federated", "status", str(layout.root), "--wait", "0.5"])
    assert result.exit_code == 1 and time.monotonic() - start >= 0.5
    _write_status(layout, "failed", error="FederatedError: round 1: 0 valid replies")
    result = runner.invoke(app, ["federated", "status", str(layout.root)])
    assert result.exit_code == 1 and "0 valid replies" in result.output
    _write_status(layout, "ok")
    assert runner.invoke(app, ["federated", "status", str(layout.root)]).exit_code == 0


def test_federated_help_and_bad_config(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["federated", "run", "--help"])
    assert result.exit_code == 0 and "simulation" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("federated: {min_clients: 0}\n")
    result = runner.invoke(app, ["federated", "run", str(bad)])
    assert result.exit_code == 2 and "federated.min_clients" in result.output


# ---------------------------------------------------------------------------
# the Grid transport
# ---------------------------------------------------------------------------


def _message(content=None, *, dst_node_id=None, src=None, mid=None, to=None, error=None, **_):
    """A stand-in for Flower's ``Message`` (which needs a running Flower app to be built)."""
    from types import SimpleNamespace

    meta = SimpleNamespace(message_id=mid, reply_to_message_id=to, src_node_id=src, dst_node_id=dst_node_id)
    return SimpleNamespace(content=content, metadata=meta, error=error, has_error=lambda: error is not None)


class FakeGrid:
    """Node 1 answers (and its reply is delivered twice), node 2 fails, node 3 never answers."""

    def __init__(self):
        self.pulled: list[list[str]] = []

    def push_messages(self, messages):
        return [f"m{m.metadata.dst_node_id}" for m in messages]

    def pull_messages(self, ids):
        from types import SimpleNamespace

        self.pulled.append(list(ids))
        if len(self.pulled) > 1:
            return []
        reply = _message(reply_to_record(good_reply("books")), src=1, mid="r1", to="m1")
        failed = _message(src=2, mid="r2", to="m2", error=SimpleNamespace(reason="node offline", code=1))
        return [reply, failed, reply]


def test_the_grid_transport_stops_at_the_timeout_and_drops_a_reply_delivered_twice(monkeypatch):
    from knot.federated import flower

    monkeypatch.setattr(flower, "Message", _message)
    grid = FakeGrid()
    transport = flower.FlowerTransport(grid, expected=3, connect_timeout=1.0, poll=0.05)
    transport._nodes = [1, 2, 3]
    start = time.monotonic()
    answers = transport.exchange(fake_request(), timeout=0.3)

    assert 0.3 <= time.monotonic() - start < 2.0
    assert [node for node, _ in answers] == ["1", "2"]  # node 3 is silent; r1 counts once
    assert answers[0][1].client_id == "books" and str(answers[1][1]) == "node offline"
    assert grid.pulled[0] == ["m1", "m2", "m3"] and all(ids == ["m3"] for ids in grid.pulled[1:])


def test_the_test_fault_hook_is_inert_without_the_test_flag(monkeypatch):
    from knot.federated.flower import TEST_FAULT_ENV, TEST_HOOKS_ENV, _test_fault

    monkeypatch.setenv(TEST_FAULT_ENV, "hang")
    monkeypatch.delenv(TEST_HOOKS_ENV, raising=False)
    _test_fault()  # returns: no test flag
    monkeypatch.setenv(TEST_HOOKS_ENV, "1")
    monkeypatch.setenv(TEST_FAULT_ENV, "explode")
    with pytest.raises(ValueError, match="unknown test fault"):
        _test_fault()


# ---------------------------------------------------------------------------
# the simulation
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_simulation_equals_the_pipeline_and_excludes_a_bad_node(tmp_path_factory, tmp_path):
    reference = pipeline_reference(tmp_path_factory)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(tiny_config(min_clients=3, timeout=240.0, connect_timeout=60.0).to_yaml())
    out = tmp_path / "fed"

    start = time.monotonic()
    done = knot_cli("federated", "run", cfg_file, "--out", out, "--data-root", reference / "data", "--clients", "4")
    seconds = time.monotonic() - start

    assert done.returncode == 0, done.stderr[-3000:]
    assert read_status(out)["status"] == "ok"
    round_ = json.loads((out / "federated" / "round-1.json").read_text())
    assert list(round_["clients"]) == ["books", "games", "tools"]
    assert len(round_["excluded"]) == 1 and "partition 3 has no local domain" in round_["excluded"][0]["reason"]
    assert "excluded node" in done.stdout and "partition 3" in done.stdout
    # same soft labels and student results as `knot run`, bit for bit (both with one torch thread)
    compare_runs(RunLayout(reference / "run"), RunLayout(out), atol=0.0)
    # `flwr run` against a simulation SuperLink: Flower's deprecated run_simulation is gone
    logs = "\n".join(p.read_text(errors="replace") for p in (out / "federated" / "local").glob("*.log"))
    assert "Successfully started run" in logs and "deprecat" not in (logs + done.stdout + done.stderr).lower()
    assert seconds < 180, f"the simulation took {seconds:.0f} s"  # 66 s measured on 2 cores at load average 6.6


@pytest.mark.slow
def test_a_failed_round_exits_non_zero(tmp_path):
    from test_federated_core import write_data

    write_data(tmp_path / "data")
    # the clients' private data is missing: every client answers with an error, no valid reply
    cfg = tiny_config(min_clients=1, timeout=120.0, connect_timeout=60.0, evaluate_local=False)
    for d in cfg.data.domains:
        if d.role == "local":
            d.sources[0]["path"] = f"missing-{d.name}.jsonl"
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(cfg.to_yaml())
    result = CliRunner().invoke(app, ["federated", "run", str(cfg_file), "--out", str(tmp_path / "fed"),
                                      "--data-root", str(tmp_path / "data")])
    assert result.exit_code == 1, result.output
    status = read_status(tmp_path / "fed")
    assert status["status"] == "failed" and "0 valid replies" in status["error"]
    assert "missing-books.jsonl" in status["error"]

"""The server's round loop in-process: resume ends where an uninterrupted run ends; lost sites are reported.

A fake Grid hands each message to the real ClientApp in this process, so these tests cover the
ServerApp's main, the strategy, the checkpoints and the sites' state without starting Flower.
"""

import json

import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from server.app import main as server_main
from server.rounds import STATE_FILE
from server.strategy import TooFewSites
from tests.conftest import TINY, flower_message

SITES = {11: 0, 12: 1}  # node id -> partition id


class Crash(RuntimeError):
    """Stands for the server process being killed."""


class FakeGrid:
    """Delivers messages to the ClientApp in-process; can lose a node or crash after n deliveries.

    `node_config` adds to a node's config (node id -> entries). As Flower's runtime does, an exception
    in the ClientApp becomes an error reply whose reason holds the exception's type and message.
    """

    def __init__(self, state_dir, crash_after=None, lost=(), node_config=None):
        self.state_dir, self.crash_after, self.lost = state_dir, crash_after, set(lost)
        self.node_config = node_config or {}
        self.delivered = 0

    def get_node_ids(self):
        return list(SITES)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.lost:
                continue  # never answers: the round's timeout passes without its reply
            if self.crash_after is not None and self.delivered >= self.crash_after:
                raise Crash
            received = flower_message(msg.content, msg.metadata.message_type, src_node_id=0, dst_node_id=node)
            node_config = {"partition-id": SITES[node], "num-partitions": 2, **self.node_config.get(node, {})}
            context = Context(run_id=1, node_id=node, node_config=node_config,
                              state=RecordDict(), run_config={**self.run_config, "state-dir": str(self.state_dir)})
            try:
                replies.append(client_app(received, context))
            except Exception as ex:  # as flwr.supernode.runtime.run_clientapp reports it
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(ex)}:<'{ex}'>")
                replies.append(Message(error, reply_to=received))
            self.delivered += 1
        return replies


def _run(tmp_path, name, grid, **changes):
    run_config = {**TINY, "demo-sites": 2, "stat-models": "", "num-server-rounds": 3, "out-dir": str(tmp_path / name),
                  "cache-dir": str(tmp_path / "cache"), **changes}
    grid.run_config = run_config
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as the ServerApp's runtime sets it
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    return tmp_path / name


def _encoder(out):
    return torch.load(out / "global_encoder.pt", weights_only=True)


def test_a_resumed_run_ends_with_the_encoder_of_an_uninterrupted_one(tmp_path):
    whole = _run(tmp_path, "whole", FakeGrid(tmp_path / "whole-sites"))

    # killed in round 3 after one site trained (its head for round 3 is already saved)
    with pytest.raises(Crash):
        _run(tmp_path, "resumed", FakeGrid(tmp_path / "resumed-sites", crash_after=5))
    assert _encoder(tmp_path / "resumed")["round"] == 2
    assert not (tmp_path / "resumed" / "summary.json").exists()
    resumed = _run(tmp_path, "resumed", FakeGrid(tmp_path / "resumed-sites"), resume=True)

    a, b = _encoder(whole), _encoder(resumed)
    assert a["round"] == b["round"] == 3
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    rows = json.loads((resumed / "per_site.json").read_text())
    assert sorted((r["round"], r["phase"]) for r in rows) == sorted(
        (r["round"], r["phase"]) for r in json.loads((whole / "per_site.json").read_text()))
    assert json.loads((resumed / "summary.json").read_text())["sites"] == json.loads(
        (whole / "summary.json").read_text())["sites"]


def test_resume_refuses_changed_settings_and_a_fresh_start_over_a_run(tmp_path):
    with pytest.raises(Crash):
        _run(tmp_path, "r", FakeGrid(tmp_path / "s", crash_after=2))
    with pytest.raises(ValueError, match="other settings.*lr"):
        _run(tmp_path, "r", FakeGrid(tmp_path / "s"), resume=True, lr=0.1)
    with pytest.raises(ValueError, match="set resume=true"):
        _run(tmp_path, "r", FakeGrid(tmp_path / "s"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(tmp_path, "empty", FakeGrid(tmp_path / "s"), resume=True)


def test_a_lost_site_is_reported_and_the_round_completes_with_the_others(tmp_path):
    out = _run(tmp_path, "lost", FakeGrid(tmp_path / "s", lost={12}), **{"min-train-nodes": 1, "num-server-rounds": 2})
    summary = json.loads((out / "summary.json").read_text())
    assert [r["site"] for r in summary["sites"]] == ["site00"]
    missing = {(r["round"], r["phase"], r["site"]) for r in summary["missing"]}
    assert missing == {(1, "train", "node-12"), (2, "train", "node-12"), (2, "evaluate", "node-12")}
    assert all(r["error"] == "no reply within round-timeout" for r in summary["missing"])


def test_too_few_answers_stop_the_run_naming_the_missing_sites(tmp_path):
    with pytest.raises(TooFewSites, match="1 sites answered, at least 2 needed.*missing: node-12"):
        _run(tmp_path, "few", FakeGrid(tmp_path / "s", lost={12}))
    assert not (tmp_path / "few" / STATE_FILE).exists()  # no round completed, nothing to resume from


def test_a_minimal_reports_run_completes_with_nameless_sites_and_no_figures(tmp_path):
    full = _run(tmp_path, "full", FakeGrid(tmp_path / "full-sites"), **{"num-server-rounds": 1})
    out = _run(tmp_path, "minimal", FakeGrid(tmp_path / "min-sites"), **{"num-server-rounds": 1, "reports": "minimal"})
    assert json.loads((out / "summary.json").read_text())["sites"] == []
    rows = json.loads((out / "per_site.json").read_text())
    assert {r["site"] for r in rows} == {"node-11", "node-12"}
    assert all(set(r) == {"round", "phase", "node_id", "site", "num-examples"} for r in rows)
    # the same aggregate as a full-reports run: nothing aggregation needs was dropped
    a, b = _encoder(full), _encoder(out)
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])

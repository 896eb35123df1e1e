"""The server's round loop in-process: resume ends where an uninterrupted run ends; lost sites are reported.

A fake Grid hands each message to the real ClientApp in this process, so these tests cover the
ServerApp's main, the strategy, the checkpoints and the sites' state without starting Flower; the
loop itself is also run alone, with a recording strategy and a grid that echoes what it is sent.
"""

import json
from dataclasses import replace

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from server.app import main as server_main
from server.rounds import STATE_FILE, RoundLoop, RunState
from server.strategy import TooFewSites
from shared import wire
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
    # what the sites sent (the FedAvg weight); `update-norm` is the server's own measure of what it received
    assert all(set(r) - {"update-norm"} == {"round", "phase", "node_id", "site", "num-examples"} for r in rows)
    # the same aggregate as a full-reports run: nothing aggregation needs was dropped
    a, b = _encoder(full), _encoder(out)
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])


class Recording:
    """A strategy that records what each phase sent; training adds 1 to every array (packed, as on the wire)."""

    def __init__(self):
        self.sent: list[tuple[str, int, dict, float]] = []  # phase, round, config, the arrays' sum
        self.count = 0  # a stateful part: phases seen

    def _configure(self, phase, server_round, arrays, config, grid):
        self.count += 1
        self.sent.append((phase, server_round, dict(config), float(arrays[wire.KEY].numpy().sum())))
        return [arrays]

    def configure_train(self, server_round, arrays, config, grid):
        return self._configure("train", server_round, arrays, config, grid)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self._configure("evaluate", server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        (arrays,) = replies
        return ArrayRecord({wire.KEY: Array(arrays[wire.KEY].numpy() + 1)}), None

    def aggregate_evaluate(self, server_round, replies):
        return None

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class EchoGrid:
    def send_and_receive(self, messages, timeout=None):
        return list(messages)


def _loop(out, strategy, num_rounds=4, train=None):
    def sign(arrays, server_round):
        return f"{server_round}:{float(arrays['w'].sum())}".encode()

    return RoundLoop(strategy, EchoGrid(), out, num_rounds, ConfigRecord({"run-key": "k"}),
                     lambda r: r % 2 == 0 or r == num_rounds, parts={"strategy": strategy}, timeout=1.0, sign=sign,
                     train=train)


def test_the_loop_checkpoints_every_phase_signs_every_message_and_resumes_a_pending_evaluation(tmp_path):
    strategy = Recording()
    start = RunState(arrays={"w": torch.zeros(2, 3)}, config={}, model_args={})
    state = _loop(tmp_path / "whole", strategy).run(start)
    assert state.round == 4 and state.evaluated and torch.equal(state.arrays["w"], torch.full((2, 3), 4.0))
    assert [(phase, r) for phase, r, _, _ in strategy.sent] == [
        ("train", 1), ("train", 2), ("evaluate", 2), ("train", 3), ("train", 4), ("evaluate", 4)]
    # each message carries the run's config and the signature of the arrays it sends, for its round
    assert all(config["run-key"] == "k" and config["encoder-signature"] == f"{r}:{total}".encode()
               for _, r, config, total in strategy.sent)

    # a train phase that fails in round 2, after the loop checkpointed round 1 ...
    def failing(server_round, arrays):
        if server_round == 2:
            raise RuntimeError("stopped")
        return {k: v + 1 for k, v in arrays.items()}

    stopped = Recording()
    with pytest.raises(RuntimeError, match="stopped"):
        _loop(tmp_path / "resumed", stopped, train=failing).run(start)
    assert stopped.sent == [] and _encoder(tmp_path / "resumed")["round"] == 1  # the phase replaced the strategy's
    saved = RunState.load(tmp_path / "resumed", {})
    assert saved.round == 1 and not saved.evaluated and saved.parts == {"strategy": {"count": 0}}
    # ... then resumed with the plain phase, it ends where the whole run did
    resumed = Recording()
    state = _loop(tmp_path / "resumed", resumed).run(saved)
    assert state.round == 4 and torch.equal(state.arrays["w"], torch.full((2, 3), 4.0))
    assert [(phase, r) for phase, r, _, _ in resumed.sent] == [
        ("train", 2), ("evaluate", 2), ("train", 3), ("train", 4), ("evaluate", 4)]
    assert resumed.count == 5 and RunState.load(tmp_path / "resumed", {}).parts == {"strategy": {"count": 5}}

    # killed during round 4's evaluation: the resumed run evaluates round 4 first, and trains nothing more
    pending = replace(RunState.load(tmp_path / "whole", {}), evaluated=False)
    again = Recording()
    state = _loop(tmp_path / "whole", again).run(pending)
    assert [(phase, r) for phase, r, _, _ in again.sent] == [("evaluate", 4)] and state.evaluated

"""Server aggregation: the weighted average by hand, order independence, per-site rows, rejected
replies, robust rules and sites that report different metric keys."""

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.strategy import EncoderFedAvg, TooFewSites
from shared import wire
from shared.config import FederationArgs
from shared.guard import GuardDecision, Prior
from shared.metrics import METRICS
from shared.results import ArmScores, SiteEvaluation, new_site_prior
from tests.conftest import encoder_content, flower_message

# the encoder the server sends: 8 values
SENT = {"w": torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, 1.0]]), "b": torch.tensor([0.25, 0.5])}
LAYOUT = wire.layout_of(SENT)


class Nodes:
    """A grid with these nodes connected: all that configure_train asks of it."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def _moved(by, state=SENT):
    return {k: v + by for k, v in state.items()}


def _reply(site, node, weight, arrays, phase="train", **metrics):
    """A reply from `site`; `arrays` a state dict (packed as the sites do) or a raw ArrayRecord."""
    content = RecordDict({
        "metrics": MetricRecord({"num-examples": weight, **metrics}),
        "site": ConfigRecord({"name": site} if site else {}),
    })
    if arrays is not None:
        content["arrays"] = arrays if isinstance(arrays, ArrayRecord) else ArrayRecord(wire.pack(arrays))
    return flower_message(content, phase, src_node_id=node, dst_node_id=1)


def _strategy(tmp_path, nodes, server_round=1, sent=SENT, strategy=None, **settings):
    """A strategy (min-train-nodes 1 unless set) that has sent `sent` to `nodes` for `server_round`."""
    minimum = settings.pop("min_train_nodes", 1)
    strategy = strategy or EncoderFedAvg(tmp_path, replace(FederationArgs(), **settings), min_train_nodes=minimum,
                                         min_evaluate_nodes=1, min_available_nodes=1)
    content = encoder_content(sent, {})
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp's runtime
    strategy.configure_train(server_round, content["arrays"], content["config"], Nodes(nodes))
    return strategy


def _state(arrays):
    return wire.unpack(arrays, LAYOUT)


def test_weighted_average_by_hand(tmp_path):
    sent = {"w": torch.tensor([[0.0, 0.0]]), "b": torch.tensor([0.0])}
    replies = [
        _reply("a", 11, 1, {"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([0.0])}, **{"val-mae": 1.0}),
        _reply("b", 12, 3, {"w": torch.tensor([[5.0, 6.0]]), "b": torch.tensor([4.0])}, **{"val-mae": 3.0}),
    ]
    arrays, metrics = _strategy(tmp_path, [11, 12], sent=sent).aggregate_train(1, replies)
    state = wire.unpack(arrays, wire.layout_of(sent))
    # (1 * [1, 2] + 3 * [5, 6]) / 4 = [4, 5]; (1 * 0 + 3 * 4) / 4 = 3
    torch.testing.assert_close(state["w"], torch.tensor([[4.0, 5.0]]))
    torch.testing.assert_close(state["b"], torch.tensor([3.0]))
    assert dict(metrics) == {"sites": 2, "num-examples": 4}  # each site's own figures are in its rows


@pytest.mark.parametrize("settings", [{}, {"aggregation": "median"}, {"aggregation": "trimmed-mean"},
                                      {"clip_update_norm": 1.0}])
def test_reply_order_does_not_change_a_bit(tmp_path, settings):
    rng = np.random.default_rng(0)
    replies = [_reply(f"site{i}", 100 + i, int(rng.integers(1, 50)),
                      {k: v + torch.from_numpy(rng.normal(size=v.shape).astype(np.float32)) for k, v in SENT.items()})
               for i in range(6)]
    results = []
    for seed in range(3):
        shuffled = replies[:]
        random.Random(seed).shuffle(shuffled)
        strategy = _strategy(tmp_path / str(seed), range(100, 106), **settings)
        arrays, _ = strategy.aggregate_train(1, shuffled)
        results.append(arrays[wire.KEY].numpy())
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_rows_are_written_by_site_with_errors_and_silent_sites(tmp_path):
    strategy = _strategy(tmp_path, [1, 2, 3, 4])
    sent = [flower_message(RecordDict(), "train", src_node_id=0, dst_node_id=node) for node in (1, 2, 3, 4)]
    strategy._sent[1, "train"] = sent
    # the SuperLink answers for a node it finds offline: the reply comes from the SuperLink itself
    unavailable = Message(Error(code=0, reason="Node Unavailable"), reply_to=flower_message(
        RecordDict(), "train", src_node_id=0, dst_node_id=1))
    unavailable.metadata.__dict__["_reply_to_message_id"] = sent[3].metadata.message_id
    strategy.aggregate_train(1, [_reply("b", 2, 1, _moved(1.0)), _reply("a", 1, 1, _moved(3.0)), unavailable])
    rows = json.loads((tmp_path / "per_site.json").read_text())
    assert [(r["site"], r["node_id"], r["round"], r["phase"], r.get("error")) for r in rows] == [
        ("a", 1, 1, "train", None), ("b", 2, 1, "train", None),
        ("node-3", 3, 1, "train", "no reply within round-timeout"), ("node-4", 4, 1, "train", "Node Unavailable")]
    assert [r["node_id"] for r in strategy.log.missing()] == [3, 4]


# one site of five misbehaves; the honest four moved every value by 0.1, 0.2, 0.3, 0.4 with
# 1, 2, 3, 4 training windows: their FedAvg moves it by (0.1 + 0.4 + 0.9 + 1.6) / 10 = 0.3
HONEST = {"a": (11, 1, 0.1), "b": (12, 2, 0.2), "d": (14, 3, 0.3), "e": (15, 4, 0.4)}
BAD = {  # site "c", node 13: (windows, arrays, the recorded reason)
    "nan": (5, {"w": SENT["w"].clone().index_put_((torch.tensor(1), torch.tensor(2)), torch.tensor(float("nan"))),
                "b": SENT["b"]}, "rejected: non-finite values in w"),
    "inf": (5, {"w": SENT["w"], "b": torch.tensor([float("inf"), 0.0])}, "rejected: non-finite values in b"),
    "x100": (5, _moved(100 * 0.3), "rejected: update norm 84.85 above max-update-norm 2"),  # 30 x sqrt(8)
    "short": (5, ArrayRecord({wire.KEY: torch.zeros(7)}), "rejected: packed array: torch.float32 (7,), the layout "
                                                          "needs float32 (8,)"),
    "one element": (5, ArrayRecord({wire.KEY: torch.zeros(1)}), "rejected: packed array: torch.float32 (1,)"),
    "float64": (5, ArrayRecord({wire.KEY: torch.zeros(8, dtype=torch.float64)}), "rejected: packed array: "
                                                                                  "torch.float64 (8,)"),
    "unpacked": (5, ArrayRecord(_moved(0.3)), "rejected: expected one packed array 'flat'"),
    "huge count": (1e9, _moved(0.3), "rejected: num-examples 1000000000 above max-train-windows 1000"),
    "negative count": (-5, _moved(0.3), "rejected: num-examples -5 is not a positive whole number"),
    "zero count": (0, _moved(0.3), "rejected: num-examples 0 is not a positive whole number"),
    "fractional count": (2.5, _moved(0.3), "rejected: num-examples 2.5 is not a positive whole number"),
}


def _honest_replies():
    return [_reply(site, node, windows, _moved(by)) for site, (node, windows, by) in HONEST.items()]


@pytest.mark.parametrize("kind", list(BAD))
def test_one_bad_site_of_five_is_rejected_and_the_honest_four_are_averaged(tmp_path, kind, capsys):
    strategy = _strategy(tmp_path, [11, 12, 13, 14, 15], max_update_norm=2.0, max_train_windows=1000)
    windows, arrays, reason = BAD[kind]
    replies = _honest_replies()
    replies.insert(2, _reply("c", 13, windows, arrays, **{"val-mae": 1.0}))

    arrays, metrics = strategy.aggregate_train(1, replies)

    state = _state(arrays)
    assert all(torch.isfinite(v).all() for v in state.values())
    torch.testing.assert_close(state, _moved(0.3))
    assert dict(metrics) == {"sites": 4, "num-examples": 10}
    assert [strategy.log.site_of(m) for m in strategy.accepted] == ["a", "b", "d", "e"]
    (row,) = [r for r in json.loads((tmp_path / "per_site.json").read_text()) if r["site"] == "c"]
    assert row["error"].startswith(reason) and row["val-mae"] == 1.0  # the reason, and what the site sent
    assert f"no usable reply from c: {reason}" in capsys.readouterr().out


def test_too_few_usable_replies_name_the_rejected_sites(tmp_path):
    strategy = _strategy(tmp_path, [11, 12, 13, 14, 15], min_train_nodes=4)
    replies = _honest_replies()[:3] + [_reply("c", 13, 5, BAD["nan"][1]), _reply("f", 16, 0, _moved(0.1))]
    with pytest.raises(TooFewSites) as raised:
        strategy.aggregate_train(1, replies)
    assert str(raised.value) == (
        "round 1 (train): 3 sites answered, at least 4 needed (min-train-nodes); missing: "
        "c (rejected: non-finite values in w), "
        "f (rejected: num-examples 0 is not a positive whole number of training windows), "
        "node-15 (no reply within round-timeout)")  # e never answered: its node has no name yet


def test_a_site_is_weighed_by_no_more_windows_than_it_first_reported(tmp_path, capsys):
    strategy = _strategy(tmp_path, [11, 12])
    strategy.aggregate_train(1, [_reply("a", 11, 10, _moved(0.0)), _reply("b", 12, 10, _moved(0.0))])
    _strategy(tmp_path, [11, 12], server_round=2, strategy=strategy)

    arrays, metrics = strategy.aggregate_train(2, [_reply("a", 11, 30, _moved(1.0)), _reply("b", 12, 10, _moved(0.0))])

    # weighed 10 and 10: (10 * 1 + 10 * 0) / 20 = 0.5 (the claimed 30 would give 0.75)
    torch.testing.assert_close(_state(arrays), _moved(0.5))
    assert metrics["num-examples"] == 20
    assert "a claims 30 training windows, more than its first 10; weighed as 10" in capsys.readouterr().out


def test_a_resumed_strategy_keeps_the_sites_first_window_counts(tmp_path):
    strategy = _strategy(tmp_path, [11, 12])
    strategy.aggregate_train(1, [_reply("a", 11, 10, _moved(0.0)), _reply("b", 12, 10, _moved(0.0))])
    state = json.loads(json.dumps(strategy.state_dict()))  # as a checkpoint turns keys into strings
    resumed = EncoderFedAvg(tmp_path, min_train_nodes=1, min_available_nodes=1)
    resumed.load_state_dict(state)
    _strategy(tmp_path, [11, 12], server_round=2, strategy=resumed)
    arrays, _ = resumed.aggregate_train(2, [_reply("a", 11, 30, _moved(1.0)), _reply("b", 12, 10, _moved(0.0))])
    torch.testing.assert_close(_state(arrays), _moved(0.5))


@pytest.mark.parametrize("aggregation, expected", [
    ("median", [2.0, 1.0]),  # sorted: -50, 1, 2, 6, 100 and -3, 0, 1, 5, 10
    ("trimmed-mean", [3.0, 2.0]),  # one cut at each end: (1 + 2 + 6) / 3 and (0 + 1 + 5) / 3
])
def test_robust_rules_equal_hand_computed_values(tmp_path, aggregation, expected):
    sent = {"w": torch.tensor([0.5, 0.5])}
    moved = [[1, 10], [2, -3], [100, 0], [6, 5], [-50, 1]]
    strategy = _strategy(tmp_path, range(11, 16), sent=sent, aggregation=aggregation)
    replies = [_reply(f"s{i}", 11 + i, 1 + 100 * i, {"w": sent["w"] + torch.tensor(m, dtype=torch.float32)})
               for i, m in enumerate(moved)]  # the windows do not weigh in

    arrays, _ = strategy.aggregate_train(1, replies)

    torch.testing.assert_close(wire.unpack(arrays, wire.layout_of(sent))["w"], torch.tensor(expected) + 0.5)


def test_clipping_bounds_each_update_before_averaging(tmp_path):
    sent = {"w": torch.tensor([0.0, 0.0])}
    strategy = _strategy(tmp_path, [11, 12], sent=sent, clip_update_norm=1.0)
    replies = [_reply("a", 11, 1, {"w": torch.tensor([3.0, 4.0])}),  # norm 5: scaled to [0.6, 0.8]
               _reply("b", 12, 1, {"w": torch.tensor([0.3, 0.4])})]  # norm 0.5: kept
    arrays, _ = strategy.aggregate_train(1, replies)
    torch.testing.assert_close(wire.unpack(arrays, wire.layout_of(sent))["w"], torch.tensor([0.45, 0.6]))


def test_sites_with_other_metric_keys_aggregate_and_keep_their_own_rows(tmp_path):
    strategy = _strategy(tmp_path, [11, 12, 13])
    replies = [_reply("a", 11, 1, _moved(0.1), **{"val-mae": 1.0, "val-mae-probe": 1.2, "epochs": 3}),
               _reply("b", 12, 1, _moved(0.2), **{"val-mae": 2.0, "val-mae-probe": 2.2, "epochs": 4, "extra": 7.0}),
               _reply(None, 13, 2, _moved(0.4))]  # reports=minimal: num-examples only, no name

    arrays, metrics = strategy.aggregate_train(1, replies)

    torch.testing.assert_close(_state(arrays), _moved(0.275))  # (0.1 + 0.2 + 2 * 0.4) / 4
    assert dict(metrics) == {"sites": 3, "num-examples": 4}
    rows = {r["site"]: r for r in json.loads((tmp_path / "per_site.json").read_text())}
    assert set(rows["b"]) - set(rows["a"]) == {"extra"}
    assert set(rows["node-13"]) == {"round", "phase", "node_id", "site", "num-examples", "update-norm"}

    full = _reply("a", 11, 48, None, "evaluate", **{"federated:test-mae": 1.5, "guard:serve-federated": 1.0})
    minimal = _reply(None, 13, 1, None, "evaluate")
    assert dict(strategy.aggregate_evaluate(1, [full, minimal])) == {"sites": 2}
    rows = [r for r in json.loads((tmp_path / "per_site.json").read_text()) if r["phase"] == "evaluate"]
    assert [(r["site"], r.get("federated:test-mae")) for r in rows] == [("a", 1.5), ("node-13", None)]


def test_unusable_settings_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="aggregation must be one of fedavg, median, trimmed-mean, not 'mean'"):
        EncoderFedAvg(tmp_path, FederationArgs(aggregation="mean"))
    with pytest.raises(ValueError, match="trim-fraction"):
        EncoderFedAvg(tmp_path, FederationArgs(trim_fraction=0.5))


def test_an_evaluate_reply_whose_figures_do_not_read_back_is_rejected_and_kept_out_of_the_prior(tmp_path):
    strategy = _strategy(tmp_path, [11, 12])
    scores = ArmScores(1.0, {m: 1.0 for m in METRICS})
    evaluation = SiteEvaluation({"alone_best": scores, "federated": scores, "served": scores},
                                GuardDecision("alone_best", 1, 1, 0, 4, 1, 0.02), "naive",
                                short_history={28: Prior(1, 0, 1)})
    metrics, text = evaluation.to_reply()
    honest = _reply("a", 11, 4, None, "evaluate", **metrics)
    honest.content["site"] = ConfigRecord({"name": "a", **text})
    forged = _reply("b", 12, 4, None, "evaluate", **{**metrics, "short-history:28:won": 40.0})  # 40 wins of 1 site
    forged.content["site"] = ConfigRecord({"name": "b", **text})
    assert dict(strategy.aggregate_evaluate(1, [honest, forged])) == {"sites": 1}
    rows = {r["site"]: r for r in json.loads((tmp_path / "per_site.json").read_text()) if r["phase"] == "evaluate"}
    assert "error" not in rows["a"] and "malformed evaluation figures" in rows["b"]["error"]
    assert new_site_prior(list(rows.values())) == {28: Prior(1, 0, 1)}

"""Server aggregation: the weighted average by hand, order independence, per-site rows, checkpoints."""

import json
import random

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from server.strategy import EncoderFedAvg
from shared.results import site_table
from tests.conftest import flower_message


def _reply(site, node, weight, tensors, phase="train", **metrics):
    content = RecordDict({
        "metrics": MetricRecord({"num-examples": weight, **metrics}),
        "site": ConfigRecord({"name": site}),
    })
    if tensors is not None:
        content["arrays"] = ArrayRecord({k: torch.tensor(v) for k, v in tensors.items()})
    return flower_message(content, phase, src_node_id=node, dst_node_id=1)


def _strategy(tmp_path):
    return EncoderFedAvg(tmp_path, min_train_nodes=1, min_available_nodes=1)


def test_weighted_average_by_hand(tmp_path):
    replies = [
        _reply("a", 11, 1, {"w": [[1.0, 2.0]], "b": [0.0]}, **{"val-mae": 1.0}),
        _reply("b", 12, 3, {"w": [[5.0, 6.0]], "b": [4.0]}, **{"val-mae": 3.0}),
    ]
    arrays, metrics = _strategy(tmp_path).aggregate_train(1, replies)
    state = arrays.to_torch_state_dict()
    # (1 * [1, 2] + 3 * [5, 6]) / 4 = [4, 5]; (1 * 0 + 3 * 4) / 4 = 3
    torch.testing.assert_close(state["w"], torch.tensor([[4.0, 5.0]]))
    torch.testing.assert_close(state["b"], torch.tensor([3.0]))
    assert metrics["val-mae"] == pytest.approx(2.5)


def test_reply_order_does_not_change_a_bit(tmp_path):
    rng = np.random.default_rng(0)
    tensors = [{"w": rng.normal(size=(3, 5)).astype(np.float32)} for _ in range(6)]
    replies = [_reply(f"site{i}", 100 + i, int(rng.integers(1, 50)), t) for i, t in enumerate(tensors)]
    results = []
    for seed in range(3):
        shuffled = replies[:]
        random.Random(seed).shuffle(shuffled)
        arrays, _ = _strategy(tmp_path / str(seed)).aggregate_train(1, shuffled)
        results.append(arrays.to_torch_state_dict()["w"])
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_rows_are_written_by_site_with_errors_and_silent_sites(tmp_path):
    strategy = _strategy(tmp_path)
    sent = [flower_message(RecordDict(), "train", src_node_id=0, dst_node_id=node) for node in (1, 2, 3, 4)]
    strategy._sent[1, "train"] = sent
    # the SuperLink answers for a node it finds offline: the reply comes from the SuperLink itself
    unavailable = Message(Error(code=0, reason="Node Unavailable"), reply_to=flower_message(
        RecordDict(), "train", src_node_id=0, dst_node_id=1))
    unavailable.metadata.__dict__["_reply_to_message_id"] = sent[3].metadata.message_id
    strategy.aggregate_train(1, [_reply("b", 2, 1, {"w": [1.0]}), _reply("a", 1, 1, {"w": [3.0]}), unavailable])
    rows = json.loads((tmp_path / "per_site.json").read_text())
    assert [(r["site"], r["node_id"], r["round"], r["phase"], r.get("error")) for r in rows] == [
        ("a", 1, 1, "train", None), ("b", 2, 1, "train", None),
        ("node-3", 3, 1, "train", "no reply within round-timeout"), ("node-4", 4, 1, "train", "Node Unavailable")]
    assert [r["node_id"] for r in strategy.log.missing()] == [3, 4]


def test_site_table_uses_the_latest_evaluation_and_validation_choices():
    row = {"round": 2, "phase": "evaluate", "site": "s", "alone-choice": "auto_ets", "serve": "alone_best",
           "naive:val-mae": 9.0, "naive:test-mae": 3.0, "seasonal_naive_24:val-mae": 8.0,
           "seasonal_naive_24:test-mae": 6.0, "local_only:test-mae": 4.0, "alone_best:test-mae": 5.0,
           "federated:test-mae": 8.0, "served:test-mae": 5.0}
    (table_row,) = site_table([{**row, "round": 1, "federated:test-mae": 99.0}, row])
    assert table_row["round"] == 2
    # the best simple forecast is picked on validation (8 < 9), though naive did better on test
    assert table_row["simple"] == "seasonal_naive_24" and table_row["simple_mae"] == 6.0
    assert table_row["gain"] == pytest.approx(1 - 8.0 / 5.0) and table_row["served_gain"] == 0.0

"""What leaves a site: a train reply carries exactly the encoder's tensors (one ArrayRecord), a site name and
metrics (or, with reports = minimal, the encoder and its FedAvg weight alone); an evaluate reply no arrays."""

import json

import pytest
import torch
from flwr.app import Context, RecordDict

from client.app import app as client_app
from shared.results import GUARD_FIELDS
from shared import wire
from shared.model import Forecaster
from tests.conftest import TINY, encoder_content, flower_message

ALLOWED_TRAIN_METRICS = {"num-examples", "val-mae-probe", "val-mae", "epochs"}


def _context(tmp_path, partition_id=0):
    run_config = {**TINY, "out-dir": str(tmp_path), "state-dir": str(tmp_path / "sites")}
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition_id, "num-partitions": 3},
                   state=RecordDict(), run_config=run_config)


def _message(settings, message_type="train", server_round=1):
    model = Forecaster(settings.model)
    config = {"model-args": json.dumps(settings.model.to_dict()), "server-round": server_round, "run-key": "run"}
    return model, flower_message(encoder_content(model.encoder.state_dict(), config), message_type)


def _assert_only_records(reply, arrays: int) -> None:
    """The reply holds `arrays` ArrayRecords, one MetricRecord "metrics" and one ConfigRecord "site", nothing else."""
    assert not reply.has_error()
    content = reply.content
    assert len(content.array_records) == arrays
    assert list(content.metric_records) == ["metrics"] and list(content.config_records) == ["site"]
    assert len(content) == arrays + 2


def _assert_exactly_the_encoder(reply, model) -> None:
    """A train reply: one ArrayRecord, holding one packed array of exactly the encoder's tensors (no head tensor,
    nothing else), and otherwise only its metrics and site records."""
    _assert_only_records(reply, arrays=1)
    record = reply.content.array_records["arrays"]
    expected = model.encoder.state_dict()
    assert list(record) == [wire.KEY]
    assert record[wire.KEY].numpy().shape == (sum(t.numel() for t in expected.values()),)
    sent = wire.unpack(record, wire.layout_of(expected))
    assert list(sent) == list(expected) and not set(model.head.state_dict()) & set(sent)


def test_train_reply_holds_exactly_the_encoder(tiny_settings, tmp_path):
    model, msg = _message(tiny_settings)
    reply = client_app(msg, _context(tmp_path))

    _assert_exactly_the_encoder(reply, model)
    content = reply.content
    # besides the arrays: one site name and a fixed set of scalar metrics; no series values
    assert dict(content.config_records["site"]) == {"name": "site00"}
    metrics = dict(content.metric_records["metrics"])
    assert set(metrics) == ALLOWED_TRAIN_METRICS
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    # the head stayed at the site
    saved = torch.load(tmp_path / "sites" / "site00" / "model.pt", weights_only=True)["state_dict"]
    assert any(k.startswith("head.") for k in saved)


def test_evaluate_reply_carries_no_arrays(tiny_settings, tmp_path):
    _, msg = _message(tiny_settings, "evaluate")
    reply = client_app(msg, _context(tmp_path, partition_id=1))
    _assert_only_records(reply, arrays=0)
    assert set(reply.content.config_records["site"]) == {"name", "alone-choice", "serve"}
    assert reply.content.config_records["site"]["name"] == "site01"
    metrics = reply.content.metric_records["metrics"]
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    # the guard's figures, as the site keeps them in its guard.json
    kept = json.loads((tmp_path / "sites" / "site01" / "guard.json").read_text())
    assert {k: metrics[f"guard:{k.replace('_', '-')}"] for k in GUARD_FIELDS} == {k: kept[k] for k in GUARD_FIELDS}


def test_an_evaluate_reply_with_prior_histories_adds_a_win_and_a_loss_bit_per_length(tiny_settings, tmp_path):
    _, msg = _message(tiny_settings, "evaluate")
    context = _context(tmp_path, partition_id=1)
    context.run_config["prior-histories"] = "48 96 100000"  # the last is longer than the site's history: skipped
    reply = client_app(msg, context)
    _assert_only_records(reply, arrays=0)
    metrics = reply.content.metric_records["metrics"]
    short = {k: v for k, v in metrics.items() if k.startswith("short-history:")}
    assert set(short) == {f"short-history:{h}:{n}" for h in (48, 96) for n in ("won", "lost")}
    for h in (48, 96):  # one bit each: won, lost by more than 5 % (not both)
        won, lost = (short[f"short-history:{h}:{n}"] for n in ("won", "lost"))
        assert {won, lost} <= {0.0, 1.0} and won + lost <= 1


def test_deployment_node_needs_a_state_folder(tiny_settings, tmp_path):
    _, msg = _message(tiny_settings)
    context = Context(run_id=1, node_id=7, node_config={"data-path": str(tmp_path / "x.csv")}, state=RecordDict(),
                      run_config={**TINY})
    with pytest.raises(ValueError, match="state-dir"):
        client_app(msg, context)


@pytest.mark.parametrize("where", ["run", "node"])
def test_minimal_reports_send_only_the_encoder_and_its_weight(tiny_settings, tmp_path, where):
    context = _context(tmp_path)
    if where == "run":
        context.run_config["reports"] = "minimal"
    else:  # a site may reduce what it sends whatever the run config says
        context.node_config["reports"] = "minimal"
    model, msg = _message(tiny_settings)
    reply = client_app(msg, context)
    _assert_exactly_the_encoder(reply, model)
    assert dict(reply.content.metric_records["metrics"]) == {"num-examples": reply.content["metrics"]["num-examples"]}
    assert reply.content["metrics"]["num-examples"] > 1
    assert dict(reply.content.config_records["site"]) == {}

    _, msg = _message(tiny_settings, "evaluate")
    reply = client_app(msg, context)
    _assert_only_records(reply, arrays=0)
    assert dict(reply.content.metric_records["metrics"]) == {"num-examples": 1}
    assert dict(reply.content.config_records["site"]) == {}
    # the site still decided what it serves, and kept it
    assert (tmp_path / "sites" / "site00" / "guard.json").exists()


def test_an_unknown_reports_mode_is_refused(tiny_settings, tmp_path):
    context = _context(tmp_path)
    context.node_config["reports"] = "some"
    _, msg = _message(tiny_settings)
    with pytest.raises(ValueError, match="reports must be 'full' or 'minimal'"):
        client_app(msg, context)

"""Signed encoders end to end: the ServerApp signs what it sends, a site with a trusted key refuses anything else
before touching its state, and the server records why."""

import json

import pytest
import torch
from flwr.app import Context, RecordDict

from client.app import app as client_app
from client.app import trusted_key
from server.strategy import TooFewSites
from shared import wire
from shared.config import Settings
from shared.signing import SignatureError, generate_signing_key, sign_encoder
from tests.conftest import TINY, encoder_content, flower_message
from tests.test_rounds import SITES, FakeGrid, _run

STATE_FILES = ("model.pt", "heads.pt", "guard.json", "alone.json", "local_only.pt")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return generate_signing_key(root / "coordinator"), generate_signing_key(root / "other")


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory, keys):
    """One signed round (train and evaluate) that every site verified."""
    tmp = tmp_path_factory.mktemp("signed")
    (private, public), _ = keys
    grid = FakeGrid(tmp / "sites")
    out = _run(tmp, "run", grid, **{"num-server-rounds": 1, "sign-key": str(private), "verify-key": str(public)})
    return {"out": out, "sites": tmp / "sites", "run_config": grid.run_config}


def test_a_signed_run_is_accepted_by_every_site(signed_run):
    rows = json.loads((signed_run["out"] / "per_site.json").read_text())
    assert sorted((r["phase"], r["site"]) for r in rows) == [
        ("evaluate", "site00"), ("evaluate", "site01"), ("train", "site00"), ("train", "site01")]
    assert not any("error" in r for r in rows)
    for site in ("site00", "site01"):
        assert all((signed_run["sites"] / site / name).exists() for name in STATE_FILES)


def _message(signed_run, signer, change_weight=False, message_type="train", relabel=False, signed_run_key=None):
    """The run's encoder sent for round 2, signed by `signer` (None: unsigned) for this run (or `signed_run_key`),
    one weight changed if asked, or (relabel) the same packed values with two same-shaped tensors' names swapped
    in the layout."""
    run_key = torch.load(signed_run["out"] / "server_state.pt", weights_only=True)["run_key"]
    encoder = {k: v.clone() for k, v in
               torch.load(signed_run["out"] / "global_encoder.pt", weights_only=True)["encoder"].items()}
    config = {"model-args": json.dumps(Settings.from_config(signed_run["run_config"]).model.to_dict()),
              "server-round": 2, "run-key": run_key}
    if signer is not None:
        config["encoder-signature"] = sign_encoder(signer, encoder, 2, run_key=signed_run_key or run_key)
    if change_weight:
        weight = encoder[sorted(encoder)[0]].view(-1)
        weight[0] += 1e-3
    content = encoder_content(encoder, config)
    if relabel:
        layout = wire.loads(str(content["config"][wire.LAYOUT]))
        i, j = next((i, j) for i in range(len(layout)) for j in range(i + 1, len(layout))
                    if layout[i][1] == layout[j][1] and not torch.equal(encoder[layout[i][0]], encoder[layout[j][0]]))
        layout[i], layout[j] = (layout[j][0], layout[i][1]), (layout[i][0], layout[j][1])
        content["config"][wire.LAYOUT] = wire.dumps(layout)
    return flower_message(content, message_type, src_node_id=0, dst_node_id=11)


def _context(signed_run):
    return Context(run_id=1, node_id=11, node_config={"partition-id": SITES[11], "num-partitions": 2},
                   state=RecordDict(), run_config={**signed_run["run_config"], "state-dir": str(signed_run["sites"])})


def _state(signed_run):
    folder = signed_run["sites"] / "site00"
    return {name: (folder / name).read_bytes() for name in STATE_FILES}


@pytest.mark.parametrize("message_type", ["train", "evaluate"])
@pytest.mark.parametrize("case, match", [
    ("tampered", "signature does not verify for round 2: the encoder does not come from the coordinator whose key"),
    ("relabelled", "signature does not verify for round 2"),
    ("other key", "signature does not verify for round 2"),
    ("other run", "signature does not verify for round 2: .* signed for another round or run"),
    ("unsigned", "unsigned encoder: round 2 came without a signature"),
])
def test_a_forged_encoder_is_refused_and_the_state_is_untouched(signed_run, keys, case, match, message_type):
    (private, public), (other, _) = keys
    signer = {"tampered": private, "relabelled": private, "other key": other, "other run": private,
              "unsigned": None}[case]
    msg = _message(signed_run, signer, change_weight=case == "tampered", message_type=message_type,
                   relabel=case == "relabelled", signed_run_key="another-run" if case == "other run" else None)
    before = _state(signed_run)
    with pytest.raises(SignatureError, match=match) as refused:
        client_app(msg, _context(signed_run))
    assert str(public) in str(refused.value)  # names the key the site trusts
    assert _state(signed_run) == before


def test_the_same_encoder_signed_by_the_coordinator_is_accepted(signed_run, keys):
    """The control for the refusals above: only the forgery made the difference."""
    (private, _), _ = keys
    before = _state(signed_run)
    reply = client_app(_message(signed_run, private), _context(signed_run))
    assert not reply.has_error() and "arrays" in reply.content.array_records
    after = _state(signed_run)
    assert after["heads.pt"] != before["heads.pt"] and after["model.pt"] != before["model.pt"]


def test_a_site_trusting_another_key_is_reported_and_the_others_go_on(tmp_path, keys, capsys):
    """site01's node config trusts another key: it refuses every round, and the server says why."""
    (private, public), (_, other_public) = keys
    grid = FakeGrid(tmp_path / "sites", node_config={12: {"verify-key": str(other_public)}})
    out = _run(tmp_path, "run", grid, **{"num-server-rounds": 1, "min-train-nodes": 1, "sign-key": str(private),
                                         "verify-key": str(public)})
    rows = json.loads((out / "per_site.json").read_text())
    refused = [r for r in rows if "error" in r]
    assert [(r["phase"], r["node_id"]) for r in refused] == [("train", 12), ("evaluate", 12)]
    assert all("SignatureError" in r["error"] and str(other_public) in r["error"] for r in refused)
    assert {r["site"] for r in rows if "error" not in r} == {"site00"}
    printed = capsys.readouterr().out
    assert "round 1 (train): no usable reply from node-12: <class 'shared.signing.SignatureError'>" in printed
    assert not (tmp_path / "sites" / "site01").exists()  # refused before it wrote anything


def test_sites_refuse_an_unsigned_run(tmp_path, keys):
    (_, public), _ = keys
    with pytest.raises(TooFewSites, match="0 sites answered"):
        _run(tmp_path, "run", FakeGrid(tmp_path / "sites"), **{"verify-key": str(public)})
    rows = json.loads((tmp_path / "run" / "per_site.json").read_text())
    assert len(rows) == 2 and all("unsigned encoder: round 1" in r["error"] for r in rows)


def test_a_deployed_site_trusts_only_its_own_node_config(tmp_path):
    settings = Settings.from_config({**TINY, "verify-key": "/server/chose/this.pub"})
    node = {"data-path": str(tmp_path / "series.csv"), "state-dir": str(tmp_path / "state")}

    def context(**extra):
        return Context(run_id=1, node_id=7, node_config={**node, **extra}, state=RecordDict(), run_config={})

    assert trusted_key(context(**{"verify-key": "/site/signing.pub"}), settings) == "/site/signing.pub"
    with pytest.raises(ValueError, match="only the key in its own node config: add verify-key="):
        trusted_key(context(), settings)
    assert trusted_key(context(), Settings.from_config(TINY)) == ""  # no key anywhere: unsigned accepted
    simulated = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2},
                        state=RecordDict(), run_config={})
    assert trusted_key(simulated, settings) == "/server/chose/this.pub"

"""A roster of organizations: only replies signed, for this round and run, by a listed site's key count; and
an encoder signed for another run is refused at the site. Replies are made by the ClientApp's own `_reply`
and aggregated by `EncoderFedAvg`, with no Flower process."""

from types import SimpleNamespace

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import _reply, _unpack
from server.strategy import EncoderFedAvg, TooFewSites
from shared import wire
from shared.config import Settings
from shared.signing import (SIGNATURE, Reply, Roster, SignatureError, generate_signing_key, load_private_key,
                            reply_records, roster_line, sign_encoder, sign_reply)
from tests.conftest import TINY, encoder_content, flower_message
from tests.test_strategy import Nodes

SENT = {"w": torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, 1.0]]), "b": torch.tensor([0.25, 0.5])}
RUN = "run-1"
NODES = {"a": 11, "b": 12, "mallory": 13}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Each organization's reply key file (a and b on the roster, mallory not) and the roster file."""
    folder = tmp_path_factory.mktemp("keys")
    paths = {name: generate_signing_key(folder / name)[0] for name in NODES}
    roster = folder / "roster.txt"
    roster.write_text("# the federation\n" + "".join(
        roster_line(name, load_private_key(paths[name]).public_key()) for name in ("a", "b")))
    return paths, Roster.load(roster)


def _sent(server_round=1, run=RUN, phase="train", node=11):
    """The message the server sends `node`."""
    return flower_message(encoder_content(SENT, {"run-key": run, "server-round": server_round}), phase,
                          src_node_id=0, dst_node_id=node)


def _site_reply(name, key, by=0.0, weight=10, server_round=1, run=RUN, phase="train", node=None, reports="full"):
    """`name`'s reply as the ClientApp makes it, signed with the key file `key` (None: unsigned)."""
    node = NODES.get(name, 14) if node is None else node
    context = Context(run_id=1, node_id=node, node_config={"reply-key": str(key)} if key else {},
                      state=RecordDict(), run_config={})
    arrays = {k: v + by for k, v in SENT.items()} if phase == "train" else None
    return _reply(_sent(server_round, run, phase, node), context, SimpleNamespace(name=name),
                  {"num-examples": weight, "val-mae": 1.0 + by}, arrays=arrays, reports=reports)


def _strategy(tmp_path, roster, server_round=1, phase="train", min_nodes=1):
    strategy = EncoderFedAvg(tmp_path, roster=roster, min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes,
                             min_available_nodes=1)
    content = encoder_content(SENT, {"run-key": RUN})
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp's runtime
    configure = strategy.configure_train if phase == "train" else strategy.configure_evaluate
    configure(server_round, content["arrays"], content["config"], Nodes(NODES.values()))
    return strategy


def _aggregate(strategy, replies, server_round=1):
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return wire.unpack(arrays, wire.layout_of(SENT)), dict(metrics)


def _rejected(strategy):
    """{site: reason} of the replies the strategy rejected (sampled nodes that sent nothing left out)."""
    return {row["site"]: row["error"] for row in strategy.log.rows if row.get("error", "").startswith("rejected")}


def _honest(paths):
    return [_site_reply("a", paths["a"], by=1.0, weight=10), _site_reply("b", paths["b"], by=3.0, weight=30)]


def test_signed_replies_aggregate_exactly_as_unsigned_ones(tmp_path, keys):
    paths, roster = keys
    signed, signed_metrics = _aggregate(_strategy(tmp_path / "signed", roster), _honest(paths))
    unsigned = [_site_reply("a", None, by=1.0, weight=10), _site_reply("b", None, by=3.0, weight=30)]
    plain, plain_metrics = _aggregate(_strategy(tmp_path / "plain", None), unsigned)
    assert all(torch.equal(signed[k], plain[k]) for k in SENT) and signed_metrics == plain_metrics
    torch.testing.assert_close(signed["b"], SENT["b"] + 2.5)  # (10 x 1 + 30 x 3) / 40


@pytest.mark.parametrize("outsider", ["own name", "a roster name"])
def test_an_outsider_is_rejected_and_the_roster_sites_alone_aggregate(tmp_path, keys, capsys, outsider):
    paths, roster = keys
    name = "mallory" if outsider == "own name" else "a"
    intruder = _site_reply(name, paths["mallory"], by=100.0, weight=1000, node=13)
    strategy = _strategy(tmp_path, roster)
    state, metrics = _aggregate(strategy, [intruder, *_honest(paths)])
    expected, _ = _aggregate(_strategy(tmp_path / "alone", roster), _honest(paths))
    assert all(torch.equal(state[k], expected[k]) for k in SENT) and metrics == {"sites": 2, "num-examples": 40}
    reason = ("rejected: signed as 'mallory', a site not on" if outsider == "own name" else
              "rejected: the signature does not verify with the key")
    row = next(r for r in strategy.log.rows if r["node_id"] == 13)
    assert row["error"].startswith(reason) and str(roster.path) in row["error"]
    assert [r["node_id"] for r in strategy.log.missing()] == [13]  # every other sampled node's reply counted
    assert "no usable reply from" in capsys.readouterr().out


def test_an_unsigned_reply_is_rejected(tmp_path, keys):
    paths, roster = keys
    strategy = _strategy(tmp_path, roster)
    _, metrics = _aggregate(strategy, [_site_reply("a", None), _site_reply("b", paths["b"])])
    assert metrics["sites"] == 1
    assert _rejected(strategy) == {"a": f"rejected: unsigned reply: {roster.path} admits only replies signed by a "
                                      "site it lists"}


@pytest.mark.parametrize("replay", [{"server_round": 1}, {"run": "another-run"}])
def test_a_reply_from_another_round_or_run_is_rejected(tmp_path, keys, replay):
    paths, roster = keys
    server_round = 2 if "server_round" in replay else 1
    strategy = _strategy(tmp_path, roster, server_round=server_round)
    replayed = _site_reply("a", paths["a"], **{"server_round": server_round, **replay})
    _, metrics = _aggregate(strategy, [replayed, _site_reply("b", paths["b"], server_round=server_round)],
                            server_round)
    assert metrics["sites"] == 1
    assert _rejected(strategy)["a"].startswith("rejected: the signature does not verify with the key")


def test_a_reply_changed_after_signing_is_rejected(tmp_path, keys):
    paths, roster = keys
    changed = _site_reply("a", paths["a"], weight=10)
    changed.content["metrics"] = MetricRecord({"num-examples": 20, "val-mae": 1.0})  # a doubled weight
    strategy = _strategy(tmp_path, roster)
    _aggregate(strategy, [changed, _site_reply("b", paths["b"])])
    assert "changed after signing" in _rejected(strategy)["a"]


def test_a_site_claiming_another_sites_name_is_rejected(tmp_path, keys):
    paths, roster = keys
    strategy = _strategy(tmp_path, roster)
    as_a = _site_reply("a", paths["b"], node=12)  # b signs as a
    _, metrics = _aggregate(strategy, [as_a, _site_reply("a", paths["a"])])
    assert metrics["sites"] == 1
    row = next(r for r in strategy.log.rows if r["node_id"] == 12)
    assert row["error"] == "rejected: signed with the key of 'b' but names itself 'a'"


def test_a_signer_naming_another_site_in_its_reply_is_rejected(tmp_path, keys):
    """b signs for itself a reply whose site record (what per_site.json and the window cap go by) names a."""
    paths, roster = keys
    reply = _site_reply("a", None, node=12)
    signed = Reply(RUN, 1, "train", "b", reply_records(reply.content))
    reply.content[SIGNATURE] = ConfigRecord({"site": "b", "signature": sign_reply(paths["b"], signed)})
    strategy = _strategy(tmp_path, roster)
    _, metrics = _aggregate(strategy, [reply, _site_reply("a", paths["a"])])
    assert metrics["sites"] == 1
    assert _rejected(strategy) == {"a": "rejected: signed by 'b' but names itself 'a'"}
    assert next(r for r in strategy.log.rows if r["node_id"] == 12)["error"] == _rejected(strategy)["a"]


def test_one_site_counts_once_per_round(tmp_path, keys):
    paths, roster = keys
    strategy = _strategy(tmp_path, roster)
    _, metrics = _aggregate(strategy, [_site_reply("a", paths["a"], node=11), _site_reply("a", paths["a"], node=15)])
    assert metrics == {"sites": 1, "num-examples": 10}
    assert [(r["node_id"], r["error"]) for r in strategy.log.missing() if r["node_id"] in (11, 15)] == [
        (15, "rejected: a already replied in this round (from another node)")]


def test_minimal_reports_are_signed_too(tmp_path, keys):
    paths, roster = keys
    replies = [_site_reply("a", paths["a"], reports="minimal"), _site_reply("b", paths["b"], reports="minimal")]
    assert all("name" not in r.content["site"] and r.content[SIGNATURE]["site"] for r in replies)
    _, metrics = _aggregate(_strategy(tmp_path, roster), replies)
    assert metrics["sites"] == 2


def test_evaluate_replies_are_checked_and_the_outsider_counts_as_missing(tmp_path, keys):
    paths, roster = keys
    strategy = _strategy(tmp_path, roster, phase="evaluate", min_nodes=2)
    replies = [_site_reply(n, paths[n], phase="evaluate") for n in NODES]
    assert dict(strategy.aggregate_evaluate(1, replies)) == {"sites": 2}
    assert [r["site"] for r in strategy.log.missing()] == ["mallory"]
    strategy = _strategy(tmp_path / "two", roster, phase="evaluate", min_nodes=2)
    with pytest.raises(TooFewSites, match="1 sites answered.*mallory"):
        strategy.aggregate_evaluate(1, [_site_reply("a", paths["a"], phase="evaluate"),
                                        _site_reply("mallory", paths["mallory"], phase="evaluate")])


def test_an_encoder_signed_for_another_run_is_refused_at_the_site(tmp_path):
    private, public = generate_signing_key(tmp_path)
    settings = Settings.from_config(TINY)
    context = Context(run_id=1, node_id=11, node_config={"verify-key": str(public), "data-path": "x.csv"},
                      state=RecordDict(), run_config={})

    def message(signed_run):
        config = {"model-args": "{}", "server-round": 2, "run-key": RUN,
                  "encoder-signature": sign_encoder(private, SENT, 2, run_key=signed_run)}
        return flower_message(encoder_content(SENT, config), "train", src_node_id=0, dst_node_id=11)

    with pytest.raises(SignatureError, match="signature does not verify for round 2.*another round or run"):
        _unpack(message("another-run"), context, settings)
    _, arrays, server_round, run = _unpack(message(RUN), context, settings)  # the control: signed for this run
    assert (server_round, run) == (2, RUN) and all(torch.equal(arrays[k], SENT[k]) for k in SENT)


@pytest.mark.parametrize("text, match", [
    ("", "lists no site"),
    ("a\n", r":1: expected 'NAME ssh-ed25519 KEY'"),
    ("a ssh-ed25519 notbase64\n", r":1: a: not an OpenSSH public key"),
    ("# header\na {a}\na {b}\n", r":3: a is listed twice"),
    ("a {a}\nb {a}\n", r":2: b has the same key as a"),
])
def test_a_bad_roster_is_a_clear_error(tmp_path, text, match):
    ssh = {n: roster_line(n, Ed25519PrivateKey.generate().public_key()).split(" ", 1)[1].strip() for n in "ab"}
    path = tmp_path / "roster.txt"
    path.write_text(text.format(**ssh))
    with pytest.raises(ValueError, match=match):
        Roster.load(path)


def test_a_roster_of_another_key_type_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ssh = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (tmp_path / "roster.txt").write_text(f"a {ssh}\n")
    with pytest.raises(ValueError, match=":1: a: not an Ed25519 key"):
        Roster.load(tmp_path / "roster.txt")
    with pytest.raises(FileNotFoundError, match="nothing.txt: roster file not found"):
        Roster.load(tmp_path / "nothing.txt")

"""Faults, with the real ServerApp and ClientApp in one process (simulations.local, a wrapper around one
node's ClientApp playing the faulty site) or the ClientApp alone.

- One site of five sends a bad train reply (NaN, x100 update, wrong shape, absurd window count): the round
  completes without it (its reason in per_site.json, the site in summary.json `missing`) and the global
  encoder is the honest sites' aggregate bit for bit; a x100 update under aggregation = median is kept,
  yet the encoder stays within the honest updates' spread of the honest aggregate.
- Three sites of ten fail: the round completes with min-train-nodes 7 and reports them; with 8 the run
  stops (TooFewSites).
- A site's damaged state (heads.pt, model.pt) and a non-finite encoder it receives.
- Under SecAgg+, a site bounds its own update and refuses non-finite values before masking.

A stopped and resumed server ending with the uninterrupted run's encoder is tests/test_rounds.py's.
"""

import json
import math
import re
import shutil

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from client.app import app as client_app
from client.forecast import load_served
from client.secagg import bounded, legacy_fit, to_legacy
from server.app import main as server_main
from server.secagg import ARRAY_KEYS, CLIPPING_RANGE, MAX_WEIGHT
from server.strategy import TooFewSites
from shared import wire
from shared.checkpoint import load_model, load_torch
from shared.config import Settings
from shared.model import Forecaster
from shared.sealing import SealError, generate_state_key
from shared.updates import update_norm
from simulations.local import LocalGrid
from tests.conftest import TINY, encoder_content, flower_message

# one round of five sites; local-epochs 1 so that every site moves the encoder
RUN = {**TINY, "demo-sites": 5, "num-server-rounds": 1, "local-epochs": 1, "stat-models": "", "min-train-nodes": 4}
BAD = 5  # the faulty site's node (site04)
MAX_UPDATE_NORM = 10.0  # honest updates here are about 1 long, a x100 one about 100


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """The pretrained encoder and the sites' alone options, computed once for the module's runs."""
    tmp = tmp_path_factory.mktemp("caches")
    return {"cache-dir": str(tmp / "pretrained"), "alone-dir": str(tmp / "alone")}


def _run(out, caches, apps=None, **changes):
    run_config = {**RUN, "out-dir": str(out), **caches, **changes}
    server_main(LocalGrid(run_config, int(run_config["demo-sites"]), apps=apps),
                Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    return out


def _flat(content: RecordDict) -> torch.Tensor:
    return torch.from_numpy(content["arrays"][wire.KEY].numpy().copy())


def _encoder(out) -> torch.Tensor:
    """The global encoder, flat in the order it travels."""
    return wire.pack(torch.load(out / "global_encoder.pt", weights_only=True)["encoder"])[wire.KEY]


def _wrapped(change):
    """The App, `change(sent, reply)` applied to its train replies (`sent`: the flat encoder it received)."""
    def app(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        if msg.metadata.message_type == MessageType.TRAIN:
            change(_flat(msg.content), reply)
        return reply
    return app


def _fails(msg: Message, context: Context) -> Message:
    raise RuntimeError("the site's machine went down")


@pytest.fixture(scope="module")
def honest(tmp_path_factory, caches):
    """The run without the faulty site (it fails), and the encoder sent and each honest site's update (flat)."""
    sent, updates = {}, {}

    def record(sent_flat, reply):
        sent["encoder"] = sent_flat
        updates[reply.metadata.src_node_id] = _flat(reply.content).double() - sent_flat.double()

    apps = {BAD: _fails, **{node: _wrapped(record) for node in (1, 2, 3, 4)}}
    out = _run(tmp_path_factory.mktemp("honest"), caches, apps=apps)
    return {"out": out, "sent": sent["encoder"], "updates": torch.stack([updates[n] for n in sorted(updates)])}


def _set_flat(reply: Message, flat: torch.Tensor) -> None:
    reply.content["arrays"] = ArrayRecord({wire.KEY: flat})


def _nan(sent, reply):
    flat = _flat(reply.content)
    flat[0] = math.nan
    _set_flat(reply, flat)


def _times_100(sent, reply):
    _set_flat(reply, sent + 100 * (_flat(reply.content) - sent))


def _wrong_shape(sent, reply):
    _set_flat(reply, _flat(reply.content)[:-1])


def _many_windows(sent, reply):
    reply.content["metrics"]["num-examples"] = 10**9


def _rows(out, name):
    return json.loads((out / name).read_text())


@pytest.mark.parametrize("change, settings, reason", [
    (_nan, {}, r"^rejected: non-finite values in "),
    (_times_100, {"max-update-norm": MAX_UPDATE_NORM}, r"^rejected: update norm [\d.]+ above max-update-norm 10$"),
    (_wrong_shape, {}, r"^rejected: packed array: torch.float32 \(\d+,\), the layout needs float32 \(\d+,\)$"),
    (_many_windows, {"max-train-windows": 10_000},
     r"^rejected: num-examples 1000000000 above max-train-windows 10000$"),
], ids=["nan", "times-100", "wrong-shape", "many-windows"])
def test_a_bad_reply_is_rejected_with_its_reason_and_the_encoder_is_the_honest_sites(
        tmp_path, caches, honest, change, settings, reason):
    out = _run(tmp_path, caches, apps={BAD: _wrapped(change)}, **settings)

    train = [r for r in _rows(out, "per_site.json") if r["phase"] == "train"]
    assert [r["site"] for r in train] == ["site00", "site01", "site02", "site03", "site04"]
    assert [r["site"] for r in train if "error" in r] == ["site04"]
    assert [r["site"] for r in _rows(out, "summary.json")["missing"]] == ["site04"]  # and it still evaluated
    assert re.match(reason, train[-1]["error"]), train[-1]["error"]
    encoder = _encoder(out)
    assert torch.isfinite(encoder).all()
    assert torch.equal(encoder, _encoder(honest["out"]))  # the faulty reply changed nothing
    assert honest["updates"].norm(dim=1).max() < MAX_UPDATE_NORM / 5  # the bound is far above honest updates
    # each accepted reply's row carries its update's norm, the figure a coordinator sets max-update-norm from
    norms = [r["update-norm"] for r in train if "error" not in r]
    assert norms == pytest.approx(honest["updates"].norm(dim=1).tolist(), rel=1e-6)
    assert "update-norm" not in train[-1]


def test_under_median_a_x100_update_moves_the_encoder_no_further_than_the_honest_updates_spread(
        tmp_path, caches, honest):
    out = _run(tmp_path / "median", caches, apps={BAD: _wrapped(_times_100)}, aggregation="median")
    assert _rows(out, "summary.json")["missing"] == []  # median needs no rejection
    honest_updates = honest["updates"].sort(dim=0).values  # 4 honest sites, per coordinate
    update = _encoder(out).double() - honest["sent"].double()
    assert torch.isfinite(update).all()
    # the median of five values, one of them arbitrary, lies between the 2nd and 3rd of the other four
    assert (update >= honest_updates[1] - 1e-6).all() and (update <= honest_updates[2] + 1e-6).all()
    spread = float((honest_updates[-1] - honest_updates[0]).norm())
    distance = float((_encoder(out).double() - _encoder(honest["out"]).double()).norm())
    assert distance <= spread

    # the same site under plain FedAvg with no bound: far off
    plain = _run(tmp_path / "fedavg", caches, apps={BAD: _wrapped(_times_100)})
    assert float((_encoder(plain).double() - _encoder(honest["out"]).double()).norm()) > 5 * spread


def test_thirty_percent_of_sites_failing_are_reported_and_too_many_stop_the_run(tmp_path, caches):
    ten = {"demo-sites": 10, "alone-dir": caches["alone-dir"] + "-10"}
    failing = {node: _fails for node in (8, 9, 10)}
    out = _run(tmp_path / "enough", caches, apps=failing, **ten, **{"min-train-nodes": 7})
    summary = _rows(out, "summary.json")
    assert [r["site"] for r in summary["sites"]] == [f"site0{i}" for i in range(7)]
    assert sorted((r["phase"], r["site"]) for r in summary["missing"]) == [
        (phase, f"node-{n}") for phase in ("evaluate", "train") for n in (10, 8, 9)]
    assert all("the site's machine went down" in r["error"] for r in summary["missing"])
    assert torch.isfinite(_encoder(out)).all()

    stop = (r"round 1 \(train\): 7 sites answered, at least 8 needed \(min-train-nodes\); "
            r"missing: node-10 \(.*went down.*\), node-8 \(.*\), node-9 \(.*\)$")
    with pytest.raises(TooFewSites, match=stop):
        _run(tmp_path / "too-few", caches, apps=failing, **ten, **{"min-train-nodes": 8})
    assert not (tmp_path / "too-few" / "server_state.pt").exists()


# ---------------------------------------------------------------- a site's own state


def _site(tmp_path, root="sites", **node):
    run_config = {**TINY, "stat-models": "", "out-dir": str(tmp_path), "state-dir": str(tmp_path / root)}
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3, **node},
                   state=RecordDict(), run_config=run_config)


def _send(context, server_round, phase="train", change=None):
    """The ClientApp's reply to the round's encoder (always the same one here; `change` alters it first)."""
    settings = Settings.from_config(context.run_config)
    torch.manual_seed(0)
    encoder = Forecaster(settings.model).encoder.state_dict()
    if change:
        change(encoder)
    config = {"model-args": json.dumps(settings.model.to_dict()), "server-round": server_round, "run-key": "run"}
    reply = client_app(flower_message(encoder_content(encoder, config), phase), context)
    assert not reply.has_error()
    return reply


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_damaged_heads_file_is_set_aside_loudly_and_the_site_starts_a_fresh_head(tmp_path, capsys):
    context = _site(tmp_path)
    state = tmp_path / "sites" / "site00"
    _send(context, 1)
    _send(context, 1, "evaluate")
    before = _files(state)
    fresh = tmp_path / "fresh" / "site00"  # the same state without any heads.pt: what a fresh head gives
    shutil.copytree(state, fresh)
    (fresh / "heads.pt").unlink()
    damaged = before["heads.pt"][: len(before["heads.pt"]) // 2]
    (state / "heads.pt").write_bytes(damaged)
    (state / "model.pt").write_bytes(before["model.pt"][:100])
    with pytest.raises(ValueError, match=rf"{state / 'model.pt'}: not a readable torch file"):
        load_served(state)  # the forecast command names the damaged file
    capsys.readouterr()

    reply = _send(context, 2)
    printed = capsys.readouterr().out
    assert f"warning: {state / 'heads.pt'} is damaged and was set aside as heads.pt.damaged-" in printed
    (aside,) = state.glob("heads.pt.damaged-*")
    assert aside.read_bytes() == damaged
    after = _files(state)
    for name in ("alone.json", "local_only.pt", "guard.json"):  # the rest of its state is untouched
        assert after[name] == before[name], name
    assert list(load_torch(state / "heads.pt")["heads"]) == [4]  # round 2's training only
    # the same as a site that never had a head: the anchored first-phase head, trained from the encoder
    fresh_reply = _send(_site(tmp_path, "fresh"), 2)
    assert torch.equal(_flat(reply.content), _flat(fresh_reply.content))
    assert all(torch.equal(a, b) for a, b in zip(load_torch(state / "heads.pt")["heads"][4].values(),
                                                 load_torch(fresh / "heads.pt")["heads"][4].values()))
    # model.pt is rewritten from the received encoder and the site's head at its next phase
    assert load_model(state / "model.pt")[1] == {"run": "run", "round": 2, "phase": "train"}
    _send(context, 2, "evaluate")
    assert load_served(state).args == Settings.from_config(context.run_config).model


def test_a_sealed_heads_file_that_does_not_unseal_stops_the_site_and_is_kept(tmp_path):
    key = tmp_path / "state.key"
    generate_state_key(key)
    context = _site(tmp_path, **{"state-key": str(key)})
    state = tmp_path / "sites" / "site00"
    _send(context, 1)
    sealed = (state / "heads.pt").read_bytes()
    (state / "heads.pt").write_bytes(sealed[: len(sealed) // 2])
    with pytest.raises(SealError, match=str(state / "heads.pt")):
        _send(context, 2)
    assert not list(state.glob("heads.pt.damaged-*"))
    assert (state / "heads.pt").read_bytes() == sealed[: len(sealed) // 2]


def _poison(encoder):
    next(iter(encoder.values())).view(-1)[0] = math.inf


@pytest.mark.parametrize("phase", ["train", "evaluate"])
def test_a_non_finite_encoder_is_refused_before_the_site_touches_its_state(tmp_path, phase):
    context = _site(tmp_path)
    _send(context, 1)
    state = tmp_path / "sites" / "site00"
    before = _files(state)
    with pytest.raises(ValueError, match=r"the encoder received for round 2: 1 array\(s\) hold NaN or infinite"):
        _send(context, 2, phase, change=_poison)
    assert _files(state) == before


# ---------------------------------------------------------------- SecAgg+: the site bounds its own update

RECEIVED = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5])}


def _moved(w, b):
    return {"w": RECEIVED["w"] + torch.tensor(w), "b": RECEIVED["b"] + torch.tensor(b)}


def _update(sent):
    return {k: sent[k].double() - RECEIVED[k].double() for k in RECEIVED}


def test_a_site_clips_its_update_to_clip_update_norm_and_refuses_non_finite_values():
    returned = _moved([[3.0, 0.0], [0.0, 0.0]], [4.0])  # an update of norm 5
    clipped = bounded(RECEIVED, returned, 1.0)
    assert update_norm(_update(clipped)) == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(_update(clipped)["w"], torch.tensor([[0.6, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert all(clipped[k].dtype == torch.float32 for k in clipped)
    at_bound = bounded(RECEIVED, returned, 5.0)  # not longer than the bound: unchanged
    assert all(torch.equal(at_bound[k], returned[k]) for k in returned)
    assert bounded(RECEIVED, returned, 0.0) is returned  # 0: no bound
    with pytest.raises(ValueError, match=r"SecAgg\+: the encoder this site would send: 1 array\(s\) hold NaN"):
        bounded(RECEIVED, {**returned, "b": torch.tensor([math.nan])}, 0.0)


def _legacy_instruction():
    keys = list(RECEIVED)
    fitins = FitIns(ndarrays_to_parameters([RECEIVED[k].numpy() for k in keys]),
                    {"server-round": 1, ARRAY_KEYS: json.dumps(keys), MAX_WEIGHT: 1000.0, CLIPPING_RANGE: 8.0})
    return flower_message(compat.fitins_to_recorddict(fitins, True))


def _handler(returned):
    def handler(msg, context):
        layout = wire.loads(str(msg.content["config"][wire.LAYOUT]))
        return Message(RecordDict({"arrays": ArrayRecord(wire.pack(returned, layout)),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)
    return handler


@pytest.mark.parametrize("clip, norm", [(1.0, 1.0), (0.0, 5.0)])
def test_the_masked_update_is_the_one_clipped_to_the_run_configs_clip_update_norm(clip, norm):
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={"clip-update-norm": clip})
    reply = legacy_fit(_legacy_instruction(), context, _handler(_moved([[3.0, 0.0], [0.0, 0.0]], [4.0])))
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    sent = {k: torch.from_numpy(a) for k, a in zip(RECEIVED, parameters_to_ndarrays(fitres.parameters))}
    assert update_norm(_update(sent)) == pytest.approx(norm, rel=1e-6)


def test_a_non_finite_reply_is_never_masked():
    returned = {**RECEIVED, "w": torch.tensor([[1.0, math.inf], [3.0, 4.0]])}
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match=r"hold NaN or infinite values: \['w'\]"):
        legacy_fit(_legacy_instruction(), context, _handler(returned))
    layout = wire.layout_of(RECEIVED)
    reply = RecordDict({"arrays": ArrayRecord(wire.pack(returned, layout)),
                        "metrics": MetricRecord({"num-examples": 1})})
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        to_legacy(reply, layout, 1000.0, 8.0)

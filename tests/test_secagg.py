"""SecAgg+ rounds (server.secagg, client.secagg): the server gets FedAvg of updates it never sees.

In process (seconds): `SecAggTrain`, the round loop's SecAgg+ train phase, drives the real SecAgg+
workflow one round at a time against real `secagg_mod` ClientApps through a grid that hands messages
over in memory (serialised as on the wire); the round loop runs with it (checkpoints, resume,
evaluation), and the App itself runs with secagg off and on (simulations.local). Flower processes (about half a minute):
the real train and evaluate handlers in the simulation engine, through a copy of this App whose
components are `tests/secagg_probe_app.py`, which records what each site computed and sent.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.app.message import make_message
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity

from client.secagg import is_secagg, secagg_mod, to_legacy, to_plain
from server.secagg import (ARRAY_KEYS, CLIPPING_RANGE, MAX_WEIGHT, AggregateRejected, SecAggTrain, check_aggregate,
                           error_bound, quantization_range)
from server.strategy import EncoderFedAvg, TooFewSites
from shared import wire
from shared.config import Settings
from tests.conftest import TINY

MASKED = "masked_params"
SHAPES = {"embed.weight": (4, 3), "embed.bias": (4,), "norm.weight": (4,)}


# ---------------------------------------------------------------- an in-memory grid


def _copy(content: RecordDict) -> tuple[RecordDict, int]:
    """The content as the other side receives it, and its size on the wire."""
    proto = recorddict_to_proto(content)
    return recorddict_from_proto(proto), proto.ByteSize()


class MemoryGrid:
    """Delivers each message to its node's ClientApp in this process, serialised both ways.

    A handler's exception becomes an error reply, as in Flower's runtimes.
    """

    def __init__(self, nodes: dict[int, ClientApp]):
        self.nodes = nodes
        self.contexts = {nid: Context(run_id=1, node_id=nid, node_config={"partition-id": i},
                                      state=RecordDict(), run_config={}) for i, nid in enumerate(nodes)}
        self.run = SimpleNamespace(run_id=1)
        self.bytes = {"down": 0, "up": 0}

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            content, size = _copy(msg.content)
            self.bytes["down"] += size
            metadata = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=nid,
                                reply_to_message_id="", group_id=msg.metadata.group_id, created_at=time.time(),
                                ttl=3600, message_type=msg.metadata.message_type)
            received = make_message(metadata, content)
            try:
                reply = self.nodes[nid](received, self.contexts[nid])
            except Exception as exc:  # noqa: BLE001 - a failing node replies with an error
                replies.append(Message(Error(code=0, reason=repr(exc)), reply_to=received))
                continue
            content, size = _copy(reply.content)
            self.bytes["up"] += size
            replies.append(make_message(reply.metadata, content))
        return replies


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


# ---------------------------------------------------------------- sites with known updates


def _delta(site: int, server_round: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 * site + server_round)
    return {k: rng.normal(0.0, 0.05, shape).astype(np.float32) for k, shape in SHAPES.items()}


class Recorder:
    """Per node: every plain reply of the train handler and every masked vector sent."""

    def __init__(self):
        self.plain: dict[tuple[int, int], tuple[dict[str, np.ndarray], int]] = {}
        self.masked: dict[tuple[int, int], list[np.ndarray]] = {}
        self.legacy: dict[tuple[int, int], RecordDict] = {}
        self.ordinary = 0

    def wire(self, msg, context, call_next):  # outermost mod: what leaves the site
        reply = call_next(msg, context)
        configs = reply.content.config_records.get("secaggplus_configs", {}) if not reply.has_error() else {}
        if MASKED in configs:
            from flwr.common import bytes_to_ndarray

            key = (context.node_id, int(msg.metadata.group_id))
            self.masked[key] = [bytes_to_ndarray(b) for b in configs[MASKED]]
            self.legacy[key] = reply.content
        return reply


def _site_app(site: int, recorder: Recorder, fail_rounds=()) -> ClientApp:
    app = ClientApp()

    def train(msg: Message, context: Context) -> Message:
        server_round = int(msg.content["config"]["server-round"])
        if server_round in fail_rounds:
            raise RuntimeError(f"site {site} fails in round {server_round}")
        layout = wire.loads(str(msg.content["config"][wire.LAYOUT]))
        received = wire.unpack(msg.content["arrays"], layout)
        sent = {k: r.numpy() + d for (k, r), d in zip(received.items(), _delta(site, server_round).values())}
        n = 100 * (site + 1)
        recorder.plain[(context.node_id, server_round)] = (sent, n)
        if "model-args" not in msg.content["config"]:
            raise KeyError("the handler's config did not come through")
        return Message(RecordDict({"arrays": ArrayRecord(wire.pack({k: torch.from_numpy(v) for k, v in sent.items()}, layout)),
                                   "metrics": MetricRecord({"num-examples": n, "val-mae": 0.5 + site}),
                                   "site": ConfigRecord({"name": f"site{site:02d}"})}), reply_to=msg)

    def counting(msg, context, call_next):
        if not is_secagg(msg):
            recorder.ordinary += 1
        return call_next(msg, context)

    app.train(mods=[recorder.wire, secagg_mod, counting])(train)
    return app


def _initial() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    return {k: torch.from_numpy(rng.normal(0.0, 0.5, shape).astype(np.float32)) for k, shape in SHAPES.items()}


def _run(out: Path, nodes: int = 3, rounds: int = 2, fail: dict[int, tuple] | None = None,
         max_weight: float = 1000.0, run_config: dict | None = None, site_configs: dict[int, dict] | None = None,
         **secagg):
    """`rounds` calls of the SecAgg+ train phase; a round that raises TooFewSites is `halted` (global kept).

    `run_config` is the server's and every site's, but site i's is `site_configs[i]` if given.
    """
    recorder = Recorder()
    ids = [1000 + 7 * i for i in range(nodes)]
    grid = MemoryGrid({nid: _site_app(i, recorder, (fail or {}).get(i, ())) for i, nid in enumerate(ids)})
    for i, nid in enumerate(ids):
        grid.contexts[nid].run_config = (site_configs or {}).get(i, run_config or {})
    fedavg = EncoderFedAvg(out, fraction_train=1.0, min_train_nodes=2, min_available_nodes=nodes)
    train = SecAggTrain(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                        Settings.from_config({**TINY, **(run_config or {})}), fedavg, {"model-args": "{}"},
                        max_weight=max_weight, **secagg)
    arrays, seen, halted = _initial(), [], []
    for server_round in range(1, rounds + 1):
        try:
            arrays = train(server_round, arrays)
        except TooFewSites:
            halted.append(server_round)
        seen.append((server_round, arrays, [row for row in fedavg.log.rows if row["round"] == server_round]))
    return SimpleNamespace(arrays=arrays, halted=halted), seen, recorder, ids, grid


def _fedavg(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in updates)
    return {k: sum(u[k].astype(np.float64) * n for u, n in updates) / total for k in updates[0][0]}


def _bound(weights: list[float], max_weight: float, sampled: int = 3) -> float:
    """SecAgg+'s worst-case error (server.secagg.error_bound), + float32 rounding of values near 1."""
    return error_bound(weights, max_weight, quantization=quantization_range(sampled)) + 2e-7


def _unmasked(sent: dict[str, np.ndarray], n: int, max_weight: float, sites: int, clipping_range: float = 8.0
              ) -> np.ndarray:
    """What SecAgg+ would send without masks: [q(w), q(w * params)] (before stochastic rounding)."""
    q = quantization_range(sites)
    q_ratio = round(n / max_weight * q)
    weighted = np.concatenate([v.ravel() for v in sent.values()]) * q_ratio / q
    return np.concatenate([[q_ratio], (np.clip(weighted, -clipping_range, clipping_range) + clipping_range)
                           * q / (2 * clipping_range)])


def _masked_away(masked: list[np.ndarray], sent: dict[str, np.ndarray], n: int, max_weight: float, sites: int) -> bool:
    """Whether the entries a site sent lie far (modulo 2**32, as the masks) from their unmasked values: all
    but a few, as a uniform mask lands within 1000 of a value with probability 2001 / 2**32 (about one
    entry in 2 million)."""
    plain = _unmasked(sent, n, max_weight, sites)
    got = np.concatenate([a.ravel() for a in masked]).astype(np.float64)
    distance = np.abs((got - plain + 2**31) % 2**32 - 2**31)
    return got.size == plain.size and np.count_nonzero(distance <= 1000) <= max(1, got.size // 1000)


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a)


# ---------------------------------------------------------------- in process


def test_secagg_round_is_fedavg_of_updates_the_server_never_sees(tmp_path):
    result, seen, recorder, ids, grid = _run(tmp_path, rounds=2)
    assert [r for r, _, _ in seen] == [1, 2] and result.halted == []
    for server_round, global_state, rows in seen:
        expected = _fedavg([recorder.plain[(nid, server_round)] for nid in ids])
        assert _max_diff(expected, global_state) < _bound([100, 200, 300], 1000)  # quantisation, not more
        assert global_state["embed.weight"].dtype == torch.float32  # cast back from float64
        # per-site rows: plain-text metrics, but no one's num-examples
        assert [row["site"] for row in rows] == ["site00", "site01", "site02"]
        assert all(row["val-mae"] == 0.5 + i and "num-examples" not in row for i, row in enumerate(rows))
        for nid in ids:
            legacy = recorder.legacy[(nid, server_round)]
            assert legacy.metric_records["fitres.num_examples"]["num_examples"] == 0
            assert all(len(record) == 0 for record in legacy.array_records.values())  # no plain arrays
            # what the site sent is not its update: SecAgg+'s quantisation of it, plus masks
            sent, n = recorder.plain[(nid, server_round)]
            assert _masked_away(recorder.masked[(nid, server_round)], sent, n, 1000, 3)
            assert all(a.dtype == np.uint32 for a in recorder.masked[(nid, server_round)])  # half of int64
            assert not _masked_away([np.rint(_unmasked(sent, n, 1000, 3))], sent, n, 1000, 3)  # it can fail
    # the train handler saw only the collect-masked-vectors stage: once per node and round
    assert len(recorder.plain) == 3 * 2 and recorder.ordinary == 3 * 2
    assert result.arrays.keys() == _initial().keys()


def test_dropout_within_threshold_completes_the_round(tmp_path):
    # 3 sites, shares 3, threshold 2: site 2 fails while training in round 2, after sharing its keys
    result, seen, recorder, ids, _ = _run(tmp_path, rounds=2, fail={2: (2,)})
    assert result.halted == []
    _, global_2, rows = seen[1]
    expected = _fedavg([recorder.plain[(nid, 2)] for nid in ids[:2]])
    assert _max_diff(expected, global_2) < _bound([100, 200], 1000)
    assert [(row["site"], "error" in row) for row in rows] == [("site00", False), ("site01", False), ("site02", True)]


def test_too_many_dropouts_halt_the_round_and_keep_the_global(tmp_path):
    result, seen, _, _, _ = _run(tmp_path, rounds=2, fail={1: (2,), 2: (2,)})
    assert result.halted == [2]
    (_, global_1, _), (_, global_2, rows) = seen
    assert _max_diff(global_1, global_2) == 0.0
    assert all("error" in row for row in rows) and len(rows) == 3


def test_weights_above_the_max_weight_are_capped_and_flagged(tmp_path):
    # site n = 100, 200, 300 with max weight 200: site02 counts as 200
    result, seen, recorder, ids, _ = _run(tmp_path, rounds=1, max_weight=200.0)
    _, global_1, rows = seen[0]
    updates = [recorder.plain[(nid, 1)] for nid in ids]
    expected = _fedavg([(u, min(n, 200)) for u, n in updates])
    assert _max_diff(expected, global_1) < _bound([100, 200, 300], 200)
    assert [row["secagg-weight-capped"] for row in rows] == [0, 0, 1]


def _moved(sent: dict[str, np.ndarray], norm: float, error: float = 0.0) -> dict[str, np.ndarray]:
    """`sent` moved by an update of L2 norm `norm`, each coordinate then `error` farther (float32)."""
    rng = np.random.default_rng(1)
    update = {k: rng.normal(0.0, 1.0, v.shape) for k, v in sent.items()}
    scale = norm / np.sqrt(sum(float(np.sum(u ** 2)) for u in update.values()))
    return {k: (v.astype(np.float64) + update[k] * scale + error * np.sign(update[k])).astype(np.float32)
            for k, v in sent.items()}


def test_the_unmasked_aggregate_is_checked_against_clip_update_norm_and_the_quantisation_error():
    sent = {k: v.numpy() for k, v in _initial().items()}
    error = error_bound([1, 1, 1], 1000.0, 8.0, quantization_range(3))  # 3 sites of one window each
    # honest at worst: every site's update clipped to 0.5, all in one direction, and the worst quantisation
    # error in every coordinate
    check_aggregate(1, sent, _moved(sent, 0.5, error), clip_norm=0.5, error=error)
    check_aggregate(1, sent, _moved(sent, 50.0), clip_norm=0.0, error=error)  # no clip-update-norm: no bound
    with pytest.raises(AggregateRejected, match=r"^round 4 \(train, SecAgg\+\): the aggregate update's L2 norm 0\.51 "
                                                r"exceeds 0\.5000\d+ \(clip-update-norm 0\.5 plus"):
        check_aggregate(4, sent, _moved(sent, 0.51), clip_norm=0.5, error=error)
    with pytest.raises(AggregateRejected, match="clip-update-norm 0.5 plus"):  # beyond the error bound
        check_aggregate(4, sent, _moved(sent, 0.5, 2 * error), clip_norm=0.5, error=error)
    for bad in (np.nan, np.inf):
        aggregate = dict(sent, **{"norm.weight": np.array([0.0, bad, 0.0, 0.0], np.float32)})
        for clip_norm in (0.0, 0.5):
            with pytest.raises(AggregateRejected, match=r"non-finite values in norm\.weight"):
                check_aggregate(2, sent, aggregate, clip_norm=clip_norm, error=error)


def test_a_round_whose_aggregate_holds_an_unclipped_update_is_refused(tmp_path):
    # the updates here are about 0.22 long: sites running the App clip theirs to 0.05 before masking
    clip = {"clip-update-norm": 0.05}
    result, seen, _, _, _ = _run(tmp_path / "honest", rounds=2, run_config=clip)
    assert result.halted == []
    before = _initial()
    for _, global_state, _ in seen:
        moved = np.sqrt(sum(float(((global_state[k] - v).double() ** 2).sum()) for k, v in before.items()))
        assert 0.01 < moved <= 0.05
        before = global_state
    # site02 (half the weight) does not clip: the server cannot tell whose update it is; the round fails
    with pytest.raises(AggregateRejected, match=r"^round 1 .*L2 norm 0\.\d+ exceeds 0\.0500\d* \(clip-update-norm 0\.05"):
        _run(tmp_path / "faulty", rounds=1, run_config=clip, site_configs={2: {}})


def _app_rounds(tmp_path, num_rounds: int, min_train_nodes: int = 2, fail: dict | None = None, resume: bool = False):
    """The round loop with the SecAgg+ train phase as server/app.py runs it, against in-memory sites that
    also evaluate."""
    from server.rounds import RoundLoop, RunState

    recorder, ids = Recorder(), [1000 + 7 * i for i in range(3)]
    apps = {nid: _site_app(i, recorder, (fail or {}).get(i, ())) for i, nid in enumerate(ids)}
    for i, app in enumerate(apps.values()):
        @app.evaluate()
        def evaluate(msg: Message, context: Context, site=i) -> Message:
            recorder.plain[(context.node_id, -int(msg.content["config"]["server-round"]))] = ({}, 0)
            return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "mae": float(site)}),
                                       "site": ConfigRecord({"name": f"site{site:02d}"})}), reply_to=msg)
    grid = MemoryGrid(apps)
    settings = Settings.from_config({**TINY, "num-server-rounds": num_rounds, "min-train-nodes": min_train_nodes})
    fedavg = EncoderFedAvg(tmp_path, fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=min_train_nodes,
                           min_evaluate_nodes=2, min_available_nodes=2)
    state = RunState.load(tmp_path, {}) if resume else RunState(arrays=_initial(), config={}, model_args={})
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    config = ConfigRecord({"model-args": "{}", "run-key": state.run_key})
    train = SecAggTrain(grid, context, settings, fedavg, config, timeout=60.0)
    state = RoundLoop(fedavg, grid, tmp_path, num_rounds, config, lambda r: r == num_rounds,
                      parts={"strategy": fedavg}, timeout=60.0, train=train).run(state)
    return state, fedavg, recorder


def test_app_rounds_checkpoint_resume_and_evaluate(tmp_path):
    from server.rounds import RunState

    state, fedavg, recorder = _app_rounds(tmp_path, num_rounds=2)
    assert state.round == 2 and state.evaluated and sorted(fedavg.round_times) == [1, 2]
    saved = torch.load(tmp_path / "global_encoder.pt", weights_only=False)
    assert saved["round"] == 2 and _max_diff(saved["encoder"], state.arrays) == 0.0
    assert RunState.load(tmp_path, {}).round == 2
    rows = json.loads((tmp_path / "per_site.json").read_text())
    assert [(r["round"], r["phase"]) for r in rows] == [(1, "train")] * 3 + [(2, "train")] * 3 + [(2, "evaluate")] * 3

    # a resumed run continues at round 3: the sites see server-round 3, the log goes on
    state, fedavg, recorder = _app_rounds(tmp_path, num_rounds=3, resume=True)
    assert state.round == 3 and sorted(k[1] for k in recorder.plain) == [-3, -3, -3, 3, 3, 3]
    rows = json.loads((tmp_path / "per_site.json").read_text())
    assert sum(r["round"] == 3 for r in rows) == 6 and sorted(fedavg.round_times) == [1, 2, 3]


def test_app_rounds_below_min_train_nodes_raise_like_the_plain_loop(tmp_path):
    with pytest.raises(TooFewSites, match="site02"):
        _app_rounds(tmp_path, num_rounds=2, min_train_nodes=3, fail={2: (2,)})
    assert torch.load(tmp_path / "global_encoder.pt", weights_only=False)["round"] == 1  # round 2 not saved


def test_signed_encoders_verify_at_the_sites_under_secagg(tmp_path):
    from functools import partial

    from shared.signing import generate_signing_key, load_private_key, sign_encoder, verify_encoder

    private, public = generate_signing_key(tmp_path)
    ids, verified = [11, 22, 33], []
    apps = {}
    for i, nid in enumerate(ids):
        app = ClientApp()

        def train(msg: Message, context: Context, site=i) -> Message:
            config, arrays = msg.content["config"], msg.content["arrays"]
            verify_encoder(public, wire.unpack(arrays, wire.loads(str(config[wire.LAYOUT]))), int(config["server-round"]),
                           config.get("encoder-signature"))
            verified.append((site, int(config["server-round"])))
            return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10}),
                                       "site": ConfigRecord({"name": f"site{site}"})}), reply_to=msg)

        app.train(mods=[secagg_mod])(train)
        apps[nid] = app
    fedavg = EncoderFedAvg(tmp_path, fraction_train=1.0, min_train_nodes=3, min_available_nodes=3)
    train = SecAggTrain(MemoryGrid(apps), Context(1, 0, {}, RecordDict(), {}), Settings.from_config(TINY), fedavg,
                        {"model-args": "{}"}, sign=partial(sign_encoder, load_private_key(private)))
    arrays = _initial()
    for server_round in (1, 2):
        arrays = train(server_round, arrays)
    assert sorted(verified) == [(s, r) for s in range(3) for r in (1, 2)]


# ---------------------------------------------------------------- the translation alone


def test_legacy_instruction_and_reply_translate_both_ways():
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    state = {k: v.numpy() for k, v in _initial().items()}
    keys = list(state)
    fitins = FitIns(ndarrays_to_parameters([state[k] for k in keys]),
                    {"model-args": "{}", "server-round": 3, ARRAY_KEYS: json.dumps(keys),
                     MAX_WEIGHT: 1000.0, CLIPPING_RANGE: 8.0})
    plain, layout, max_weight, clip = to_plain(compat.fitins_to_recorddict(fitins, True))
    assert [name for name, _ in layout] == keys and (max_weight, clip) == (1000.0, 8.0)
    assert dict(plain["config"]) == {"model-args": "{}", "server-round": 3, wire.LAYOUT: wire.dumps(layout)}
    assert list(plain["arrays"]) == [wire.KEY]  # packed, as ordinary messages are
    assert _max_diff(state, wire.unpack(plain["arrays"], layout)) == 0.0

    named = {k: torch.from_numpy(state[k]) for k in keys}
    reply = RecordDict({"arrays": ArrayRecord(wire.pack(named, layout)),
                        "metrics": MetricRecord({"num-examples": 1500, "val-mae": 0.25}),
                        "site": ConfigRecord({"name": "a", "serve": "federated"})})
    fitres = compat.recorddict_to_fitres(to_legacy(reply, layout, 1000.0, 8.0), keep_input=True)
    assert fitres.num_examples == 1000  # capped
    assert fitres.metrics == {"val-mae": 0.25, "site": "a", "serve": "federated", "secagg-weight-capped": 1}
    from flwr.common import parameters_to_ndarrays

    assert all(np.array_equal(a, state[k]) and a.dtype == np.float64
               for a, k in zip(parameters_to_ndarrays(fitres.parameters), keys))

    big = RecordDict({"arrays": ArrayRecord(wire.pack({k: v * 100 for k, v in named.items()}, layout)),
                      "metrics": MetricRecord({"num-examples": 1000})})
    with pytest.raises(ValueError, match="clip"):
        to_legacy(big, layout, 1000.0, 8.0)
    wrong = RecordDict({"arrays": ArrayRecord(wire.pack({"other": named[keys[0]]})),
                        "metrics": MetricRecord({"num-examples": 10})})
    with pytest.raises(ValueError, match="layout needs"):
        to_legacy(wrong, layout, 1000.0, 8.0)


def test_ordinary_messages_pass_through_untouched():
    from tests.conftest import flower_message

    msg = flower_message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(2, np.float32))}),
                                     "config": ConfigRecord({"server-round": 1})}))
    calls = []
    reply = secagg_mod(msg, Context(1, 7, {}, RecordDict(), {}), lambda m, c: calls.append(m) or "reply")
    assert reply == "reply" and calls == [msg] and not is_secagg(msg)
    assert not is_secagg(flower_message(RecordDict({"secaggplus_configs": ConfigRecord({})}), message_type="evaluate"))


# ---------------------------------------------------------------- Flower processes


APP_FILES = ("pyproject.toml", "shared", "server", "client")


def _probe_app(tmp_path: Path, repo: Path) -> Path:
    """A copy of this App whose ServerApp and ClientApp are tests/secagg_probe_app.py."""
    app = tmp_path / "app"
    app.mkdir()
    for name in APP_FILES:
        src = repo / name
        if src.is_dir():
            shutil.copytree(src, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, app / name)
    shutil.copy(repo / "tests" / "secagg_probe_app.py", app / "client" / "secagg_probe.py")
    pyproject = (app / "pyproject.toml").read_text()
    pyproject = pyproject.replace('serverapp = "server.app:app"', 'serverapp = "client.secagg_probe:server_app"')
    pyproject = pyproject.replace('clientapp = "client.app:app"', 'clientapp = "client.secagg_probe:client_app"')
    pyproject = pyproject.replace("[tool.flwr.app.config]\n", '[tool.flwr.app.config]\nprobe-dir = ""\nprobe-fail = ""\n')
    assert "client.secagg_probe:server_app" in pyproject and "probe-dir" in pyproject
    (app / "pyproject.toml").write_text(pyproject)
    return app


@pytest.mark.flower
def test_simulation_under_secagg_matches_fedavg_of_the_plain_updates(tmp_path, monkeypatch):
    import simulations.runner as runner

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(runner, "APP_DIR", _probe_app(tmp_path, repo))
    probe, out = tmp_path / "probe", tmp_path / "out"
    probe.mkdir()
    run_config = {**TINY, "num-server-rounds": 2, "min-train-nodes": 2, "secagg": True,
                  "cache-dir": str(repo / ".cache"), "out-dir": str(out),
                  "probe-dir": str(probe), "probe-fail": "2:2"}  # partition 2 fails training in round 2
    runner.run_app(run_config, num_supernodes=3, workdir=tmp_path / "flower")

    summary = json.loads((probe / "summary.json").read_text())["app_summary"]
    assert summary["privacy"]["secagg"] is True
    assert [row["site"] for row in summary["missing"]] == ["site02"]  # the dropout, named
    rows = json.loads((out / "per_site.json").read_text())
    plain = {(int(p.name.split("-")[0][1:]), p.name.split("-")[1]): p for p in probe.glob("r*-plain.pt")}
    sites = sorted({site for _, site in plain})
    assert sites == ["site00", "site01", "site02"]
    for server_round in (1, 2):
        updates = [torch.load(plain[(server_round, site)]) for site in sites if (server_round, site) in plain]
        assert len(updates) == (3 if server_round == 1 else 2)  # site02 fails in round 2, after sharing keys
        aggregated = updates
        expected = _fedavg([({k: v.numpy() for k, v in u["arrays"].items()}, u["num-examples"]) for u in aggregated])
        got = torch.load(probe / f"global-r{server_round}.pt")
        weights = [u["num-examples"] for u in aggregated]
        assert _max_diff(expected, got) < _bound(weights, 10_000), server_round
        for u in aggregated:  # what the site sent was masked, not its update
            masked = torch.load(probe / f"r{server_round}-{u['site']}-masked.pt", weights_only=False)
            sent = {k: v.numpy() for k, v in u["arrays"].items()}
            assert _masked_away(masked, sent, u["num-examples"], 10_000, 3)
    train = [(row["round"], row["site"], "error" in row) for row in rows if row["phase"] == "train"]
    assert len(train) == 6 and sum(err for *_, err in train) == 1
    assert [row for row in rows if row["phase"] == "evaluate" and "error" not in row]  # evaluation ran, plain


def test_the_app_under_secagg_ends_where_plain_fedavg_does(tmp_path):
    """The App itself (server/app.py, client/app.py with its mods) in one process, with secagg off and on."""
    from flwr.app import Context, RecordDict

    from server.app import main as server_main
    from simulations.local import LocalGrid

    runs = {}
    for secagg in (False, True):
        out = tmp_path / f"secagg-{secagg}"
        run_config = {**TINY, "num-server-rounds": 1, "min-train-nodes": 3, "stat-models": "", "out-dir": str(out),
                      "cache-dir": str(tmp_path / "cache"), "secagg": secagg}
        grid = LocalGrid(run_config, 3)
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
        rows = json.loads((out / "per_site.json").read_text())
        runs[secagg] = torch.load(out / "global_encoder.pt", weights_only=True)["encoder"], rows, grid.messages
    (plain, plain_rows, plain_msgs), (secure, secure_rows, secure_msgs) = runs[False], runs[True]
    train = [r for r in plain_rows if r["phase"] == "train"]
    bound = _bound([r["num-examples"] for r in train], 10_000)
    assert max(float((plain[k].double() - secure[k].double()).abs().max()) for k in plain) < bound
    secure_train = [r for r in secure_rows if r["phase"] == "train"]
    assert [r["site"] for r in secure_train] == ["site00", "site01", "site02"]
    assert all("num-examples" not in r and "error" not in r for r in secure_train)  # the weight stays masked
    assert {r["site"] for r in secure_rows if r["phase"] == "evaluate"} == {"site00", "site01", "site02"}
    # SecAgg+ costs four train stages per round instead of one message
    assert len([m for m in secure_msgs if m["phase"] == "train"]) == 4 * len([m for m in plain_msgs if m["phase"] == "train"])

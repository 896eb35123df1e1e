"""Differential privacy on encoder updates: clipping, noise scale, the ε account, the ε budget and the noise
the server calibrates for dp-epsilon."""

import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant,
                            SamplingMethod)
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from scipy.optimize import brentq
from scipy.stats import norm

import client.privacy
from client.privacy import privacy_mod
from server.app import main as server_main
from server.privacy import DpStrategy, calibrated, wrap_strategy
from shared.config import PrivacyArgs
from shared.privacy import clip, epsilon_after, noise_for_epsilon
from simulations.local import LocalGrid
from tests.conftest import TINY, flower_message

CENTRAL = PrivacyArgs(dp="central", dp_clip=1.0, dp_noise=1.0, dp_delta=1e-5)
BIG = 200_000  # values per noise check: the sample std's relative error is then about 0.16%


def _arrays(**tensors) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _reply(node: int, arrays: dict, weight: int = 1):
    content = RecordDict({"arrays": _arrays(**arrays), "metrics": MetricRecord({"num-examples": weight})})
    return flower_message(content, "train", src_node_id=node, dst_node_id=0)


class Grid:
    """Sites 1..n that answer train messages with `update(node, received)` added to what they received."""

    def __init__(self, n: int, update=lambda node, received: {k: 0 * v for k, v in received.items()}):
        self.n, self.update, self.sent = n, update, []
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp's runtime

    def get_node_ids(self):
        return list(range(1, self.n + 1))

    def send_and_receive(self, messages, *, timeout=None):
        self.sent.append(messages := list(messages))
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type == "train":
                received = _numpy(msg.content["arrays"])
                update = self.update(node, received)
                replies.append(_reply(node, {k: received[k] + update[k] for k in received}))
            else:
                content = RecordDict({"metrics": MetricRecord({"num-examples": 1, "mae": 1.0})})
                replies.append(flower_message(content, "evaluate", src_node_id=node, dst_node_id=0))
        return replies


class ZeroNoise:
    """Stands in for the strategy's generator: no noise, but remembers the std asked for."""

    def normal(self, loc, scale, size):
        self.scale = scale
        return np.zeros(size)


class Inner(FedAvg):
    """FedAvg exposing the replies it accepted, as server.strategy.EncoderFedAvg does after validating them."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.accepted = [r for r in replies if not r.has_error()]
        return super().aggregate_train(server_round, replies)


def _dp(privacy=CENTRAL, num_sites=2):
    return DpStrategy(Inner(min_train_nodes=1, min_available_nodes=1), privacy, num_sites)


def test_wrap_strategy_leaves_no_dp_alone_and_refuses_unknown_modes():
    inner = FedAvg()
    assert wrap_strategy(inner, PrivacyArgs(), 3) is inner
    assert isinstance(wrap_strategy(inner, CENTRAL, 3), DpStrategy)
    with pytest.raises(ValueError, match="dp must be one of"):
        wrap_strategy(inner, PrivacyArgs(dp="centrl"), 3)


def test_clip_scales_long_updates_to_the_norm_and_keeps_short_ones():
    long = clip({"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}, 1.0)  # norm 5 over both arrays
    np.testing.assert_allclose(long["a"], [0.6, 0.0])
    np.testing.assert_allclose(long["b"], [[0.8]])
    short = clip({"a": np.array([0.3, 0.4])}, 1.0)
    np.testing.assert_allclose(short["a"], [0.3, 0.4])


def test_central_dp_is_the_equal_weight_mean_of_clipped_updates_with_noise_of_the_set_std():
    privacy = replace(CENTRAL, dp_clip=2.0, dp_noise=0.7)
    dp = _dp(privacy, num_sites=2)
    dp.rng = ZeroNoise()
    sent = {"w": np.ones((2, 3)), "b": np.zeros(3)}
    dp.configure_train(1, _arrays(**sent), ConfigRecord(), Grid(2))
    long = {"w": np.zeros((2, 3)), "b": np.array([6.0, 8.0, 0.0])}  # norm 10: clipped to 2
    short = {"w": np.full((2, 3), 0.1), "b": np.zeros(3)}  # norm 0.24: kept
    replies = [_reply(1, {k: sent[k] + long[k] for k in sent}, weight=1),
               _reply(2, {k: sent[k] + short[k] for k in sent}, weight=50)]  # weights are ignored
    arrays, metrics = dp.aggregate_train(1, replies)

    got = _numpy(arrays)
    for k in sent:
        np.testing.assert_allclose(got[k], sent[k] + (long[k] * 0.2 + short[k]) / 2, rtol=1e-6)
    assert dp.rng.scale == pytest.approx(0.7 * 2.0 / 2)  # dp-noise x dp-clip / num_sites
    assert dp.update_norms_by_round[1] == pytest.approx([0.1 * 6 ** 0.5, 10.0])  # before clipping, for tuning dp-clip
    assert metrics is not None  # the inner strategy still aggregates the metrics


def test_central_noise_is_gaussian_with_std_noise_times_clip_over_sites():
    dp = _dp(replace(CENTRAL, dp_clip=0.5, dp_noise=1.2), num_sites=3)
    dp.rng = np.random.default_rng(0)
    sent = {"w": np.zeros(BIG)}
    dp.configure_train(1, _arrays(**sent), ConfigRecord(), Grid(3))
    arrays, _ = dp.aggregate_train(1, [_reply(n, sent) for n in (1, 2, 3)])  # no update: all noise
    noise = _numpy(arrays)["w"]
    assert noise.std() == pytest.approx(1.2 * 0.5 / 3, rel=0.01)
    assert abs(noise.mean()) < 0.01 * noise.std()


def test_a_failed_site_is_left_out_of_the_central_mean():
    dp = _dp(num_sites=2)
    dp.rng = ZeroNoise()
    dp.configure_train(1, _arrays(w=[0.0]), ConfigRecord(), Grid(2))
    failed = Message(Error(code=0, reason="site failed"), reply_to=flower_message(RecordDict(), src_node_id=0,
                                                                                 dst_node_id=2))
    arrays, _ = dp.aggregate_train(1, [_reply(1, {"w": [0.5]}), failed])
    np.testing.assert_allclose(_numpy(arrays)["w"], [0.25])  # 0.5 / num_sites: the denominator is fixed


def test_local_dp_clips_the_update_and_adds_noise_of_std_noise_times_clip(monkeypatch):
    monkeypatch.setattr(client.privacy, "rng", ZeroNoise())
    received = {"w": np.zeros((3, 4)), "b": np.ones(4)}
    update = {"w": np.full((3, 4), 2.0), "b": np.zeros(4)}  # norm 6.93
    reply = _site_round(received, update, {"dp": "local", "dp-clip": 1.5, "dp-noise": 0.8})

    sent = _numpy(reply.content["arrays"])
    clipped = {k: sent[k] - received[k] for k in received}
    assert math.sqrt(sum(float(np.sum(u ** 2)) for u in clipped.values())) == pytest.approx(1.5, rel=1e-6)
    np.testing.assert_allclose(clipped["w"] / np.linalg.norm(clipped["w"]), update["w"] / np.linalg.norm(update["w"]),
                               rtol=1e-6)
    assert client.privacy.rng.scale == pytest.approx(0.8 * 1.5)


def test_local_dp_noise_is_gaussian_with_the_configured_std_even_on_an_unchanged_encoder(monkeypatch):
    monkeypatch.setattr(client.privacy, "rng", np.random.default_rng(0))
    received = {"w": np.zeros(BIG)}
    reply = _site_round(received, {"w": np.zeros(BIG)}, {"dp": "local", "dp-clip": 2.0, "dp-noise": 0.5})
    noise = _numpy(reply.content["arrays"])["w"]  # a zero update: Flower 1.41's clipping divides by its norm
    assert noise.std() == pytest.approx(0.5 * 2.0, rel=0.01)
    assert abs(noise.mean()) < 0.01 * noise.std()


@pytest.mark.parametrize("dp", ["none", "central"])
def test_the_mod_leaves_the_reply_alone_without_local_dp(dp):
    received, update = {"w": np.zeros(4)}, {"w": np.full(4, 5.0)}
    reply = _site_round(received, update, {"dp": dp, "dp-clip": 1.0})
    np.testing.assert_array_equal(_numpy(reply.content["arrays"])["w"], np.full(4, 5.0))


def test_a_site_that_sets_local_dp_in_its_node_config_applies_it_whatever_the_run_config(monkeypatch):
    monkeypatch.setattr(client.privacy, "rng", ZeroNoise())
    received, update = {"w": np.zeros(4)}, {"w": np.full(4, 5.0)}
    reply = _site_round(received, update, {"dp": "none"}, node_config={"dp": "local", "dp-clip": 1.0, "dp-noise": 1.0})
    assert np.linalg.norm(_numpy(reply.content["arrays"])["w"]) == pytest.approx(1.0)


def _site_round(received: dict, update: dict, run_config: dict, node_config: dict | None = None):
    """A train message through `privacy_mod` to a site that adds `update` to what it received."""
    msg = flower_message(RecordDict({"arrays": _arrays(**received), "config": ConfigRecord({"server-round": 1})}))

    def site(m, context):
        got = _numpy(m.content["arrays"])
        content = RecordDict({"arrays": _arrays(**{k: got[k] + update[k] for k in got}),
                              "metrics": MetricRecord({"num-examples": 1})})
        return Message(content=content, reply_to=m)

    context = Context(run_id=1, node_id=7, node_config=node_config or {}, state=RecordDict(), run_config=run_config)
    return privacy_mod(msg, context, site)


def _exact_gaussian_epsilon(sigma: float, rounds: int, delta: float) -> float:
    """The exact ε of `rounds` Gaussian mechanisms (Balle & Wang 2018): a lower bound for any accountant."""
    mu = math.sqrt(rounds) / sigma
    return brentq(lambda e: norm.cdf(mu / 2 - e / mu) - math.exp(e) * norm.cdf(-mu / 2 - e / mu) - delta, 0, 100)


def _classic_rdp_epsilon(sigma: float, rounds: int, delta: float) -> float:
    """rounds x α/(2σ²) + ln(1/δ)/(α-1) at the best α (Mironov 2017): the bound RDP accounting improves on."""
    return rounds / (2 * sigma ** 2) + math.sqrt(2 * rounds * math.log(1 / delta)) / sigma


@pytest.mark.parametrize("mode", ["central", "local"])
def test_epsilon_grows_with_rounds_between_the_exact_value_and_the_classic_rdp_bound(mode):
    dp = _dp(replace(CENTRAL, dp=mode, dp_noise=1.0), num_sites=2)
    dp.start(Grid(2), _arrays(w=np.zeros(3)), num_rounds=4)
    epsilons = [dp.epsilon_by_round[r] for r in (1, 2, 3, 4)]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 4
    for rounds, eps in enumerate(epsilons, start=1):
        assert _exact_gaussian_epsilon(1.0, rounds, 1e-5) < eps < _classic_rdp_epsilon(1.0, rounds, 1e-5)
    assert epsilons[0] == pytest.approx(4.73, abs=0.01)  # FLOWER-NOTES: noise 1.0, δ 1e-5


@pytest.mark.parametrize("mode", ["central", "local"])
def test_the_budget_stops_training_before_the_round_that_would_exceed_it(mode):
    # noise 1.0, δ 1e-5: ε is 4.73, 7.08, 9.01 after rounds 1, 2, 3
    dp = _dp(replace(CENTRAL, dp=mode, dp_epsilon_budget=8.0), num_sites=2)
    dp.rng = ZeroNoise()
    grid = Grid(2, update=lambda node, received: {k: np.full_like(v, 0.1) for k, v in received.items()})
    result = dp.start(grid, _arrays(w=np.zeros(3)), num_rounds=5)

    assert dp.stopped_before == 3
    assert sorted(dp.epsilon_by_round) == [1, 2] and dp.epsilon() <= 8.0
    train_rounds = [msgs for msgs in grid.sent if msgs and msgs[0].metadata.message_type == "train"]
    assert len(train_rounds) == 2  # nothing was sent after the budget ran out
    np.testing.assert_allclose(_numpy(result.arrays)["w"], np.full(3, 0.2), rtol=1e-6)  # two rounds' updates
    assert len(grid.sent[-1]) == 2 and grid.sent[-1][0].metadata.message_type == "evaluate"


def test_a_resumed_account_continues_where_it_stopped():
    dp = _dp()
    dp.start(Grid(2), _arrays(w=np.zeros(3)), num_rounds=2)
    checkpoint = io.BytesIO()
    torch.save(dp.state_dict(), checkpoint)  # as server.rounds keeps it
    checkpoint.seek(0)
    resumed = _dp()
    resumed.load_state_dict(torch.load(checkpoint, weights_only=True))
    assert resumed.epsilon_by_round == dp.epsilon_by_round
    grid = Grid(2)
    resumed.aggregate_train(3, grid.send_and_receive(resumed.configure_train(3, _arrays(w=np.zeros(3)),
                                                                             ConfigRecord(), grid)))
    assert resumed.epsilon_by_round[3] == pytest.approx(9.01, abs=0.01)  # three rounds' ε, not one's


def test_a_central_dp_run_reports_epsilon_per_round_and_stops_at_its_budget(tmp_path):
    """The ServerApp and ClientApp in one process (simulations.local), with central DP and a budget of one round."""
    one_round = _dp(replace(CENTRAL, dp_noise=1.0), num_sites=2)
    one_round.accountant.compose(one_round.round_event)
    budget = one_round.epsilon() * 1.2  # more than one round's ε (4.73), less than two rounds' (7.08)
    run_config = {**TINY, "demo-sites": 2, "stat-models": "", "num-server-rounds": 3, "out-dir": str(tmp_path),
                  "cache-dir": str(tmp_path / "cache"), "dp": "central", "dp-noise": 1.0, "dp-clip": 0.5,
                  "dp-epsilon-budget": budget}
    grid = LocalGrid(run_config, 2)
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))

    privacy = json.loads((tmp_path / "summary.json").read_text())["privacy"]
    assert privacy["dp"] == "central" and privacy["stopped_before_round"] == 2
    assert list(privacy["epsilon_by_round"]) == ["1"] and privacy["epsilon"] <= budget
    assert {(r["round"], r["phase"]) for r in grid.messages} == {(1, "train"), (3, "evaluate")}


@pytest.mark.parametrize("epsilon, rounds", [(1.0, 3), (4.0, 3), (8.0, 5)])
def test_the_calibrated_noise_spends_just_the_epsilon_asked(epsilon, rounds):
    noise = noise_for_epsilon(epsilon, rounds, 1e-5)
    assert 0.99 * epsilon < epsilon_after(noise, rounds, 1e-5) <= epsilon
    assert epsilon_after(noise / 1.002, rounds, 1e-5) > epsilon  # the smallest such noise, to 0.1 %
    dp = _dp(replace(CENTRAL, dp_noise=noise, dp_epsilon_budget=epsilon), num_sites=2)
    dp.start(Grid(2), _arrays(w=np.zeros(3)), num_rounds=rounds)
    assert dp.stopped_before is None and dp.epsilon() == epsilon_after(noise, rounds, 1e-5)  # the same account
    with pytest.raises(ValueError, match="positive"):
        noise_for_epsilon(0.0, rounds, 1e-5)


def _server_run(tmp_path, **changes):
    """The ServerApp and ClientApp in one process (simulations.local) on 2 demo sites; the run's privacy summary."""
    run_config = {**TINY, "demo-sites": 2, "stat-models": "", "out-dir": str(tmp_path / "run"),
                  "cache-dir": str(tmp_path / "cache"), **changes}
    server_main(LocalGrid(run_config, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                  run_config=run_config))
    return json.loads((tmp_path / "run" / "summary.json").read_text())["privacy"]


def test_dp_epsilon_calibrates_the_noise_so_the_configured_rounds_spend_that_epsilon(tmp_path):
    privacy = _server_run(tmp_path, **{"num-server-rounds": 3, "dp": "central", "dp-clip": 0.5, "dp-epsilon": 6.0})

    noise = privacy["dp_noise"]
    assert noise == noise_for_epsilon(6.0, 3, 1e-5) and privacy["dp_epsilon_budget"] == privacy["dp_epsilon"] == 6.0
    assert privacy["stopped_before_round"] is None and list(privacy["epsilon_by_round"]) == ["1", "2", "3"]
    accountant = RdpAccountant(PrivacyConfig(  # a fresh account of 3 rounds
        target_delta=1e-5, population_size=2, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION))
    for _ in range(3):
        accountant.compose(GaussianPrivacyEvent(noise, 2, 2))
    assert privacy["epsilon"] == accountant.get_epsilon(1e-5)
    assert 0.99 * 6.0 < privacy["epsilon"] <= 6.0
    # the noise was set for these 3 rounds: a resumed run may not run a different number
    with pytest.raises(ValueError, match="same num-server-rounds"):
        _server_run(tmp_path, **{"num-server-rounds": 4, "dp": "central", "dp-clip": 0.5, "dp-epsilon": 6.0,
                                 "resume": True})


@pytest.mark.parametrize("changes, message", [
    ({"dp": "central", "dp-noise": 2.0}, "set one of them"),
    ({"dp": "local"}, "needs dp = 'central'"),
    ({"dp": "central", "dp-epsilon-budget": 3.0}, "leave dp-epsilon-budget at 0"),
])
def test_dp_epsilon_refuses_settings_that_contradict_it(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):  # before pretraining: no grid message, no cache
        _server_run(tmp_path, **{"dp-epsilon": 4.0, **changes})
    assert not (tmp_path / "cache").exists()
    assert calibrated(PrivacyArgs(dp="central", dp_noise=2.0), 3).dp_noise == 2.0  # without dp-epsilon: as set
